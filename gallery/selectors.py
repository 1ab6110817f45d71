from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.core.files.storage import default_storage
from django.db import connection
from django.db.models import Count, F, Func, IntegerField, Min, OuterRef, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from PIL import Image as PILImage

from gallery import imaging
from gallery.models import Collection, CollectionCount, CopyRemovalRun, Image, MoveRun

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


# Pictures shown on each collection's card on the front page: its latest indexed ones.
COVER_IMAGES = 4

# One probe of the (collection, indexed_at) index per collection, reading back from its newest
# entry; the IS NOT NULL starts that scan past the pending images, whose indexed_at is empty. No
# other condition, so a probe reads ``per_collection`` rows whatever the collection holds.
_COLLECTION_COVERS_SQL = """
SELECT image.id, image.collection_id, image.status, image.thumbnail, image.indexed_at
FROM unnest(%(collections)s::bigint[]) AS shown (id)
CROSS JOIN LATERAL (
    SELECT id, collection_id, status, thumbnail, indexed_at FROM gallery_image
    WHERE collection_id = shown.id AND indexed_at IS NOT NULL
    ORDER BY indexed_at DESC, id DESC LIMIT %(per_collection)s
) AS image
ORDER BY image.collection_id, image.indexed_at DESC, image.id DESC
"""


def collection_covers(*, collections: Sequence[Collection], per_collection: int = COVER_IMAGES) -> dict[int, list[Image]]:
    """What each collection's card on the front page shows, keyed by collection id: of its
    ``per_collection`` most recently indexed pictures, those still indexed and with a thumbnail
    (all of them, but for one failed or cleared since), the newest first. An index probe of a few
    rows per collection, so the same cost at a million images as at ten."""
    covers: dict[int, list[Image]] = {collection.pk: [] for collection in collections}
    for image in Image.objects.raw(_COLLECTION_COVERS_SQL, {"collections": list(covers), "per_collection": per_collection}):
        if image.status == Image.Status.INDEXED and image.thumbnail:
            covers[image.collection_id].append(image)
    return covers


def collection_list_with_covers() -> list[Collection]:
    """``collection_list_with_stats``, each collection also with its ``covers`` (``collection_covers``):
    what the front page and the collection list endpoint show."""
    collections = list(collection_list_with_stats())
    covers = collection_covers(collections=collections)
    for collection in collections:
        collection.covers = covers[collection.pk]
    return collections


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


def collection_images(*, collection: Collection, label: str = "", status: str = "") -> QuerySet[Image]:
    """The collection's images, only those with ``label`` and ``status`` where given."""
    images = Image.objects.filter(collection=collection)
    if label:
        images = images.filter(label=label)
    if status:
        images = images.filter(status=status)
    return images


# What an export reads of each image: its file and what the manifest lists.
_EXPORT_FIELDS = ("id", "file", "original_name", "label", "sha256", "width", "height", "status", "error", "created_at")


def images_in_export_order(*, images: QuerySet[Image]) -> Iterator[Image]:
    """``images`` in label then id order, as ``gallery.export`` writes them: each label's images
    together. Read through a server-side cursor (``iterator``), so an export of any size holds
    500 rows at a time; outside a transaction the cursor is WITH HOLD, materialised by PostgreSQL
    when it is declared, so a long download keeps no transaction open."""
    return images.select_related(None).order_by("label", "id").only(*_EXPORT_FIELDS).iterator(chunk_size=500)


def images_in_given_order(*, ids: Iterable[int], chunk: int = 500) -> Iterator[Image]:
    """The images ``ids`` names, in that order (an id named twice, the first time only; one with
    no image, left out), read ``chunk`` at a time: a ranked export (``gallery.export``) of a page
    of search results."""
    order = list(dict.fromkeys(ids))
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        found = Image.objects.select_related(None).only(*_EXPORT_FIELDS).in_bulk(part)
        yield from (found[image_id] for image_id in part if image_id in found)


