"""Images as a zip archive (a collection, or an admin's selection): their original files, one
folder per label, and a manifest.

The archive is written as it is sent, a file at a time in pieces of ``EXPORT_CHUNK_BYTES``; what
it must remember to the end (the zip's central directory, the manifest) goes to spooled
temporary files. So an export of any size holds one piece of one file in memory, plus the names
already given in the folder being written (``bench/export.py``). Its layout is what
``import_images --labels-from-dirs`` reads back: each labelled image in a folder named after its
label, each unlabelled one at the top, and ``manifest.csv`` (every image, with its id, label,
SHA-256, size, status and why it failed, and where it is in the archive) last. A ranked export (a
page of search results) puts every file at the top instead, numbered in the order given.
"""
from __future__ import annotations

import csv
import logging
import re
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.http import content_disposition_header
from PIL import Image as PILImage

from gallery import imaging
from gallery.media import media_storage_check
from gallery.models import Collection, Image
from gallery.selectors import collection_images, images_in_export_order, images_in_given_order
from gallery.services import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

EXPORT_MANIFEST = "manifest.csv"
# Each piece of a file read from storage and sent on: large enough that a 50 MB original is a
# few dozen writes, small enough that many exports at once hold little memory.
EXPORT_CHUNK_BYTES = 1 << 20
# Images one call of ``/api/images/export/`` names, as many as a move takes.
EXPORT_IMAGES_MAX = 5_000
MANIFEST_FIELDS = ["path", "id", "original_name", "label", "sha256", "width", "height", "status", "error"]
# What a folder or file name cannot hold on one of the systems the archive is opened on: path
# separators (which would make a label two folders, or climb out of one), Windows' reserved
# characters, and control characters (stored names hold none, but a name is checked, not trusted).
_UNSAFE_IN_NAME = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{n}" for n in range(1, 10)), *(f"LPT{n}" for n in range(1, 10))}
_NAME_MAX = 150
# A spreadsheet opening the manifest would run a cell starting with one of these as a formula
# (OWASP, "CSV injection"): such a cell is written after a quote, which the spreadsheet hides.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The zip format's fields: a data descriptor follows each member's data (bit 3) and names are UTF-8
# (bit 11); version 2.0 of the format, 4.5 where a record uses ZIP64; made on Unix (3), so that
# unzip applies the permissions (a regular file, rw-r--r--).
_FLAGS = 0x08 | 0x800
_VERSION_NEEDED, _VERSION_NEEDED_ZIP64 = 20, 45
_MADE_BY = (3 << 8) | 45
_FILE_ATTRIBUTES = 0o100644 << 16
# Past these, a record is written as ZIP64: offsets and sizes as Python's zipfile does (at 2 GiB,
# as some readers take these fields as signed), the count of members at 65,535.
_OFFSET_MAX = (1 << 31) - 1
_COUNT_MAX = 0xFFFF
# A member's size is in its data descriptor's 32 bits; uploads are far smaller (CBIR_MAX_UPLOAD_BYTES).
_MEMBER_MAX_BYTES = 0xFFFFFFFE
# The key space of the advisory locks that count the downloads running (``export_slot_take``).
_SLOT_LOCKS = 0x43424958
_FORMAT_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "AVIF": ".avif",
                    "HEIF": ".heic", "BMP": ".bmp", "TIFF": ".tif", "PPM": ".ppm"}


@dataclass
class ExportReport:
    """What an export wrote: files, their bytes, and the images it could not include."""

    files: int = 0
    bytes: int = 0
    missing: int = 0  # a stored file that media storage no longer holds or cannot read, or too large for a member
    without_file: int = 0  # refused at upload (not an image, too large): never stored
    cut_short: int = 0  # a file whose reading failed midway: in the archive up to there, and the manifest says so


