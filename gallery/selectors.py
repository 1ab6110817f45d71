from dataclasses import dataclass
from datetime import timedelta

from django.db import connection
from django.db.models import Count, IntegerField, Min, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from gallery.models import Collection, CollectionCount, Image

# The indexing rate is measured over this window; or since the first image indexed in it, but
# over no less than a few seconds, so that one image indexed a moment ago is not a huge rate.
RATE_WINDOW = timedelta(seconds=60)
MIN_RATE_SECONDS = 5.0


def _counts_by_status(collection_id) -> dict[str, int]:
    """total, pending, indexed, failed: from the counts the database keeps (``CollectionCount``),
    a few rows whatever the collection's size."""
    counts = dict(
        CollectionCount.objects.filter(collection_id=collection_id).values_list("status").annotate(n=Sum("images")).order_by()
    )
    stats = {status: int(counts.get(status, 0)) for status in Image.Status.values}
    return {"total": sum(stats.values()), **stats}


def collection_stats(*, collection: Collection) -> dict:
    """Counts of the collection's images by status (total, pending, indexed, failed), and the
    indexing rate over the last minute (``indexed_per_second``). When indexing started less than
    a minute ago, the rate is taken over the time since the first of those images, so an import
    that just began shows its real pace instead of a fraction of it."""
    now = timezone.now()
    stats = _counts_by_status(collection.pk)
    recent = Image.objects.filter(collection=collection, indexed_at__gte=now - RATE_WINDOW, status=Image.Status.INDEXED).aggregate(
        count=Count("id"), first=Min("indexed_at")
    )
    seconds = max((now - recent["first"]).total_seconds(), MIN_RATE_SECONDS) if recent["first"] else 1.0  # none recent
    stats["indexed_per_second"] = round(recent["count"] / seconds, 2)
    return stats


def _count(**filters) -> Coalesce:
    """The outer collection's count of images (in the statuses ``filters`` pick), summed over the
    shards of ``CollectionCount``."""
    counts = CollectionCount.objects.filter(collection=OuterRef("pk"), **filters).order_by().values("collection")
    return Coalesce(Subquery(counts.annotate(n=Sum("images")).values("n"), output_field=IntegerField()), Value(0))


def collection_list_with_stats() -> QuerySet[Collection]:
    """Every collection with its counts by status, read from the counts the database keeps: the
    same cost at a million images as at ten (bench/search_scale.py --pages-only)."""
    counts = {"total": _count(), **{status: _count(status=status) for status in Image.Status.values}}
    return Collection.objects.annotate(**counts).order_by("name")


# One index probe per distinct label (a loose index scan over (collection, label)), instead of
# reading every row of the collection.
_COLLECTION_LABELS_SQL = """
WITH RECURSIVE labels (label) AS (
    (SELECT label FROM gallery_image WHERE collection_id = %(collection)s AND label > '' ORDER BY label LIMIT 1)
    UNION ALL
    SELECT (
        SELECT image.label FROM gallery_image AS image
        WHERE image.collection_id = %(collection)s AND image.label > labels.label ORDER BY image.label LIMIT 1
    )
    FROM labels WHERE labels.label IS NOT NULL
)
SELECT label FROM labels WHERE label IS NOT NULL LIMIT %(limit)s
"""


def collection_labels(*, collection: Collection, limit: int) -> list[str]:
    """The collection's distinct non-empty labels in order, at most ``limit``."""
    with connection.cursor() as cursor:
        cursor.execute(_COLLECTION_LABELS_SQL, {"collection": collection.pk, "limit": limit})
        return [row[0] for row in cursor.fetchall()]


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


# Two pictures are copies of each other when their copy signatures (``imaging.copy_signature``) are
# at least this similar (cosine): rescaled, recompressed, in another format, a little brighter or
# darker. On the shared sets it finds such copies while distinct pictures seldom come this close
# (`bench/copies.py`, docs/benchmarks.md, which also says what it misses: crops, mirror images).
COPY_MIN_SIMILARITY = 0.98
# Copies listed for one image, at most.
MAX_COPIES = 50


@dataclass(frozen=True)
class Copy:
    image: Image
    similarity: float  # of the copy signatures
    identical: bool  # the same bytes (SHA-256): the same file, in another collection


@dataclass(frozen=True)
class Copies:
    """The copies of one picture, nearest first; ``has_signature`` is False when the picture has no
    signature to compare (not yet thumbnailed, indexed before signatures, or one flat grey)."""

    has_signature: bool
    copies: list[Copy]


# The nearest signatures first, then the threshold, as pgvector advises for a distance filter: with
# the threshold inside, an iterative index scan (the connection's hnsw.iterative_scan) would walk
# on to hnsw.max_scan_tuples for a picture with fewer copies than the limit, which is nearly all.
_NEAREST_SIGNATURES_SQL = """
WITH nearest AS MATERIALIZED (
    SELECT id, signature <=> %(signature)s::halfvec AS distance FROM gallery_image
    WHERE signature IS NOT NULL ORDER BY distance LIMIT %(limit)s
)
SELECT id, distance FROM nearest WHERE distance <= %(within)s AND id <> %(image)s ORDER BY distance, id
"""


def image_list_copies(*, image: Image, limit: int = MAX_COPIES) -> Copies:
    """The images, in every collection, whose pictures are copies of ``image``'s (its own row
    left out; byte-identical files in other collections included), nearest first, through the
    signatures' HNSW index."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT signature::text FROM gallery_image WHERE id = %s AND signature IS NOT NULL", [image.pk])
        row = cursor.fetchone()
        if row is None:
            return Copies(has_signature=False, copies=[])
        cursor.execute(_NEAREST_SIGNATURES_SQL, {
            "signature": row[0], "limit": limit + 1, "within": 1.0 - COPY_MIN_SIMILARITY, "image": image.pk,
        })
        nearest = cursor.fetchall()[:limit]
    rows = Image.objects.select_related("collection").in_bulk([image_id for image_id, _ in nearest])
    copies = [
        Copy(image=rows[image_id], similarity=1.0 - distance, identical=rows[image_id].sha256 == image.sha256)
        for image_id, distance in nearest if image_id in rows  # one deleted meanwhile is left out
    ]
    return Copies(has_signature=True, copies=copies)
