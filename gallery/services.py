"""Every write to collections and images."""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import zipfile
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.fields.files import FieldFile
from django.utils import timezone
from pgvector import HalfVector
from psycopg.errors import LockNotAvailable

from gallery import imaging
from gallery.media import media_marker_write
from gallery.models import Collection, CopyRemovalCandidate, CopyRemovalRun, Image, MoveRun, WorkerRun, checked_for_field, one_line
from gallery.selectors import COPY_CHECKS_PER_PAGE, COPY_KEEP_RULES, CopyRemovalLeft, CopyRemovalPlan, collection_plan_copy_removal

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif", ".heic", ".heif", ".bmp", ".tif", ".tiff", ".jfif", ".pbm", ".pgm", ".ppm", ".pnm",
}
ARCHIVE_SUFFIXES = {".zip"}
# Rows are created (one INSERT) and handed to the workers in chunks of this many images.
ENQUEUE_CHUNK_SIZE = 64
# Threads that hash, check and store the files of a chunk. Hashing and file writes release the
# GIL. Single-threaded, the import spent ~1.6 ms of CPU per photo on a 16-core GPU host, a cap
# near 600 photos/s that more workers could not pass (docs/benchmarks.md).
IMPORT_THREADS = max(1, min(8, os.cpu_count() or 1))


@dataclass
class IncomingFile:
    """One file on its way in: the name the user gave it, its label, and its bytes."""

    name: str
    data: bytes
    label: str = ""

    def __post_init__(self) -> None:
        self.name, self.label = one_line(self.name), one_line(self.label)


@dataclass
class ImportReport:
    created: list[int] = field(default_factory=list)  # ids of every row stored, failed ones included
    # files whose bytes a worker had failed on: that image queued again instead of a new row (name, id)
    retried: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    # of those failures, the ones refused again for the reason an image of the collection with the
    # same bytes was refused: no new row, (name, that image's id)
    refused_again: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    duplicates: list[tuple[str, int | str]] = field(default_factory=list)  # (name, id or name it duplicates)
    results: list[dict] = field(default_factory=list)  # one entry per file, in upload order (for the API)

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append((one_line(name), one_line(reason)))

    def merge(self, other: "ImportReport") -> None:
        self.created += other.created
        self.retried += other.retried
        self.failed += other.failed
        self.refused_again += other.refused_again
        self.skipped += other.skipped
        self.duplicates += other.duplicates
        self.results += other.results

    @property
    def queued(self) -> int:
        """How many files were stored and queued for indexing."""
        return len(self.created) + len(self.retried) - (len(self.failed) - len(self.refused_again))

    def summary(self) -> str:
        return (
            f"{self.queued} queued for indexing, {len(self.failed)} failed, "
            f"{len(self.duplicates)} duplicates, {len(self.skipped)} skipped"
        )


def collection_get_or_create(*, name: str, description: str = "") -> Collection:
    name = name.strip()
    if not name:
        raise ValueError("a collection needs a name")
    checked_for_field(Collection._meta.get_field("name"), name, what="a collection's name")
    collection, _ = Collection.objects.get_or_create(name=name, defaults={"description": description})
    return collection


def images_enqueue(image_ids: list[int], *, per_request: int = ENQUEUE_CHUNK_SIZE) -> None:
    """Ask the workers to index ``image_ids``, ``per_request`` images a request (1: each on its
    own), once the current transaction commits.

    ``queued_at`` is stamped now, so the sweep (``workers.tasks.sweep_pending``) can tell a lost
    request from a recent one. A broker that is down does not fail the caller: the rows are
    committed as pending and the sweep queues them again later.
    """
    from workers.tasks import index_images

    Image.objects.filter(id__in=image_ids).update(queued_at=timezone.now())
    for start in range(0, len(image_ids), per_request):
        chunk = image_ids[start : start + per_request]
        transaction.on_commit(lambda chunk=chunk: task_send_safely(index_images, chunk))


def task_send_safely(task, *args) -> None:
    """Send ``task(*args)`` to the broker once, without retries; if the broker is down, log it and
    return. Only for work that is found again later: pending images, quiet backfills and the
    files of deleted collections by the periodic sweep, the files of other deleted rows by
    ``manage.py prune_media``."""
    try:
        task.apply_async(args=args, retry=False)
    except Exception as exc:  # broker down or unreachable: found again later, as above
        logger.warning("could not queue %s%r (%s); the sweep will retry", task.name, args[:1], exc)


def _image_build(*, collection: Collection, incoming: IncomingFile, sha256: str) -> Image:
    image = Image(
        collection=collection,
        original_name=incoming.name[:500],
        label=incoming.label[:200],
        sha256=sha256,
    )
    if len(incoming.data) > settings.CBIR_MAX_UPLOAD_BYTES:
        image.status = Image.Status.FAILED
        image.error = (
            f"file too large: {len(incoming.data):,} bytes exceeds the limit of "
            f"{settings.CBIR_MAX_UPLOAD_BYTES:,} (CBIR_MAX_UPLOAD_BYTES)"
        )
        return image
    try:
        info = imaging.inspect(incoming.data)
    except imaging.ImageRejected as exc:
        image.status = Image.Status.FAILED
        image.error = str(exc)
        return image
    image.width, image.height = info.width, info.height
    file_store(image.file, PurePosixPath(incoming.name).name or "upload", data=incoming.data)
    return image


def file_store(field_file: FieldFile, filename: str, *, data: bytes) -> None:
    """Write ``data`` to media storage under the name its field gives ``filename`` (``upload_to``:
    a fresh uuid name), and set that name on ``field_file``; the row is not saved. If the write
    fails (a full disk, a storage that refuses it), what it had written is removed before the
    error goes on: no cut-short file is left behind."""
    name = field_file.field.generate_filename(field_file.instance, filename)
    try:
        field_file.name = field_file.storage.save(name, ContentFile(data))
    except BaseException:
        stored_files_delete([name])
        raise


class ImportStopped(Exception):
    """An import ended before its last file. ``report`` says what had been stored before."""

    def __init__(self, message: str, report: ImportReport) -> None:
        super().__init__(message)
        self.report = report


class CollectionGone(ImportStopped):
    """The collection was deleted while images were being added to it (what had been stored went
    with it)."""

    def __init__(self, collection: Collection, report: ImportReport) -> None:
        super().__init__(f"collection {collection.name!r} was deleted during the import; nothing more was stored", report)


class StorageFailed(ImportStopped):
    """Media storage refused a file (a full disk, a permission): the images committed before stay;
    the rows and files of the chunk in progress were undone."""

    def __init__(self, error: OSError, report: ImportReport) -> None:
        reason = error.strerror or str(error)
        super().__init__(
            f"media storage refused a file ({reason}); the import stopped there. Kept before it: {report.summary()}", report
        )