def move_runs_counted() -> QuerySet[MoveRun]:
    """Moves with how many images stayed (``duplicates_count``, counted in SQL), without their
    ids (up to 8 bytes an image) or the list of those that stayed (read only where shown)."""
    return MoveRun.objects.defer("image_ids", "duplicates").annotate(
        duplicates_count=Func(F("duplicates"), function="jsonb_array_length", output_field=IntegerField())
    )


def collection_moves_incoming(*, collection: Collection) -> dict | None:
    """The running moves of many images into ``collection``, summed: how many (``runs``), their
    ids in all (``total``), checked so far (``position``) and moved (``moved``); None when none runs."""
    summed = MoveRun.objects.filter(to=collection, status=MoveRun.Status.RUNNING).aggregate(
        runs=Count("pk"), total=Sum("total"), position=Sum("position"), moved=Sum("moved")
    )
    return summed if summed["runs"] else None


def move_run_list(*, status: str = "", before: int = 0, limit: int) -> list[MoveRun]:
    """Up to ``limit`` moves, the newest first, only those in ``status`` where given and with an id
    below ``before`` where given (the next page's keyset), as ``move_runs_counted`` reads them."""
    runs = move_runs_counted().select_related("to")
    if status:
        runs = runs.filter(status=status)
    if before:
        runs = runs.filter(pk__lt=before)
    return list(runs.order_by("-pk")[:limit])


def image_list(*, collection: Collection, status: str = "", label: str = "", after: int = 0, limit: int) -> list[Image]:
    """Up to ``limit`` of the collection's images with an id above ``after``, in id order, narrowed
    by ``status`` and ``label`` when given. Pages follow the ids (keyset), so page 10,000 of a
    million images costs what the first does, and an image added meanwhile shifts no page."""
    images = collection_images(collection=collection, label=label, status=status).filter(id__gt=after)
    return list(images.select_related("collection").order_by("id")[:limit])


@dataclass(frozen=True)
class ImagePage:
    """One page of a collection's images, as the gallery shows it."""

    images: list[Image]
    number: int  # from 1
    pages: int  # how many there are, at least 1
    has_previous: bool
    has_next: bool