class ZipStream:
    """A zip archive written front to back, as pieces of bytes to send: each member's local
    header, its data, then a data descriptor with its CRC and size (known only once it has been
    read, as in any archive written to a pipe), and at the end the central directory.

    Python's ``zipfile`` keeps a ``ZipInfo`` of every member until it closes (73.42 MB at 100,000
    members, ``bench/export.py --small``: about 730 bytes each); here each member's central directory
    record is written into a spooled temporary file as soon as the member is done (in memory up
    to 4 MB, then on disk), so the archive holds the same memory at any size. Members are stored,
    not compressed: photos and PNGs are compressed already. Offsets, and the directory's size,
    count and offset, past what 32 bits (16 for the count) hold are written as ZIP64."""

    def __init__(self) -> None:
        self.offset = 0
        self.count = 0
        self._directory = tempfile.SpooledTemporaryFile(max_size=4 << 20)

    def __enter__(self) -> "ZipStream":
        return self

    def __exit__(self, *exc_info) -> None:
        self._directory.close()

    def member(self, name: str, *, when, chunks: Iterable[bytes]):
        """Yield the member ``name`` (a path with ``/``), dated ``when``, holding ``chunks``;
        return its size in bytes."""
        encoded = name.encode("utf-8")
        dos_time, dos_date = _dos_date_time(when)
        start = self.offset
        header = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, _VERSION_NEEDED, _FLAGS, 0, dos_time, dos_date, 0, 0, 0, len(encoded), 0
        ) + encoded
        yield header
        crc, size = 0, 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
            yield chunk
        if size > _MEMBER_MAX_BYTES:
            raise ValueError(f"{name}: {size:,} bytes, more than a member of this archive holds")
        descriptor = struct.pack("<IIII", 0x08074B50, crc, size, size)
        yield descriptor
        self.offset += len(header) + size + len(descriptor)
        extra, offset_field = b"", start
        if start > _OFFSET_MAX:
            extra, offset_field = struct.pack("<HHQ", 0x0001, 8, start), 0xFFFFFFFF
        self._directory.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, _MADE_BY, _VERSION_NEEDED_ZIP64 if extra else _VERSION_NEEDED, _FLAGS, 0,
                dos_time, dos_date, crc, size, size, len(encoded), len(extra), 0, 0, 0, _FILE_ATTRIBUTES, offset_field,
            )
            + encoded
            + extra
        )
        self.count += 1
        return size

    def end(self) -> Iterator[bytes]:
        """Yield the central directory and the end records; then the archive is complete."""
        directory_offset, directory_size = self.offset, self._directory.tell()
        self._directory.seek(0)
        while piece := self._directory.read(EXPORT_CHUNK_BYTES):
            yield piece
        self.offset += directory_size
        if self.count > _COUNT_MAX or directory_offset > _OFFSET_MAX or directory_size > _OFFSET_MAX:
            yield struct.pack(
                "<IQHHIIQQQQ", 0x06064B50, 44, _MADE_BY, _VERSION_NEEDED_ZIP64, 0, 0,
                self.count, self.count, directory_size, directory_offset,
            )
            yield struct.pack("<IIQI", 0x07064B50, 0, self.offset, 1)
        yield struct.pack(
            "<IHHHHIIH", 0x06054B50, 0, 0, min(self.count, 0xFFFF), min(self.count, 0xFFFF),
            min(directory_size, 0xFFFFFFFF), min(directory_offset, 0xFFFFFFFF), 0,
        )