def images_create(*, collection: Collection, files: Iterable[IncomingFile]) -> ImportReport:
    """Store each file as an Image of ``collection`` and queue the good ones for indexing.

    A file that is not a usable image still gets a row, ``failed`` with the reason, so the
    admin sees what happened to every file; it never stops the rest of the batch. Refused again
    for the same reason as an earlier file of the collection with the same bytes (importing the
    same folder twice), it is reported failed with that image's id and gets no second row; a file
    whose stored copy a worker failed on is queued again as that image, its earlier reason
    cleared (the import is the retry), rather than stored twice. A file whose
    SHA-256 is already in the collection (and not failed), or earlier in the same upload, is
    reported as a duplicate and not stored again. Rows are committed in chunks, each under a
    lock on the collection row so that concurrent uploads cannot both store the same file, and
    the workers are called only after each commit.
    """
    report = ImportReport()
    try:
        media_marker_write()
    except OSError as exc:
        raise StorageFailed(exc, report) from exc
    chunk: list[IncomingFile] = []
    seen: dict[str, int] = {}  # sha256 -> image id stored by this call
    refused: dict[tuple[str, str], Image] = {}  # (sha256, reason) -> image refused by this call

    def flush(pool: ThreadPoolExecutor) -> None:
        built: list[Image] = []  # this chunk's images, whose files are removed if its rows are not committed
        try:
            store_chunk(pool, built)
        except BaseException as exc:
            stored_files_delete(image.file.name for image in built)
            if isinstance(exc, OSError):
                raise StorageFailed(exc, report) from exc
            raise
        chunk.clear()

    def store_chunk(pool: ThreadPoolExecutor, built: list[Image]) -> None:
        with transaction.atomic():
            # Locked, so a deletion waits for this chunk, or this chunk learns of the deletion
            # before it stores a file (collection_delete takes the same lock first).
            if not Collection.objects.select_for_update().filter(pk=collection.pk).exists():
                raise CollectionGone(collection, report)
            digests = list(pool.map(lambda incoming: hashlib.sha256(incoming.data).hexdigest(), chunk))
            # The collection's images with these bytes, the first of each kind kept (newest first, so
            # the oldest is written last): kept ones, ones a worker failed on (their file is stored),
            # and ones refused at upload (no file), by reason.
            existing: dict[str, int] = {}
            failed_stored: dict[str, int] = {}
            refused_before: dict[tuple[str, str], int] = {}
            for digest, status, stored, reason, image_id in (
                Image.objects.filter(collection=collection, sha256__in=set(digests))
                .order_by("-id")
                .values_list("sha256", "status", "file", "error", "id")
            ):
                if status != Image.Status.FAILED:
                    existing[digest] = image_id
                elif stored:
                    failed_stored[digest] = image_id
                else:
                    refused_before[digest, reason] = image_id
            # The first copy of each new file is checked and stored side by side; then, in order,
            # every file is either a duplicate of what is already kept or one of those builds.
            first_new: dict[str, int] = {}
            for index, digest in enumerate(digests):
                if digest not in seen and digest not in existing and digest not in failed_stored:
                    first_new.setdefault(digest, index)
            def build(index: int) -> Image:
                image = _image_build(collection=collection, incoming=chunk[index], sha256=digests[index])
                built.append(image)  # list.append is atomic under the GIL
                return image

            # Every build is waited for, also after one fails, so that ``built`` names every file written.
            futures = {index: pool.submit(build, index) for index in first_new.values()}
            wait(futures.values())
            builds = {index: future.result() for index, future in futures.items()}
            in_chunk: dict[str, Image] = {}
            # In upload order, what became of each file: ("new", its row), ("duplicate", the image it
            # repeats), ("retried", the failed image queued again) or ("refused", the image refused
            # alike, with the reason).
            entries: list[tuple[IncomingFile, str, Image | int, str]] = []
            for index, (incoming, digest) in enumerate(zip(chunk, digests)):
                original = seen.get(digest) or existing.get(digest) or in_chunk.get(digest)
                if original is not None:
                    entries.append((incoming, "duplicate", original, ""))
                    continue
                if digest in failed_stored:  # its later copies are duplicates of it
                    seen[digest] = failed_stored[digest]
                    entries.append((incoming, "retried", failed_stored[digest], ""))
                    continue
                # A later copy of a file whose first copy failed its checks is checked on its own.
                image = builds[index] if index in builds else build(index)
                if image.status != Image.Status.FAILED:
                    in_chunk[digest] = image
                elif not image.file:  # refused at upload: by its bytes, unless the limits changed since
                    key = (digest, image.error)
                    if (earlier := refused.get(key) or refused_before.get(key)) is not None:
                        entries.append((incoming, "refused", earlier, image.error))
                        continue
                    refused[key] = image
                entries.append((incoming, "new", image, ""))
            Image.objects.bulk_create([image for _, kind, image, _ in entries if kind == "new"])
            retried = [image_id for _, kind, image_id, _ in entries if kind == "retried"]
            _images_back_to_pending(retried)
            queued = []
            for incoming, kind, image, reason in entries:
                image_id = image.pk if isinstance(image, Image) else image
                if kind == "duplicate":
                    report.duplicates.append((incoming.name, image_id))
                    report.results.append({"name": incoming.name, "status": "duplicate", "duplicate_of": image_id})
                elif kind == "retried":
                    report.retried.append((incoming.name, image_id))
                    report.results.append({"name": incoming.name, "id": image_id, "status": Image.Status.PENDING, "error": ""})
                elif kind == "refused":  # failed, and named by the image refused before
                    report.failed.append((incoming.name, reason))
                    report.refused_again.append((incoming.name, image_id))
                    report.results.append({"name": incoming.name, "id": image_id, "status": Image.Status.FAILED, "error": reason})
                else:
                    report.created.append(image_id)
                    report.results.append({"name": incoming.name, "id": image_id, "status": image.status, "error": image.error})
                    if image.status == Image.Status.FAILED:
                        report.failed.append((image.original_name, image.error))
                    else:
                        seen[image.sha256] = image_id
                        queued.append(image_id)
            images_enqueue(retried + queued)

    with ThreadPoolExecutor(max_workers=IMPORT_THREADS, thread_name_prefix="import") as pool:
        for incoming in files:
            chunk.append(incoming)
            if len(chunk) >= ENQUEUE_CHUNK_SIZE:
                flush(pool)
        if chunk:
            flush(pool)
    return report


def uploads_to_incoming(
    uploads, *, label: str = "", labels_from_dirs: bool = False, report: ImportReport
) -> Iterator[IncomingFile]:
    """Uploaded files (Django ``UploadedFile``) as ``IncomingFile``s; .zip archives are expanded."""
    for upload in uploads:
        upload.seek(0)
        if PurePosixPath(upload.name).suffix.lower() in ARCHIVE_SUFFIXES and zipfile.is_zipfile(upload):
            upload.seek(0)
            for item in iter_zip(upload, labels_from_dirs=labels_from_dirs, report=report):
                item.label = item.label or label
                yield item
        else:
            upload.seek(0)
            yield IncomingFile(name=upload.name, data=upload.read(), label=label)


