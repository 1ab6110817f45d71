from django.db.models import Count, Q, QuerySet

from gallery.models import Collection, Image


def collection_stats(*, collection: Collection) -> dict[str, int]:
    """Counts of the collection's images by status: total, pending, indexed, failed."""
    return Image.objects.filter(collection=collection).aggregate(
        total=Count("id"),
        pending=Count("id", filter=Q(status=Image.Status.PENDING)),
        indexed=Count("id", filter=Q(status=Image.Status.INDEXED)),
        failed=Count("id", filter=Q(status=Image.Status.FAILED)),
    )


def collection_list_with_stats() -> QuerySet[Collection]:
    return Collection.objects.annotate(
        total=Count("images"),
        indexed=Count("images", filter=Q(images__status=Image.Status.INDEXED)),
        pending=Count("images", filter=Q(images__status=Image.Status.PENDING)),
        failed=Count("images", filter=Q(images__status=Image.Status.FAILED)),
    ).order_by("name")
