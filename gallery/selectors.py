from datetime import timedelta

from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone

from gallery.models import Collection, Image

# The indexing rate is measured over this window; or since the first image indexed in it, but
# over no less than a few seconds, so that one image indexed a moment ago is not a huge rate.
RATE_WINDOW = timedelta(seconds=60)
MIN_RATE_SECONDS = 5.0


def collection_stats(*, collection: Collection) -> dict:
    """Counts of the collection's images by status (total, pending, indexed, failed), and the
    indexing rate over the last minute (``indexed_per_second``). When indexing started less than
    a minute ago, the rate is taken over the time since the first of those images, so an import
    that just began shows its real pace instead of a fraction of it."""
    now = timezone.now()
    since = now - RATE_WINDOW
    recent = Q(status=Image.Status.INDEXED, indexed_at__gte=since)
    stats = Image.objects.filter(collection=collection).aggregate(
        total=Count("id"),
        pending=Count("id", filter=Q(status=Image.Status.PENDING)),
        indexed=Count("id", filter=Q(status=Image.Status.INDEXED)),
        failed=Count("id", filter=Q(status=Image.Status.FAILED)),
        recent=Count("id", filter=recent),
        first_recent=Min("indexed_at", filter=recent),
    )
    first, recent_count = stats.pop("first_recent"), stats.pop("recent")
    seconds = max((now - first).total_seconds(), MIN_RATE_SECONDS) if first else 1.0  # no first: none recent
    stats["indexed_per_second"] = round(recent_count / seconds, 2)
    return stats


def collection_list_with_stats() -> QuerySet[Collection]:
    return Collection.objects.annotate(
        total=Count("images"),
        indexed=Count("images", filter=Q(images__status=Image.Status.INDEXED)),
        pending=Count("images", filter=Q(images__status=Image.Status.PENDING)),
        failed=Count("images", filter=Q(images__status=Image.Status.FAILED)),
    ).order_by("name")


def image_list(*, collection: Collection, status: str = "", label: str = "", after: int = 0, limit: int) -> list[Image]:
    """Up to ``limit`` of the collection's images with an id above ``after``, in id order, narrowed
    by ``status`` and ``label`` when given. Pages follow the ids (keyset), so page 10,000 of a
    million images costs what the first does, and an image added meanwhile shifts no page."""
    images = Image.objects.filter(collection=collection, id__gt=after).select_related("collection").order_by("id")
    if status:
        images = images.filter(status=status)
    if label:
        images = images.filter(label=label)
    return list(images[:limit])