def folder_uploads_to_incoming(
    uploads, paths: list[str], *, label: str = "", labels_from_dirs: bool = False, report: ImportReport
) -> Iterator[IncomingFile]:
    """The files of a folder picked in a browser, as ``import_images`` takes a folder: hidden files
    and other extensions skipped, .zip archives expanded, the label from the parent folder with
    ``labels_from_dirs``. Django keeps only a file's base name, so ``paths`` (the browser's
    relative paths, in the same order) give the folders; a path whose base name differs from its
    file's is not trusted, and that file goes by its name alone."""
    for index, upload in enumerate(uploads):
        path = paths[index] if index < len(paths) else ""
        relative = PurePosixPath(path if PurePosixPath(path).name == upload.name else upload.name)
        if _is_hidden(relative):
            continue
        suffix = relative.suffix.lower()
        if suffix not in IMAGE_SUFFIXES | ARCHIVE_SUFFIXES:
            report.skip(str(relative), "not an image file extension")
            continue
        if suffix in ARCHIVE_SUFFIXES:
            yield from uploads_to_incoming([upload], label=label, labels_from_dirs=labels_from_dirs, report=report)
            continue
        upload.seek(0)
        folder_label = relative.parent.name if labels_from_dirs else ""
        yield IncomingFile(name=str(relative), data=upload.read(), label=folder_label or label)


def image_mark_failed(*, image: Image, reason: str) -> None:
    Image.objects.filter(pk=image.pk).update(status=Image.Status.FAILED, error=reason[:2000])


def images_index_again(*, images: QuerySet[Image]) -> int:
    """Put failed images back to pending, their reason and attempts cleared, and queue them: for
    failures whose cause is gone (a worker that ran out of memory, storage that was unreachable,
    a decoder since upgraded). Left as they are: images whose file was never stored (refused at
    upload), those whose file the collection holds again in a live image (uploaded again after it
    failed), and all but the first of failed copies of one file, which would otherwise be kept
    twice. Returns how many were queued."""
    held_again = Image.objects.filter(collection=OuterRef("collection"), sha256=OuterRef("sha256")).exclude(
        status=Image.Status.FAILED
    )
    with transaction.atomic():
        ids = list(
            images.filter(status=Image.Status.FAILED)
            .exclude(file="")
            .exclude(Exists(held_again))
            .order_by("collection_id", "sha256", "id")
            .distinct("collection_id", "sha256")
            .values_list("id", flat=True)
        )
        _images_back_to_pending(ids)
        images_enqueue(ids)
    return len(ids)


def _images_back_to_pending(image_ids: list[int]) -> None:
    """Failed images made pending again, as new: their reason and attempts cleared (queue them)."""
    Image.objects.filter(id__in=image_ids).update(status=Image.Status.PENDING, error="", attempts=0)


# One statement for a whole batch, the rows as arrays. Django's bulk_update builds a CASE per
# row and column in Python, which cost a worker ~0.5 ms of CPU per image, about a twentieth of
# its time (bench/ingest.py --stages). The size decoded replaces the one read from the header at
# upload: the decoder has seen the whole file (a PNG's eXIf chunk can follow its pixels).
_RECORD_THUMBNAILS_SQL = """
UPDATE gallery_image AS image
SET thumbnail = batch.thumbnail, width = batch.width, height = batch.height, signature = batch.signature::halfvec
FROM unnest(%s::bigint[], %s::text[], %s::integer[], %s::integer[], %s::text[]) AS batch (id, thumbnail, width, height, signature)
WHERE image.id = batch.id
RETURNING image.id
"""


def images_record_thumbnails(*, images: list[Image]) -> set[int]:
    """Record each image's thumbnail (already saved to storage, its name set on the instance),
    its width and height as decoded (full size, as shown) and its copy signature (a list of
    floats, or None), in one UPDATE. Returns the ids of the rows updated: an image deleted
    meanwhile is not among them."""
    if not images:
        return set()
    columns = ([image.id for image in images], [image.thumbnail.name for image in images],
               [image.width for image in images], [image.height for image in images],
               [None if image.signature is None else HalfVector(image.signature).to_text() for image in images])
    with connection.cursor() as cursor:
        cursor.execute(_RECORD_THUMBNAILS_SQL, list(columns))
        return {row[0] for row in cursor.fetchall()}


def stored_files_delete(names: Iterable[str]) -> None:
    """Remove these files from media storage; a file already gone is not an error (the storage's
    ``delete`` ignores it)."""
    for name in names:
        if not name:
            continue
        try:
            default_storage.delete(name)
        except OSError:
            logger.exception("could not delete %s from media storage", name)


# A deletion removes up to this many files itself once it commits; more are handed to the
# workers in chunks of this size (``workers.tasks.delete_media_files``), so deleting 100,000
# images does not hold the request that asked for it while 200,000 files are unlinked.
FILES_DELETED_INLINE = 1000


def stored_files_delete_soon(names: list[str]) -> None:
    """``stored_files_delete`` now for a few names, by the workers for many. With the broker down
    the files stay behind as orphans, which ``manage.py prune_media`` removes."""
    from workers.tasks import delete_media_files

    if len(names) <= FILES_DELETED_INLINE:
        stored_files_delete(names)
        return
    for start in range(0, len(names), FILES_DELETED_INLINE):
        task_send_safely(delete_media_files, names[start : start + FILES_DELETED_INLINE])


# Deletions are SQL, a statement for the vectors and one for the rows: Django's cascade would
# first load every image into a model instance (a million: minutes and gigabytes in the web
# process, bench/delete.py). The vectors go first: they point at the images.
_DELETE_IMAGES_SQL = (
    "DELETE FROM search_embedding WHERE image_id = ANY(%(ids)s)",
    "DELETE FROM gallery_image WHERE id = ANY(%(ids)s) RETURNING file, thumbnail",
)
_DELETE_COLLECTION_IMAGES_SQL = (
    "DELETE FROM search_embedding WHERE image_id IN (SELECT id FROM gallery_image WHERE collection_id = %(collection)s)",
    "DELETE FROM gallery_image WHERE collection_id = %(collection)s",
)


@transaction.atomic
def images_delete(*, images: QuerySet[Image]) -> int:
    """Delete these images, their vectors, and, once the deletion is committed, their originals
    and thumbnails in media storage (each row owns its files: stored names are fresh uuids, and
    a duplicate is never stored twice). Returns how many images were deleted."""
    ids = list(images.values_list("pk", flat=True))
    with connection.cursor() as cursor:
        for sql in _DELETE_IMAGES_SQL:
            cursor.execute(sql, {"ids": ids})
        rows = cursor.fetchall()
    names = [name for pair in rows for name in pair if name]
    # robust: the rows are gone whatever happens to their files; a failure is logged, not raised
    transaction.on_commit(lambda: stored_files_delete_soon(names), robust=True)
    return len(rows)