def image_page(
    *, images: QuerySet[Image], count: int, per_page: int, number: int, after: int | None = None, before: int | None = None
) -> ImagePage:
    """Page ``number`` of ``images`` (a queryset in id order; ``count`` of them). Reached from the
    page before it, ``after`` is that page's last id, and the page is the ``per_page`` images after
    it (keyset), so page 8,000 of a million images costs what the first does, and an image added
    or deleted meanwhile neither repeats nor skips one. From the page after it, ``before`` is that
    page's first id. Without either, or when they find no full page (the images around them are
    gone), the page is counted (OFFSET) from the start, or from the end when it is nearer that,
    as a page typed into the address is: the last page costs what the first does. Fewer than a
    page before ``before`` is the first page."""
    pages = max(1, -(-count // per_page))
    if after is not None and number > 1:
        found = list(images.filter(id__gt=after)[:per_page])
        if found:
            return _keyset_page(images, found, number, pages)
    if before is not None and number > 1:
        found = list(images.filter(id__lt=before).order_by("-id")[:per_page])[::-1]
        if len(found) == per_page:
            return _keyset_page(images, found, number, pages)
        number = 1  # fewer than a page before it: the first page is what comes before
    number = min(max(number, 1), pages)
    start = (number - 1) * per_page
    if start > count // 2:  # nearer the end than the start: count back from the end instead
        after_page = max(count - number * per_page, 0)
        found = list(images.order_by("-id")[after_page : after_page + min(per_page, count - start)])[::-1]
    else:
        found = list(images[start : start + per_page])
    return ImagePage(images=found, number=number, pages=pages, has_previous=number > 1, has_next=number < pages)


def _keyset_page(images: QuerySet[Image], found: list[Image], number: int, pages: int) -> ImagePage:
    """``found``, page ``number`` as its link counted; whether pages come before and after it is
    asked of the rows (two index probes). Where images went or came since the pages before were
    shown, the number goes on following the links, and the count of pages is at least that."""
    # Each probe keeps its ORDER BY, which walks the primary key from the page's edge; exists()
    # would drop it, and under a status filter the planner then reads the table from its start.
    has_previous = bool(images.filter(id__lt=found[0].pk).order_by("-id").values_list("id", flat=True)[:1])
    has_next = bool(images.filter(id__gt=found[-1].pk).order_by("id").values_list("id", flat=True)[:1])
    if not has_previous:
        number = 1
    return ImagePage(images=found, number=number, pages=max(pages, number + has_next), has_previous=has_previous, has_next=has_next)


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


# Each image of the batch with the copies among its nearest signatures, in one statement: a
# lateral join runs the signature index's nearest-neighbour scan once per image. The threshold is
# applied outside the scan's LIMIT, as pgvector advises for a distance filter: inside it, an
# iterative index scan (the connection's hnsw.iterative_scan) would walk on to
# hnsw.max_scan_tuples for a picture with fewer copies than the limit, which is nearly all.
# ``everywhere`` keeps copies in other collections; otherwise only those in the image's own.
_BATCH_COPIES_SQL = """
SELECT image.id, near.id, near.distance, near.collection_id = image.collection_id
FROM gallery_image AS image
CROSS JOIN LATERAL (
    SELECT other.id, other.collection_id, other.signature <=> image.signature AS distance FROM gallery_image AS other
    WHERE other.signature IS NOT NULL ORDER BY other.signature <=> image.signature LIMIT %(limit)s
) AS near
WHERE image.id = ANY(%(ids)s) AND near.distance <= %(within)s AND near.id <> image.id
    AND (%(everywhere)s OR near.collection_id = image.collection_id)
ORDER BY image.id, near.distance, near.id
"""


def _nearest_copies(cursor, ids: list[int], everywhere: bool) -> dict[int, list[tuple[int, float, bool]]]:
    """For each of ``ids`` with copies: (copy id, distance, whether in the same collection), nearest
    first, in one statement (``_BATCH_COPIES_SQL``)."""
    cursor.execute(_BATCH_COPIES_SQL, {"ids": ids, "limit": MAX_COPIES + 1, "within": 1.0 - COPY_MIN_SIMILARITY, "everywhere": everywhere})
    near: dict[int, list[tuple[int, float, bool]]] = {}
    for image_id, copy_id, distance, same_collection in cursor.fetchall():
        near.setdefault(image_id, []).append((copy_id, distance, same_collection))
    return near


def image_list_copies(*, image: Image) -> Copies:
    """The images, in every collection, whose pictures are copies of ``image``'s (its own row
    left out; byte-identical files in other collections included), nearest first, at most
    MAX_COPIES, through the signatures' HNSW index."""
    with connection.cursor() as cursor:
        near = _nearest_copies(cursor, [image.pk], everywhere=True).get(image.pk)
        if near is None:  # no copies, or no signature to look them up by
            cursor.execute("SELECT signature IS NOT NULL FROM gallery_image WHERE id = %s", [image.pk])
            row = cursor.fetchone()
            return Copies(has_signature=bool(row and row[0]), copies=[])
    nearest = [(copy_id, distance) for copy_id, distance, _ in near]
    rows = Image.objects.select_related("collection").in_bulk([copy_id for copy_id, _ in nearest])
    return Copies(has_signature=True, copies=_copies_of(image, nearest, rows))


def images_copy_ids(*, image_ids: Sequence[int]) -> dict[int, set[int]]:
    """For each of ``image_ids``, the ids of the images in every collection whose pictures are
    copies of its picture (as ``image_list_copies`` finds them), in one statement."""
    with connection.cursor() as cursor:
        near = _nearest_copies(cursor, list(image_ids), everywhere=True)
    return {image_id: {copy_id for copy_id, _, _ in copies} for image_id, copies in near.items()}


def _copies_of(image: Image, nearest: list[tuple[int, float]], rows: dict[int, Image]) -> list[Copy]:
    """``nearest`` ((copy id, signature distance) of ``image``'s copies) as ``Copy``s of the images
    in ``rows``: one deleted meanwhile is left out."""
    return [
        Copy(image=rows[copy_id], similarity=1.0 - distance, identical=rows[copy_id].sha256 == image.sha256)
        for copy_id, distance in nearest if copy_id in rows
    ]


# A collection's copies are found a page at a time, checking its images in id order: each page
# checks up to this many (0.6 to 1.1 ms an image on the shared sets: bench/copy_groups.py) and
# stops sooner once it has a page of groups. The next page goes on after the last image checked.
COPY_GROUPS_PER_PAGE = 20
COPY_CHECKS_PER_PAGE = 5_000
# Images looked up in one statement: the first batch is twice the groups wanted (in a collection
# full of copies it is enough), each next one twice the last, up to the most. What a page does not
# reach in its last batch was looked up for nothing.
_COPY_CHECK_BATCH_MAX = 500

@dataclass(frozen=True)
class CopyGroup:
    """A picture of the collection (``image``) and its copies, nearest first."""

    image: Image
    copies: list[Copy]


@dataclass(frozen=True)
class CopyGroups:
    """A page of a collection's copy groups. ``checked_to`` is the id of the last image checked
    (the next page goes on after it); ``checked`` how many images this page checked; ``done`` whether
    no image is left after it."""

    groups: list[CopyGroup]
    checked: int
    checked_to: int
    done: bool


def collection_list_copy_groups(
    *,
    collection: Collection,
    after: int = 0,
    everywhere: bool = False,
    groups: int = COPY_GROUPS_PER_PAGE,
    checks: int = COPY_CHECKS_PER_PAGE,
) -> CopyGroups:
    """The pictures of ``collection`` that have copies (``image_list_copies``), each with them, for
    the images with an id above ``after``: copies in the collection itself, or with ``everywhere``
    in every collection. Every pair of copies is listed together once, in the group of the lower
    id: an image is left out when one of its copies of a lower id in the collection has, among its
    own copies, every other copy of it (so that one's group, or one listed for it in turn, shows
    them all). Copies are alike at 0.98, so in a chain A~B~C where A and C are less alike, B is
    listed after A, with both. Checks at most ``checks`` images, stopping at the image that makes
    ``groups`` groups, so a page costs the same at a million images as at a hundred."""
    found: list[tuple[int, list[tuple[int, float]]]] = []
    checked, checked_to, done, batch_size = 0, after, False, 2 * groups
    near: dict[int, list[tuple[int, float, bool]]] = {}  # the copies of the images looked up on this page
    looked_up: set[int] = set()
    with connection.cursor() as cursor:
        while len(found) < groups and checked < checks:
            size = min(batch_size, _COPY_CHECK_BATCH_MAX, checks - checked)
            batch_size *= 2
            cursor.execute(
                "SELECT id FROM gallery_image WHERE collection_id = %s AND id > %s AND signature IS NOT NULL ORDER BY id LIMIT %s",
                [collection.pk, checked_to, size],
            )
            batch = [row[0] for row in cursor.fetchall()]
            if not batch:
                done = True
                break
            near |= _nearest_copies(cursor, batch, everywhere)
            looked_up |= set(batch)
            # each image's copies of a lower id in the collection, and its other copies: it is
            # listed unless a lower one's own copies include all the others
            lower, rest = {}, {}
            for image_id in batch:
                copies = near.get(image_id, [])
                lower[image_id] = {copy_id for copy_id, _, same in copies if same and copy_id < image_id}
                rest[image_id] = {copy_id for copy_id, _, _ in copies} - lower[image_id]
            earlier = set().union(*(lower[image_id] for image_id in batch if rest[image_id])) - looked_up
            if earlier:
                near |= _nearest_copies(cursor, sorted(earlier), everywhere)
                looked_up |= earlier
            for image_id in batch:
                checked, checked_to = checked + 1, image_id
                if not rest[image_id] or any(
                    rest[image_id] <= {copy_id for copy_id, _, _ in near.get(other, [])} for other in lower[image_id]
                ):
                    continue
                found.append((image_id, [(copy_id, distance) for copy_id, distance, _ in near[image_id]]))
                if len(found) == groups:
                    break
            if len(batch) < size and checked_to == batch[-1]:
                done = True
                break
    rows = Image.objects.select_related("collection").in_bulk(
        [image_id for image_id, _ in found] + [copy_id for _, copies in found for copy_id, _ in copies]
    )
    listed = []
    for image_id, copies in found:
        if image_id not in rows:  # deleted meanwhile
            continue
        kept = _copies_of(rows[image_id], copies, rows)
        if kept:
            listed.append(CopyGroup(image=rows[image_id], copies=kept))
    return CopyGroups(groups=listed, checked=checked, checked_to=checked_to, done=done)


# How a collection's copies are removed in one go (``collection_plan_copy_removal``): which
# picture of a set of copies stays. "largest": the most pixels, then the oldest (lowest id);
# "oldest": the first imported.
COPY_KEEP_RULES = ("largest", "oldest")


def collection_copy_removal_latest(*, collection: Collection) -> CopyRemovalRun | None:
    """The collection's copy removal running now, else the last one to start; None if none ever did."""
    return collection.copy_removals.order_by("-started_at", "-pk").first()


@dataclass(frozen=True)
class CopyRemovalPlan:
    """A stretch of a collection checked for copies to remove: ``doomed`` maps each image to
    remove to the image it is a copy of, which stays. ``unlike`` counts the images left although
    their signatures match a picture of a higher rank, because no such picture is alike region by
    region (``imaging.copies_alike_everywhere``, on the thumbnails) or has a thumbnail to compare.
    ``checked``, ``checked_to`` and ``done`` as in ``CopyGroups``: the next stretch goes on after
    ``checked_to``. ``left``: the images checked that stay although they have a copy of a higher
    rank, or more copies than a lookup lists (``MAX_COPIES``): those a later round may remove."""

    doomed: dict[int, int]
    unlike: int
    checked: int
    checked_to: int
    done: bool
    left: frozenset[int] = frozenset()


@dataclass(frozen=True)
class CopyRemovalLeft:
    """The images that round ``round`` of copy removal ``run_id`` left (``CopyRemovalCandidate``):
    those the next round checks."""

    run_id: int
    round: int


class _Details:
    """What the copy removal knows of images, read once each: a rank by the ``keep`` rule (of two
    copies, the higher rank stays; images gone meanwhile have none), and their thumbnails as
    ``imaging.copies_alike_everywhere`` compares them. ``know`` reads many images' rows in one
    statement; a thumbnail is read from media storage when first compared, and an image with none,
    or one that cannot be read, is alike nothing."""

    def __init__(self, keep: str, gone: frozenset[int] = frozenset()) -> None:
        self.keep, self.gone = keep, gone
        self.ranks: dict[int, tuple[int, int]] = {}
        self._known: dict[int, tuple[str, int]] = {}  # thumbnail name, smaller side
        self._pictures: dict[int, PILImage.Image | None] = {}
        self._details: dict[tuple[int, int], np.ndarray] = {}

    def know(self, ids: set[int]) -> None:
        missing = sorted(ids - self._known.keys())
        if not missing:
            return
        self._known |= {image_id: ("", 0) for image_id in missing}
        present = [image_id for image_id in missing if image_id not in self.gone]
        for image_id, name, width, height in Image.objects.filter(pk__in=present).values_list("pk", "thumbnail", "width", "height"):
            self.ranks[image_id] = ((width or 0) * (height or 0) if self.keep == "largest" else 0, -image_id)
            self._known[image_id] = (name, min(width or imaging.DETAIL_MAX_SIDE, height or imaging.DETAIL_MAX_SIDE))

    def alike(self, first: int, second: int) -> bool:
        self.know({first, second})
        side = imaging.detail_side(min(self._known[first][1], self._known[second][1]))
        one, other = self._detail(first, side), self._detail(second, side)
        return one is not None and other is not None and imaging.copies_alike_everywhere(one, other)

    def _detail(self, image_id: int, side: int) -> np.ndarray | None:
        if image_id not in self._pictures:
            self._pictures[image_id] = None
            if name := self._known[image_id][0]:
                try:
                    with default_storage.open(name, "rb") as stored:  # kept small: a stretch reads thousands
                        self._pictures[image_id] = PILImage.open(stored).convert("RGB").resize(
                            (2 * imaging.DETAIL_MAX_SIDE,) * 2, PILImage.Resampling.LANCZOS, reducing_gap=2.0,
                        )
                except (OSError, ValueError, PILImage.DecompressionBombError):  # gone, or not a picture: no comparison
                    pass
        if self._pictures[image_id] is None:
            return None
        if (image_id, side) not in self._details:
            self._details[image_id, side] = imaging.copy_detail(self._pictures[image_id], side=side)
        return self._details[image_id, side]


def collection_plan_copy_removal(
    *, collection: Collection, keep: str = "largest", after: int = 0, checks: int = COPY_CHECKS_PER_PAGE,
    gone: frozenset[int] = frozenset(), among: frozenset[int] | CopyRemovalLeft | None = None,
) -> CopyRemovalPlan:
    """Which images of ``collection`` with an id above ``after`` to remove as copies of others in
    it (``image_list_copies``, limited to the collection), checking at most ``checks`` images in id
    order. Here a copy must also be alike region by region (``imaging.copies_alike_everywhere``, on
    the thumbnails): clip art drawn alike overall is alike by signature, and only a picture that is
    the same everywhere may stand for the one deleted. ``keep`` (``COPY_KEEP_RULES``) ranks copies;
    a picture that has no such copy of a higher rank is a keeper. An image is removed when one of
    its copies is a keeper; the keeper of the highest rank is named as the copy it is of.

    The rule needs no memory of earlier stretches and never removes a keeper, so every image removed
    has a copy that stays: removing images that are not keepers can make more images keepers (a
    higher copy gone), never fewer. An image with higher copies of which none is a keeper (the
    middle of a chain A~B~C whose ends are less alike) stays.

    ``gone``: images to plan as if they were deleted already (a dry run's later rounds). They still
    take their places among an image's nearest copies, so with very many copies of one picture a
    real round can find a copy that the plan does not. ``among``: check only these images (a later
    round: those the round before left, ``CopyRemovalPlan.left``), or None for every one."""
    if keep not in COPY_KEEP_RULES:
        raise ValueError(f"keep takes one of {', '.join(COPY_KEEP_RULES)}")
    doomed: dict[int, int] = {}
    details, unlike = _Details(keep, gone), 0
    near: dict[int, list[int]] = {}  # each image's copies in the collection, for those looked up
    ranks = details.ranks
    alike_higher: dict[int, list[int]] = {}

    def _higher(image_id: int) -> list[int]:
        return [copy_id for copy_id in near.get(image_id, []) if copy_id in ranks and ranks[copy_id] > ranks[image_id]]

    def _higher_alike(image_id: int) -> list[int]:
        """Its copies of a higher rank whose pictures are alike region by region too."""
        if image_id not in alike_higher:
            alike_higher[image_id] = [copy_id for copy_id in _higher(image_id) if details.alike(image_id, copy_id)]
        return alike_higher[image_id]

    waiting: list[int] = []  # the images of this stretch with copies, not removed
    checked, checked_to, done, size = 0, after, False, 2 * COPY_GROUPS_PER_PAGE
    with connection.cursor() as cursor:
        while checked < checks:
            size = min(size, _COPY_CHECK_BATCH_MAX, checks - checked)
            batch = _stretch_ids(cursor, collection=collection, after=checked_to, size=size, gone=gone, among=among)
            checked, checked_to = checked + len(batch), batch[-1] if batch else checked_to
            if len(batch) < size:
                done = True
            found = {image_id: [copy_id for copy_id, _, _ in copies] for image_id, copies in _nearest_copies(cursor, batch, everywhere=False).items()} if batch else {}
            near |= found
            details.know(set(found) | {copy_id for copies in found.values() for copy_id in copies})
            looked_up = [image_id for image_id in batch if image_id in near and image_id in ranks]
            for image_id in looked_up:
                if _higher(image_id) and not _higher_alike(image_id):
                    unlike += 1
            candidates = {copy_id for image_id in looked_up for copy_id in _higher_alike(image_id)} - near.keys()
            if candidates:  # their own copies decide whether they are keepers
                found = {image_id: [copy_id for copy_id, _, _ in copies] for image_id, copies in _nearest_copies(cursor, sorted(candidates), everywhere=False).items()}
                near |= found
                details.know({copy_id for copies in found.values() for copy_id in copies})
            # A copy is a keeper once every higher copy of it is to go. What this stretch removes can
            # make keepers of copies it passed over, so its images are decided again until nothing
            # changes: a later round less for each time.
            waiting.extend(looked_up)
            settled = False
            while not settled:
                settled = True
                for image_id in waiting:
                    keepers = [
                        copy_id for copy_id in _higher_alike(image_id)
                        if copy_id not in doomed and all(higher in doomed for higher in _higher_alike(copy_id))
                    ]
                    if keepers:
                        doomed[image_id], settled = max(keepers, key=ranks.__getitem__), False
                waiting = [image_id for image_id in waiting if image_id not in doomed]
            if done:
                break
            size *= 2
    # What stays with a higher copy may go once that copy is a keeper; with a full list, a copy
    # beyond it may be. Nothing else can go in a later round: deletions make no new copies.
    left = frozenset(image_id for image_id in waiting if _higher(image_id) or len(near[image_id]) >= MAX_COPIES)
    return CopyRemovalPlan(doomed=doomed, unlike=unlike, checked=checked, checked_to=checked_to, done=done, left=left)


def _stretch_ids(cursor, *, collection: Collection, after: int, size: int, gone: frozenset[int], among) -> list[int]:
    """The ids of the next ``size`` images of ``collection`` to check for copy removal, after
    ``after`` in id order: of every image with a signature, or only of those ``among`` names."""
    if isinstance(among, CopyRemovalLeft):
        cursor.execute(
            "SELECT image.id FROM gallery_copyremovalcandidate AS left_by JOIN gallery_image AS image ON image.id = left_by.image_id "
            "WHERE left_by.run_id = %s AND left_by.round = %s AND left_by.image_id > %s AND image.collection_id = %s "
            "AND image.signature IS NOT NULL ORDER BY left_by.image_id LIMIT %s",  # one moved meanwhile is no longer the run's
            [among.run_id, among.round, after, collection.pk, size],
        )
    else:  # what a round left was never named by it or a round before: none of it is in ``gone``
        cursor.execute(
            "SELECT id FROM gallery_image WHERE collection_id = %s AND id > %s AND signature IS NOT NULL AND id <> ALL(%s) "
            f"{'' if among is None else 'AND id = ANY(%s) '}ORDER BY id LIMIT %s",
            [collection.pk, after, sorted(gone) if among is None else [], *([] if among is None else [sorted(among)]), size],
        )
    return [row[0] for row in cursor.fetchall()]