def _dos_date_time(when) -> tuple[int, int]:
    year, month, day, hour, minute, second = timezone.localtime(when).timetuple()[:6] if when else (1980, 1, 1, 0, 0, 0)
    if year < 1980:  # the format's dates start in 1980
        year, month, day, hour, minute, second = 1980, 1, 1, 0, 0, 0
    return (hour << 11) | (minute << 5) | (second // 2), ((min(year, 2107) - 1980) << 9) | (month << 5) | day


def safe_name(text: str, *, fallback: str) -> str:
    """``text`` as one folder or file name that every system can create: unsafe characters as
    ``_``, no leading dot (importers and file browsers hide such a file), not ``.`` or ``..``,
    not a Windows device name, at most 150 characters with its extension kept."""
    name = _UNSAFE_IN_NAME.sub("_", text).strip().rstrip(". ")
    if not name or set(name) <= {"."}:
        name = fallback
    if name.startswith("."):
        name = "_" + name
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        name = "_" + name
    if len(name) > _NAME_MAX:
        path = PurePosixPath(name)
        suffix = path.suffix if len(path.suffix) <= 10 else ""
        name = name[: _NAME_MAX - len(suffix)] + suffix
    return name


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name (2)``, ``name (3)``... before its extension: the first that ``taken``
    lacks, compared as a case-insensitive file system would (``IMG.jpg`` and ``img.JPG`` clash)."""
    path = PurePosixPath(name)
    candidate, number = name, 1
    while candidate.casefold() in taken:
        number += 1
        candidate = f"{path.stem} ({number}){path.suffix}"
    taken.add(candidate.casefold())
    return candidate


def _file_name(image: Image, handle) -> str:
    """The image's file name in the archive: its imported name without the folders, with the
    extension of its format added where the name has none an importer would take as an image."""
    # Stored names use / between folders; a backslash is part of a name (or of an escaped control
    # character, ``\n``), and ``safe_name`` makes it ``_``.
    base = PurePosixPath(image.original_name).name
    name = safe_name(base, fallback=f"image-{image.pk}")
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        name = name[: _NAME_MAX - 5] + _format_suffix(handle)
    return name


def _format_suffix(handle) -> str:
    try:
        with PILImage.open(handle, formats=imaging.ACCEPTED_FORMATS) as picture:
            return _FORMAT_SUFFIXES.get(picture.format or "", "")
    except Exception:  # the header alone is read: what it cannot tell leaves the name as it was
        return ""
    finally:
        handle.seek(0)


def _manifest_cell(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def images_export_zip(*, images: QuerySet[Image] | None = None, ranked: Sequence[int] | None = None,
                      report: ExportReport | None = None) -> Iterator[bytes]:
    """The original files of ``images``, or of the images ``ranked`` names, as a zip archive, in
    pieces to send or write as they come.

    ``images`` are read in label then id order: the unlabelled ones at the top of the archive,
    then a folder per label (its name made safe by ``safe_name``; two labels that give the same
    name, or a name a file at the top has, get ``(2)``). ``ranked`` (a page of search results, say)
    are written in its order, all at the top, each name after its place (``01 ``, ``02 ``...), so
    that a file manager lists them as ranked; their labels are in the manifest. A file is named as
    it was imported, without its folders; a second file of the same name in a folder gets
    `` (2)``. The bytes are the stored ones, unchanged. An image without a stored file (refused at
    upload) and one whose file media storage cannot give are not in the archive, and the manifest
    says why; so does it for a file whose reading failed midway, which is in the archive up to
    there. ``report``, when given, is filled in as the archive is written."""
    if (images is None) == (ranked is None):
        raise TypeError("images_export_zip takes either images or ranked")
    report = report if report is not None else ExportReport()
    # Both spooled files are closed (and any part on disk removed) also when the download stops
    # midway: the client gone closes this generator.
    with ZipStream() as archive, tempfile.SpooledTemporaryFile(max_size=4 << 20, mode="w+", newline="", encoding="utf-8") as manifest_file:
        manifest = csv.writer(manifest_file)
        manifest.writerow(MANIFEST_FIELDS)
        top_names: set[str] = {EXPORT_MANIFEST.casefold()}
        folder, folder_label, folder_names = "", None, top_names
        if ranked is not None:
            places = len(str(len(ranked)))
            in_order = ((f"{place:0{places}d} ", image) for place, image in enumerate(images_in_given_order(ids=ranked), 1))
        else:
            in_order = (("", image) for image in images_in_export_order(images=images))
        for prefix, image in in_order:
            if ranked is None and image.label != folder_label:
                folder_label = image.label
                if image.label:
                    folder, folder_names = _unique(safe_name(image.label, fallback="_"), top_names) + "/", set()
                else:
                    folder, folder_names = "", top_names
            path, note = yield from _member_write(archive, image, folder=folder, prefix=prefix, taken=folder_names, report=report)
            manifest.writerow(
                [_manifest_cell(value) for value in (path, image.pk, image.original_name, image.label, image.sha256,
                                                     image.width, image.height, image.status, note or image.error)]
            )
        manifest_file.seek(0)
        yield from archive.member(EXPORT_MANIFEST, when=timezone.now(), chunks=_encoded(manifest_file))
        yield from archive.end()


def _encoded(text_file) -> Iterator[bytes]:
    while text := text_file.read(EXPORT_CHUNK_BYTES):
        yield text.encode("utf-8")


def _file_chunks(handle, failures: list[str]) -> Iterator[bytes]:
    """The file's pieces. A read that fails midway (an I/O error of a disk or a network mount)
    ends them there, with why in ``failures``: the member is closed up to that point, so the
    archive stays whole for every other file, and the manifest says what happened."""
    while True:
        try:
            chunk = handle.read(EXPORT_CHUNK_BYTES)
        except OSError as exc:
            failures.append(exc.strerror or str(exc) or type(exc).__name__)
            return
        if not chunk:
            return
        yield chunk


def _member_write(archive: ZipStream, image: Image, *, folder: str, prefix: str = "", taken: set[str], report: ExportReport):
    """Write one image's file into ``archive`` (in ``folder``, its name after ``prefix``), yielding
    its pieces; return (its path in the archive, or "", and why it is not there, or "")."""
    if not image.file:
        report.without_file += 1
        return "", ""
    try:
        handle = default_storage.open(image.file.name, "rb")
    except OSError as exc:
        report.missing += 1
        return "", f"not exported: media storage cannot give its file ({exc.strerror or type(exc).__name__})"
    with handle:
        if handle.size > _MEMBER_MAX_BYTES:
            report.missing += 1
            return "", f"not exported: {handle.size:,} bytes, more than a zip member holds without ZIP64 sizes"
        path = folder + _unique(prefix + _file_name(image, handle), taken)
        expected, failures = handle.size, []
        size = yield from archive.member(path, when=image.created_at, chunks=_file_chunks(handle, failures))
    report.files += 1
    report.bytes += size
    if failures:
        report.cut_short += 1
        return path, (
            f"cut short: the archive holds its first {size:,} of {expected:,} bytes; media storage failed "
            f"reading the rest ({failures[0]})"
        )
    return path, ""


class ExportsBusy(Exception):
    """Every download slot (``CBIR_MAX_EXPORTS``) is taken."""

    def __init__(self) -> None:
        limit = settings.CBIR_MAX_EXPORTS
        super().__init__(
            f"{limit:,} zip download{'s are' if limit != 1 else ' is'} running already (CBIR_MAX_EXPORTS), the most "
            "at once; try again when one ends. `manage.py export_collection` writes an archive without this limit."
        )


def export_slot_take() -> int:
    """Take one of the ``CBIR_MAX_EXPORTS`` download slots, shared by every web process; return its
    number, or raise ``ExportsBusy`` when all are taken.

    A download holds one of the web's threads for as long as the client takes to receive it
    (minutes for a large collection on a slow link): without a limit, a few at once would leave no
    thread to answer searches. A slot is a PostgreSQL advisory lock held by this thread's database
    session, so a web process that dies gives its slots back with its connections."""
    with connection.cursor() as cursor:
        for slot in range(settings.CBIR_MAX_EXPORTS):
            cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_SLOT_LOCKS, slot])
            if cursor.fetchone()[0]:
                return slot
    raise ExportsBusy()


def export_slot_give(slot: int) -> None:
    """Give back the slot ``export_slot_take`` gave this thread. A session that is gone (the
    database restarted) gave its locks back with it."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_SLOT_LOCKS, slot])
    except DatabaseError as exc:
        logger.warning("export slot %d not given back: %s (its session's end frees it)", slot, exc)


class _SlotHoldingResponse(StreamingHttpResponse):
    """A download that gives its slot back when the server closes it: sent to its end, the client
    gone midway, or never read (HEAD)."""

    def __init__(self, *args, slot: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._slot = slot

    def close(self) -> None:
        try:
            if self._slot is not None:
                slot, self._slot = self._slot, None
                export_slot_give(slot)
        finally:
            super().close()


def images_export_response(images: QuerySet[Image] | None = None, *, ranked: Sequence[int] | None = None, name: str) -> StreamingHttpResponse:
    """``images``, or the images ``ranked`` names in its order (``images_export_zip``), as a zip
    download named ``name`` (made safe) plus ``.zip``, sent as it is written (the API's and the
    admin's). Raises MediaStorageUnavailable where media storage is not mounted on this web server
    (every file would look lost), and ``ExportsBusy`` when no download slot is free; otherwise it
    holds a slot until the server closes it."""
    media_storage_check()
    slot = export_slot_take()
    response = _SlotHoldingResponse(images_export_zip(images=images, ranked=ranked), content_type="application/zip", slot=slot)
    response["Content-Disposition"] = content_disposition_header(True, safe_name(name, fallback="images") + ".zip")
    response["Cache-Control"] = "no-store"
    return response


def collection_export_response(collection: Collection, *, label: str = "", status: str = "") -> StreamingHttpResponse:
    """The collection (its images with ``label`` and ``status`` where given) as a zip download,
    named after the collection, and the label and status asked for (refused as above)."""
    images = collection_images(collection=collection, label=label, status=status)
    return images_export_response(images, name=" - ".join(part for part in (collection.name, label, status) if part))