class MoveTargetGone(Exception):
    """The collection that images were to move to was deleted first; nothing was moved."""


@dataclass
class ImagesMoved:
    """What ``images_move`` did: the images ``moved``; the ``duplicates`` that stayed where they
    were because the collection holds the same file already, as (image, the image there with the
    same bytes); and those in it ``already``. Ids, in id order."""

    moved: list[int] = field(default_factory=list)
    duplicates: list[tuple[int, int]] = field(default_factory=list)
    already: list[int] = field(default_factory=list)


# Images one request moves, at most (the admin's action, POST /api/images/move/). Each moved vector
# enters the HNSW index again (its collection is indexed, so the update cannot be HOT): 1.25-1.48 ms
# an image on 2 CPU cores (bench/move.py), so 5,000 hold a request for about 6-7.5 s.
MOVE_IMAGES_MAX = 5_000
# Ids one call of the API hands to the workers to move (the admin's "select all" has no such cap).
MOVE_RUN_IMAGES_MAX = 100_000

_MOVE_IMAGES_SQL = (
    "UPDATE gallery_image SET collection_id = %(to)s, updated_at = now() WHERE id = ANY(%(ids)s)",
    # The vectors carry their image's collection, so that collection filters need no join.
    "UPDATE search_embedding SET collection_id = %(to)s WHERE image_id = ANY(%(ids)s)",
)


