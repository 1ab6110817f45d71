from datetime import timedelta

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from gallery.models import Collection, Image

# The indexing rate is measured over this window.
RATE_WINDOW = timedelta(seconds=60)


def collection_stats(*, collection: Collection) -> dict:
    """Counts of the collection's images by status (total, pending, indexed, failed), and the
    indexing rate over the last minute (``indexed_per_second``)."""
    since = timezone.now() - RATE_WINDOW
    stats = Image.objects.filter(collection=collection).aggregate(
        total=Count("id"),
        pending=Count("id", filter=Q(status=Image.Status.PENDING)),
        indexed=Count("id", filter=Q(status=Image.Status.INDEXED)),
        failed=Count("id", filter=Q(status=Image.Status.FAILED)),
        recent=Count("id", filter=Q(status=Image.Status.INDEXED, indexed_at__gte=since)),
    )
    stats["indexed_per_second"] = round(stats.pop("recent") / RATE_WINDOW.total_seconds(), 2)
    return stats


def collection_list_with_stats() -> QuerySet[Collection]:
    return Collection.objects.annotate(
        total=Count("images"),
        indexed=Count("images", filter=Q(images__status=Image.Status.INDEXED)),
        pending=Count("images", filter=Q(images__status=Image.Status.PENDING)),
        failed=Count("images", filter=Q(images__status=Image.Status.FAILED)),
    ).order_by("name")