@transaction.atomic
def images_move(*, images: QuerySet[Image], to: Collection) -> ImagesMoved:
    """Move these images into collection ``to``, with their vectors, labels and status, so they
    are found under it at once; a pending one is indexed there. An image whose file (SHA-256) the
    collection holds already, or that repeats another image of the move, stays where it was and
    is reported as a duplicate of that image, as an upload of it would be. Stored files keep their
    names (their folder is the collection they were uploaded to; media cleanup goes by name).
    The collections involved are locked first, as imports and deletions lock them, so a file
    cannot arrive twice and a collection being deleted does not take or miss a moving image.
    Raises MoveTargetGone when ``to`` no longer exists."""
    picked = images.order_by().values("pk")
    sources = Image.objects.filter(pk__in=picked).order_by().values("collection_id")
    # NO KEY UPDATE: it waits for imports and deletions, which lock a collection FOR UPDATE, but
    # not for a worker's vectors, whose foreign keys take a KEY SHARE lock on their collection when
    # they commit, after this move may be waiting for their image (a deadlock with FOR UPDATE).
    locked = set(
        Collection.objects.select_for_update(no_key=True)
        .filter(Q(pk=to.pk) | Q(pk__in=sources))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if to.pk not in locked:
        raise MoveTargetGone(f"collection {to.name!r} was deleted; nothing was moved")
    rows = list(Image.objects.select_for_update().filter(pk__in=picked).order_by("pk").values_list("pk", "collection_id", "sha256"))
    report = ImagesMoved()
    held = dict(
        Image.objects.filter(collection=to, sha256__in={sha256 for _, _, sha256 in rows}).order_by("-pk").values_list("sha256", "pk")
    )  # newest first, so the oldest image of each file is the one named
    for image_id, collection_id, sha256 in rows:
        if collection_id == to.pk:
            report.already.append(image_id)
        elif sha256 in held:
            report.duplicates.append((image_id, held[sha256]))
        else:
            report.moved.append(image_id)
            held[sha256] = image_id
    with connection.cursor() as cursor:
        for sql in _MOVE_IMAGES_SQL:
            cursor.execute(sql, {"to": to.pk, "ids": report.moved})
    return report


# A stretch of a move run started this many times without finishing (its worker killed, an error
# each time) stops the run, as failed, instead of being tried for ever.
MOVE_RUN_TRIES_MAX = 3


def images_move_start(*, image_ids: Iterable[int], to: Collection) -> MoveRun:
    """Have the workers move the images ``image_ids`` into ``to``, ``MOVE_IMAGES_MAX`` at a time
    (each stretch as ``images_move`` moves them, in id order): for more than one request moves.
    Records the run, with the ids as given (one that names no image when its stretch comes is
    counted missing), and queues its first stretch (``workers.tasks.move_images``). Raises
    QueueUnavailable when the broker cannot be reached; then nothing is recorded either."""
    from workers.tasks import move_images

    ids = sorted(set(image_ids))
    run = MoveRun.objects.create(to=to, image_ids=ids, total=len(ids), progress_at=timezone.now())
    _run_first_stretch_queue(run, move_images, (run.pk, 0), undone="moved")
    return run


def _run_first_stretch_queue(run, task, args: tuple, *, undone: str) -> None:
    """Queue the first stretch of a just-recorded ``run`` (``task(*args)``); where the broker
    cannot be reached, forget the run and raise QueueUnavailable (nothing was ``undone``)."""
    try:
        task.apply_async(args=args, retry=False)
    except Exception as exc:  # broker down or unreachable
        run.delete()
        raise QueueUnavailable(f"the workers' queue cannot be reached ({exc}); nothing was {undone}") from exc


def _run_update_unless_held(model, run_id: int, *, assignments: str, conditions: str, params: dict, returning: str = "id"):
    """``UPDATE`` run ``run_id`` of ``model`` (``SET assignments``) where ``conditions`` hold,
    unless another transaction holds its row (a stretch under way, a stop): then nothing, at once,
    without waiting for it. Returns the ``returning`` row, or None when nothing was updated."""
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {assignments} WHERE id = ("
            f"SELECT id FROM {table} WHERE id = %(run)s AND {conditions} FOR UPDATE SKIP LOCKED) RETURNING {returning}",
            {"run": run_id, **params},
        )
        return cursor.fetchone()


def _run_stretch_take(model, run_id: int, *, tries_max: int, stretch: str, **where: int) -> str:
    """Take the next stretch of ``run_id`` (a run of ``model``) if no one else holds it and the
    run still stands where the caller saw it (``where``: its position fields): count the start
    and note the progress, committed apart, so a killed worker's start still counts. Returns
    "go"; "skip" where it is not to be done (a second message for the same stretch, the sweep's
    after a slow queue; a run that ended or went); or "failed" where this start is one more than
    ``tries_max``: the run then ends as failed, its error naming the ``stretch``."""
    standing = "".join(f" AND {field} = %({field})s" for field in where)
    taken = _run_update_unless_held(
        model, run_id, assignments="tries = tries + 1, progress_at = now()", conditions=f"status = %(running)s{standing}",
        params={"running": WorkerRun.Status.RUNNING, **where}, returning="tries",
    )
    if taken is None:
        return "skip"
    if taken[0] <= tries_max:
        return "go"
    model.objects.filter(pk=run_id, status=WorkerRun.Status.RUNNING).update(
        status=WorkerRun.Status.FAILED, finished_at=timezone.now(),
        error=f"stopped: {stretch} were started {tries_max} times and never finished (a worker killed or an error each "
        "time; see the workers' log)",
    )
    return "failed"


def move_run_advance(*, run_id: int, position: int) -> int | None:
    """Move the stretch of move run ``run_id`` that starts at ``position`` of its ids, and record it:
    the run's next position and counts commit with the stretch's move, so a stretch killed midway
    leaves the run where it was. Returns the next stretch's position, or None when there is none to
    queue: the run ended (now, or before), went with its collection, another worker holds it, or it
    is past that position. A stretch started MOVE_RUN_TRIES_MAX times without finishing ends the
    run as failed."""
    described = f"the images from #{position + 1} of the move"
    if _run_stretch_take(MoveRun, run_id, tries_max=MOVE_RUN_TRIES_MAX, stretch=described, position=position) != "go":
        return None
    with transaction.atomic():
        # The collection first, then the run: deleting the collection locks it, then deletes its
        # runs, so the other order could deadlock with it.
        to_id = MoveRun.objects.filter(pk=run_id).values_list("to_id", flat=True).first()
        if to_id is None or not Collection.objects.select_for_update(no_key=True).filter(pk=to_id).exists():
            return None  # gone with its collection
        run = MoveRun.objects.select_for_update(skip_locked=True).select_related("to").defer("image_ids").filter(
            pk=run_id, status=MoveRun.Status.RUNNING, position=position
        ).first()
        if run is None:  # taken meanwhile
            return None
        with connection.cursor() as cursor:  # this stretch's ids alone (arrays count from 1, both ends in)
            cursor.execute(
                "SELECT image_ids[%(first)s:%(last)s] FROM gallery_moverun WHERE id = %(run)s",
                {"first": position + 1, "last": position + MOVE_IMAGES_MAX, "run": run_id},
            )
            stretch = cursor.fetchone()[0] or []
        moved = images_move(images=Image.objects.filter(pk__in=stretch), to=run.to)
        found = {*moved.moved, *moved.already, *(image_id for image_id, _ in moved.duplicates)}
        run.moved += len(moved.moved)
        run.already += len(moved.already)
        run.missing += len(set(stretch) - found)
        run.duplicates += [[image_id, held] for image_id, held in moved.duplicates]
        run.position = position + len(stretch)
        run.tries, run.error, run.progress_at = 0, "", timezone.now()
        if run.position >= run.total:
            run.status, run.finished_at = MoveRun.Status.DONE, run.progress_at
        # Not the ids: written once, they stay where PostgreSQL put them, however many there are.
        run.save(update_fields=["moved", "already", "missing", "duplicates", "position", "tries", "error", "progress_at",
                                "status", "finished_at"])
    return run.position if run.status == MoveRun.Status.RUNNING else None


def move_run_stop(*, run_id: int) -> MoveRun | None:
    """Stop move run ``run_id``. A stretch under way finishes first (this waits for it, up to
    ``CBIR_STOP_WAIT_S``: its images move with the run's position), and no other starts: a message
    for the next one finds the run stopped and does nothing. The images moved so far stay moved;
    the rest stay where they are. Returns the run as it stopped, or None when it was not running
    (it may have ended while this waited) or there is no such run. Raises StretchUnderway when the
    stretch did not finish in time; then nothing changed."""
    return _running_run_stop(MoveRun.objects.defer("image_ids").filter(pk=run_id))


class StretchUnderway(Exception):
    """Stopping a run waited ``CBIR_STOP_WAIT_S`` for the stretch a worker is on, which has not
    finished; the run was left as it was."""

    def __init__(self, waited_s: int) -> None:
        super().__init__(
            f"the stretch of images a worker is on has not finished after {waited_s} s, and a stop waits for it; nothing "
            f"was stopped: try again in a moment (a stretch that never finishes is ended after {settings.CBIR_STRETCH_TIME_LIMIT_S} s)"
        )


def _running_run_stop(runs: QuerySet):
    """Stop the running run among ``runs`` (of a ``WorkerRun`` model), once the stretch under way
    (which holds its row) is done; returns the run as it stopped, or None when none was running (it
    may have ended while this waited). A stretch that holds the row for longer than
    ``CBIR_STOP_WAIT_S`` (a worker stuck on a lock or a hung read, until its time limit) makes it
    raise StretchUnderway, so that the person asking is told instead of kept waiting."""
    waited_s = settings.CBIR_STOP_WAIT_S
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:  # for this transaction only
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{max(waited_s, 0) * 1000 or 1}ms"])
            run = runs.select_for_update().filter(status=WorkerRun.Status.RUNNING).first()
            if run is None:
                return None
            run.status, run.finished_at, run.error = WorkerRun.Status.STOPPED, timezone.now(), ""
            run.save(update_fields=["status", "finished_at", "error"])
    except OperationalError as exc:
        if isinstance(exc.__cause__, LockNotAvailable):
            raise StretchUnderway(waited_s) from None
        raise
    return run


def move_runs_resume(*, older_than: timedelta) -> int:
    """Queue again the next stretch of each running move that made no progress for ``older_than``
    (its message lost, the broker down when a worker queued it, a worker killed). Returns how many
    were queued."""
    from workers.tasks import move_images

    return _quiet_runs_resume(MoveRun, move_images, ("position",), older_than=older_than)


def _quiet_runs_resume(model, task, fields: tuple[str, ...], *, older_than: timedelta) -> int:
    """Queue ``task(run id, *fields)`` again for each running run of ``model`` with no progress
    for ``older_than``, once even when sweeps overlap; returns how many were queued. A run whose
    row is locked has a stretch under way (or a stop), so it is skipped rather than waited for:
    the sweep holds a worker, and a stretch may take up to ``CBIR_STRETCH_TIME_LIMIT_S``."""
    cutoff = timezone.now() - older_than
    quiet = model.objects.filter(status=WorkerRun.Status.RUNNING, progress_at__lt=cutoff)
    resumed = 0
    for run_id, *standing in list(quiet.values_list("id", *fields)):
        if _run_update_unless_held(
            model, run_id, assignments="progress_at = now()", conditions="progress_at < %(cutoff)s", params={"cutoff": cutoff}
        ):
            task_send_safely(task, run_id, *standing)
            resumed += 1
    return resumed


class DuplicateInCollection(Exception):
    """The collection an image was to move to holds the same file already (``held``, its image)."""

    def __init__(self, collection: Collection, held: int) -> None:
        super().__init__(f"collection {collection.name!r} holds the same file already, as image {held}; nothing was changed")
        self.held = held


@transaction.atomic
def image_update(*, image: Image, collection: Collection | None = None, label: str | None = None) -> Image:
    """Move ``image`` to ``collection`` (``images_move``) and/or give it ``label``, both or
    neither. Returns the image as it is now. Raises DuplicateInCollection when the collection
    holds the same file already, MoveTargetGone when it was deleted, and Image.DoesNotExist when
    the image was; then nothing is changed."""
    if collection is not None:
        moved = images_move(images=Image.objects.filter(pk=image.pk), to=collection)
        if moved.duplicates:
            raise DuplicateInCollection(collection, moved.duplicates[0][1])
        if not moved.moved and not moved.already:
            raise Image.DoesNotExist(f"image {image.pk} was deleted")
    if label is not None and not Image.objects.filter(pk=image.pk).update(label=label, updated_at=timezone.now()):
        raise Image.DoesNotExist(f"image {image.pk} was deleted")
    return Image.objects.select_related("collection").get(pk=image.pk)


# Removing an image can make one of its copies a keeper (its higher copy gone). A stretch settles
# that among its own images; across stretches a later round removes the new keeper's copies, and
# a round that removes nothing ends it. A later round checks only the images the round before left
# with a copy of a higher rank (``CopyRemovalPlan.left``): no other can go. Past this many rounds,
# what is left stays.
COPY_REMOVAL_ROUNDS_MAX = 10


@dataclass(frozen=True)
class CopyRemovalStep:
    """Where a collection's copy removal stands: the next stretch checks the images with an id
    above ``after``, in round ``round``, which has deleted ``deleted_in_round`` images so far.
    ``among``: the images this round checks (those the round before left, ``CopyRemovalPlan.left``),
    or None for every one, as in the first; ``left``: those this round left so far, which the next
    round checks. A recorded removal keeps them in the database instead (``CopyRemovalCandidate``,
    ``copy_removal_advance``). A dry run deletes nothing, so it carries the images it would have
    deleted (``gone``)."""

    after: int = 0
    round: int = 1
    deleted_in_round: int = 0
    gone: frozenset[int] = frozenset()
    among: frozenset[int] | CopyRemovalLeft | None = None
    left: frozenset[int] = frozenset()


@dataclass(frozen=True)
class CopyRemoval:
    """What one stretch of ``collection_remove_copies`` did: its plan, how many of the images it
    named were deleted (fewer when some went meanwhile, or their kept copy did), the step to do
    next (None when the removal is over), and the images it left for the next round to check
    (the plan's ``left``, and those named whose kept copy went meanwhile)."""

    plan: CopyRemovalPlan
    deleted: int
    next: CopyRemovalStep | None
    left: frozenset[int] = frozenset()


def collection_remove_copies(
    *, collection: Collection, keep: str = "largest", step: CopyRemovalStep = CopyRemovalStep(), checks: int = COPY_CHECKS_PER_PAGE,
    dry_run: bool = False,
) -> CopyRemoval:
    """Delete the copies among ``collection``'s images with an id above ``step.after``, checking at
    most ``checks`` of them: each image that ``collection_plan_copy_removal`` names goes, with its
    vectors and files (``images_delete``), and the copy it is of stays. Call again with ``next``
    until it is None: the stretches walk the collection in id order, in rounds until one deletes
    nothing (at most COPY_REMOVAL_ROUNDS_MAX), after which no two images left are copies alike in
    every region (the plan's ``unlike`` ones are alike by signature only). A stretch
    done twice deletes nothing more. The kept copies are locked until the deletion commits, so a
    deletion elsewhere cannot take a kept copy while its copies go; an image whose kept copy went
    meanwhile stays. ``dry_run`` deletes nothing: it plans each stretch as if what it named so far
    were gone (``CopyRemovalStep.gone``), round after round as a removal would go."""
    plan = collection_plan_copy_removal(collection=collection, keep=keep, after=step.after, checks=checks, gone=step.gone, among=step.among)
    deleted, left = 0, plan.left
    if plan.doomed and not dry_run:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SELECT id FROM gallery_image WHERE id = ANY(%s) FOR SHARE", [sorted(set(plan.doomed.values()))])
                kept = {row[0] for row in cursor.fetchall()}
            doomed = [image_id for image_id, copy_of in plan.doomed.items() if copy_of in kept]
            deleted = images_delete(images=Image.objects.filter(pk__in=doomed)) if doomed else 0
        left = left.union(image_id for image_id, copy_of in plan.doomed.items() if copy_of not in kept)
    in_round = step.deleted_in_round + (len(plan.doomed) if dry_run else deleted)
    gone = step.gone.union(plan.doomed) if dry_run else frozenset()
    left_in_round = step.left | left
    if not plan.done:
        following = CopyRemovalStep(after=plan.checked_to, round=step.round, deleted_in_round=in_round, gone=gone, among=step.among, left=left_in_round)
    elif in_round and step.round < COPY_REMOVAL_ROUNDS_MAX:
        following = CopyRemovalStep(round=step.round + 1, gone=gone, among=left_in_round)
    else:
        following = None
    return CopyRemoval(plan=plan, deleted=deleted, next=following, left=left)


class QueueUnavailable(Exception):
    """The broker could not take a task; nothing was queued."""


class CopyRemovalUnderway(Exception):
    """A removal of the collection's copies is running already (``run``); no second one starts."""

    def __init__(self, run: CopyRemovalRun) -> None:
        super().__init__(f"a removal of this collection's copies is under way (round {run.round}, {run.deleted} deleted so far)")
        self.run = run


# Images a worker checks in one stretch of a recorded copy removal (one task, one transaction).
COPY_REMOVAL_CHECKS = COPY_CHECKS_PER_PAGE
# A stretch of a copy removal started this many times without finishing (its worker killed, an
# error each time) stops the removal, as failed, instead of being tried for ever.
COPY_REMOVAL_TRIES_MAX = 3


def copy_removal_record(*, collection: Collection, keep: str = "largest") -> CopyRemovalRun:
    """Record a new removal of ``collection``'s copies, at its start, for ``copy_removal_advance``
    to walk. Raises ValueError for an unknown rule and CopyRemovalUnderway while one runs."""
    if keep not in COPY_KEEP_RULES:
        raise ValueError(f"keep takes one of {', '.join(COPY_KEEP_RULES)}")
    try:
        with transaction.atomic():
            return CopyRemovalRun.objects.create(collection=collection, keep=keep, progress_at=timezone.now())
    except IntegrityError:  # one_copy_removal_running_per_collection
        running = CopyRemovalRun.objects.filter(collection=collection, status=CopyRemovalRun.Status.RUNNING).first()
        if running is None:  # it ended meanwhile
            return copy_removal_record(collection=collection, keep=keep)
        raise CopyRemovalUnderway(running) from None


def copy_removal_start(*, collection: Collection, keep: str = "largest") -> CopyRemovalRun:
    """Start removing ``collection``'s copies (``collection_remove_copies``), keeping a picture of
    each by ``keep``: records the run and asks the workers for its first stretch
    (``workers.tasks.remove_copies``). Raises ValueError for an unknown rule, CopyRemovalUnderway
    while one runs, and QueueUnavailable when the broker cannot be reached (then nothing is
    recorded either)."""
    from workers.tasks import remove_copies

    run = copy_removal_record(collection=collection, keep=keep)
    _run_first_stretch_queue(run, remove_copies, (run.pk, run.round, run.after), undone="removed")
    return run


def copy_removal_advance(*, run_id: int, round_number: int, after: int) -> CopyRemoval | None:
    """Do the stretch of copy removal ``run_id`` that starts after image ``after`` in round
    ``round_number``, and record it: the run's next position and counts are committed with the
    stretch's deletions, so a stretch killed midway leaves the run where it was. Returns what the
    stretch did, or None when there is nothing to do: the run ended or went, another worker holds
    it, or it is past that position. A stretch started COPY_REMOVAL_TRIES_MAX times without
    finishing ends the run as failed."""
    taken = _run_stretch_take(
        CopyRemovalRun, run_id, tries_max=COPY_REMOVAL_TRIES_MAX, stretch=f"the images after #{after} in round {round_number}",
        round=round_number, after=after,
    )
    if taken == "failed":
        CopyRemovalCandidate.objects.filter(run_id=run_id).delete()
    if taken != "go":
        return None
    with transaction.atomic():
        run = CopyRemovalRun.objects.select_for_update(skip_locked=True).select_related("collection").filter(
            pk=run_id, status=CopyRemovalRun.Status.RUNNING, round=round_number, after=after,
        ).first()
        if run is None:  # taken meanwhile
            return None
        among = CopyRemovalLeft(run_id=run.pk, round=run.round - 1) if run.round > 1 else None
        step = CopyRemovalStep(after=run.after, round=run.round, deleted_in_round=run.deleted_in_round, among=among)
        removal = collection_remove_copies(collection=run.collection, keep=run.keep, step=step, checks=COPY_REMOVAL_CHECKS)
        CopyRemovalCandidate.objects.bulk_create(
            [CopyRemovalCandidate(run=run, round=run.round, image_id=image_id) for image_id in sorted(removal.left)],
            ignore_conflicts=True, batch_size=5000,
        )
        run.checked += removal.plan.checked
        run.deleted += removal.deleted
        run.unlike += removal.plan.unlike
        run.tries, run.error, run.progress_at = 0, "", timezone.now()
        following = removal.next
        if following is None:
            run.candidates.all().delete()
            run.status, run.finished_at = CopyRemovalRun.Status.DONE, run.progress_at
            if run.deleted_in_round + removal.deleted:  # the last round still deleted: the cap ended it
                run.error = (
                    f"it stopped after round {COPY_REMOVAL_ROUNDS_MAX}, which still deleted {run.deleted_in_round + removal.deleted}: "
                    "copies may be left; removing them again goes on"
                )
        else:
            if following.round != run.round:
                run.unlike = 0  # the images left are checked again: the last round's count is the one that holds
                run.candidates.filter(round__lt=run.round).delete()  # the next round reads this one's only
            run.round, run.after, run.deleted_in_round = following.round, following.after, following.deleted_in_round
        run.save()
    return removal


def run_record_error(*, model: type[WorkerRun], run_id: int, error: Exception) -> None:
    """Note why the last start of a stretch of run ``run_id`` (a copy removal or a move: ``model``)
    failed (``error``, by its type and message); the run goes on (or stops) by its tries."""
    model.objects.filter(pk=run_id, status=WorkerRun.Status.RUNNING).update(error=f"{type(error).__name__}: {error}"[:2000])


def copy_removal_stop(*, collection: Collection) -> CopyRemovalRun | None:
    """Stop ``collection``'s running copy removal. A stretch under way finishes first (this waits
    for it, up to ``CBIR_STOP_WAIT_S``: its deletions commit with the run's position), and no
    other starts: a message for the next one finds the run stopped and does nothing. What was
    deleted stays deleted, and a new removal starts from what is left. Returns the run as it
    stopped, or None when none was running (it may have ended while this waited). Raises
    StretchUnderway when the stretch did not finish within ``CBIR_STOP_WAIT_S``; then nothing
    changed."""
    run = _running_run_stop(CopyRemovalRun.objects.filter(collection=collection))
    if run is not None:
        run.candidates.all().delete()  # no round of a stopped removal reads them
    return run


def copy_removals_resume(*, older_than: timedelta) -> int:
    """Queue again the next stretch of each running copy removal that made no progress for
    ``older_than`` (its message lost, the broker down when a worker queued it, a worker killed).
    Returns how many were queued."""
    from workers.tasks import remove_copies

    return _quiet_runs_resume(CopyRemovalRun, remove_copies, ("round", "after"), older_than=older_than)


# Folders of media storage whose files belong to image rows, and the Image field that names them:
# images/<collection id>/ holds originals, thumbnails/<collection id>/ thumbnails (upload_to).
IMAGE_FOLDERS = {"images": "file", "thumbnails": "thumbnail"}


def _collection_folders() -> Iterator[tuple[str, str]]:
    """(top, folder) for every collection folder under ``IMAGE_FOLDERS`` in media storage."""
    for top in IMAGE_FOLDERS:
        if default_storage.exists(top):
            for folder in default_storage.listdir(top)[0]:
                yield top, folder


def _folder_orphans(top: str, folder: str, *, cutoff=None) -> list[str]:
    """The files of ``top/folder`` that no image row names (and, with ``cutoff``, older than it).
    By name, not by collection: an image moved to another collection keeps its file here."""
    field = IMAGE_FOLDERS[top]
    prefix = f"{top}/{folder}/"
    known = set(Image.objects.filter(**{f"{field}__startswith": prefix}).values_list(field, flat=True))
    names = (prefix + file for file in default_storage.listdir(prefix)[1])
    return [name for name in names if name not in known and (cutoff is None or default_storage.get_modified_time(name) < cutoff)]


def media_orphans_delete(*, older_than: timedelta, dry_run: bool = False) -> list[str]:
    """Remove files under ``IMAGE_FOLDERS`` that no image row names: left by a crash between
    storing an upload and creating its row, or by a deletion that bypassed ``images_delete``.
    A file newer than ``older_than`` is kept, since an import in progress stores its files
    before it creates their rows. Walks one collection folder at a time. Returns the names
    removed (or that would be, with ``dry_run``)."""
    cutoff = timezone.now() - older_than
    orphans = [name for top, folder in _collection_folders() for name in _folder_orphans(top, folder, cutoff=cutoff)]
    if not dry_run:
        stored_files_delete(orphans)
    return orphans


def _folder_clear(top: str, folder: str, *, cutoff=None) -> int:
    """Remove the files of ``top/folder`` that no row names (older than ``cutoff``, if given),
    then the folder if that emptied it. Returns how many files were removed."""
    orphans = _folder_orphans(top, folder, cutoff=cutoff)
    stored_files_delete(orphans)
    try:
        os.rmdir(default_storage.path(f"{top}/{folder}"))
    except (NotImplementedError, OSError):  # not a local storage, or files remain
        pass
    return len(orphans)


def collection_files_delete(collection_id: int) -> int:
    """Remove the files of a deleted collection: everything in its folders that no image row
    names, then the folders themselves once empty. Returns how many files were removed."""
    return sum(_folder_clear(top, str(collection_id)) for top in IMAGE_FOLDERS if default_storage.exists(f"{top}/{collection_id}"))


def deleted_collections_files_delete(*, older_than: timedelta) -> int:
    """The files that deleted collections left behind because their removal could not be queued
    (the broker was down): in folders named after no existing collection. Only files older than
    ``older_than`` go, so a collection still being created in an uncommitted transaction keeps
    what its import stores meanwhile. The periodic sweep runs this. Returns how many files were
    removed."""
    cutoff = timezone.now() - older_than
    existing = {str(pk) for pk in Collection.objects.values_list("pk", flat=True)}
    return sum(
        _folder_clear(top, folder, cutoff=cutoff) for top, folder in _collection_folders() if folder.isdigit() and folder not in existing
    )


@transaction.atomic
def collection_delete(*, collection: Collection) -> int:
    """Delete a collection with all its images and their vectors; once that commits, its files
    go too (``collection_files_delete``): at once for a small collection, by a worker for a
    large one, so the request does not wait while a million files are unlinked. The collection's
    id is never reused, so no later upload lands in those folders. Returns how many images went
    with it."""
    from workers.tasks import delete_collection_files

    collection_id = collection.pk
    Collection.objects.select_for_update().filter(pk=collection_id).exists()  # waits for an import's chunk in flight
    with connection.cursor() as cursor:
        for sql in _DELETE_COLLECTION_IMAGES_SQL:
            cursor.execute(sql, {"collection": collection_id})
        count = cursor.rowcount
    Collection.objects.filter(pk=collection_id).delete()
    if 2 * count <= FILES_DELETED_INLINE:
        transaction.on_commit(lambda: collection_files_delete(collection_id), robust=True)
    else:
        transaction.on_commit(lambda: task_send_safely(delete_collection_files, collection_id), robust=True)
    return count


def _is_hidden(path: PurePosixPath) -> bool:
    return any((part.startswith(".") and part not in (".", "..")) or part == "__MACOSX" for part in path.parts)


def iter_folder(root: Path, *, labels_from_dirs: bool, report: ImportReport) -> Iterator[IncomingFile]:
    """Image files below ``root`` (symlinks are not followed); the label is the parent folder's name."""
    root = root.resolve()
    for path in sorted(root.rglob("*")):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        if path.is_symlink():
            report.skip(str(relative), "symbolic link not followed")
            continue
        if not path.is_file() or _is_hidden(relative):
            continue
        suffix = path.suffix.lower()
        if suffix in ARCHIVE_SUFFIXES:
            yield from iter_zip(path, labels_from_dirs=labels_from_dirs, report=report)
            continue
        if suffix not in IMAGE_SUFFIXES:
            report.skip(str(relative), "not an image file extension")
            continue
        data = _read_file(path, name=str(relative), report=report)
        if data is not None:
            yield IncomingFile(name=str(relative), data=data, label=relative.parent.name if labels_from_dirs else "")


def _read_file(path: Path, *, name: str, report: ImportReport) -> bytes | None:
    """The bytes of the file at ``path``, or None with the reason in ``report.skipped``: larger
    than CBIR_MAX_UPLOAD_BYTES (not read), or unreadable (no permission, an I/O error of a disk
    or network share, gone since it was listed). The import goes on without it."""
    try:
        if path.stat().st_size > settings.CBIR_MAX_UPLOAD_BYTES:
            report.skip(name, "file larger than CBIR_MAX_UPLOAD_BYTES")
            return None
        return path.read_bytes()
    except OSError as exc:
        report.skip(name, f"unreadable file: {exc.strerror or exc}")
        return None


def iter_zip(source, *, labels_from_dirs: bool, report: ImportReport) -> Iterator[IncomingFile]:
    """Image members of a zip archive, read into memory only (nothing is extracted to disk, so
    ``../`` names cannot escape). Symlinks, nested archives and members that inflate past
    ``CBIR_MAX_UPLOAD_BYTES`` (zip bombs) are skipped with a reason."""
    limit = settings.CBIR_MAX_UPLOAD_BYTES
    # A damaged archive raises whatever the zip reader or the decompressor trips on (BadZipFile,
    # zlib.error, LZMAError, EOFError, ValueError, NotImplementedError...): each becomes a reason.
    try:
        archive = zipfile.ZipFile(source)
    except Exception as exc:
        report.skip(str(getattr(source, "name", source)), f"not a readable zip archive: {exc}")
        return
    with archive:
        for member in archive.infolist():
            name = PurePosixPath(member.filename.replace("\\", "/"))
            if member.is_dir() or _is_hidden(name):
                continue
            if name.is_absolute() or ".." in name.parts:
                report.skip(str(name), "unsafe path in archive (absolute or '..') refused")
                continue
            if stat.S_ISLNK(member.external_attr >> 16):
                report.skip(str(name), "symbolic link inside archive not followed")
                continue
            suffix = name.suffix.lower()
            if suffix in ARCHIVE_SUFFIXES:
                report.skip(str(name), "nested archive not expanded")
                continue
            if suffix not in IMAGE_SUFFIXES:
                report.skip(str(name), "not an image file extension")
                continue
            if member.file_size > limit:
                report.skip(str(name), "member larger than CBIR_MAX_UPLOAD_BYTES")
                continue
            try:
                with archive.open(member) as handle:
                    data = handle.read(limit + 1)
            except Exception as exc:
                report.skip(str(name), f"unreadable archive member: {str(exc) or type(exc).__name__}")
                continue
            if len(data) > limit:
                report.skip(str(name), "member inflates past CBIR_MAX_UPLOAD_BYTES (zip bomb?)")
                continue
            label = name.parent.name if labels_from_dirs else ""
            yield IncomingFile(name=str(name), data=data, label=label)


def import_path_check(path: Path) -> None:
    """Raise FileNotFoundError, with a reason a person can read, unless ``path`` is a folder or a
    regular file (a .zip or an image): a device, a FIFO or a socket may never end when read."""
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if not (path.is_dir() or path.is_file()):
        raise FileNotFoundError(f"not a folder, a .zip archive or a regular file: {path}")


def collection_import(
    *, collection: Collection, path: Path, labels_from_dirs: bool = False
) -> ImportReport:
    """Import a folder tree or a .zip file into ``collection``."""
    report = ImportReport()
    path = Path(path)
    import_path_check(path)
    if path.is_dir():
        files = iter_folder(path, labels_from_dirs=labels_from_dirs, report=report)
    elif path.is_file() and zipfile.is_zipfile(path):
        files = iter_zip(path, labels_from_dirs=labels_from_dirs, report=report)
    else:
        data = _read_file(path, name=path.name, report=report)
        label = path.parent.name if labels_from_dirs else ""
        files = [] if data is None else [IncomingFile(name=path.name, data=data, label=label)]
    report.merge(images_create(collection=collection, files=files))
    return report
