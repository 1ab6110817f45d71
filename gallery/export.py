"""A collection as a zip archive: its original files, one folder per label, and a manifest.

The archive is written as it is sent, a file at a time in pieces of ``EXPORT_CHUNK_BYTES``, so
exporting a collection of any size holds one piece of one file in memory, plus the names already
given in the folder being written (``bench/export.py``). Its layout is what ``import_images
--labels-from-dirs`` reads back: each labelled image in a folder named after its label, each
unlabelled one at the top, and ``manifest.csv`` (every image, with its id, label, SHA-256, size,
status and why it failed, and where it is in the archive) last.
"""
from __future__ import annotations

import csv
import re
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from django.core.files.storage import default_storage
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.http import content_disposition_header
from PIL import Image as PILImage

from gallery import imaging
from gallery.models import Collection, Image
from gallery.selectors import collection_export_images
from gallery.services import IMAGE_SUFFIXES

EXPORT_MANIFEST = "manifest.csv"
# Each piece of a file read from storage and sent on: large enough that a 50 MB original is a
# few dozen writes, small enough that many exports at once hold little memory.
EXPORT_CHUNK_BYTES = 1 << 20
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
_FORMAT_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "AVIF": ".avif",
                    "HEIF": ".heic", "BMP": ".bmp", "TIFF": ".tif", "PPM": ".ppm"}


@dataclass
class ExportReport:
    """What an export wrote: files, their bytes, and the images it could not include."""

    files: int = 0
    bytes: int = 0
    missing: int = 0  # a stored file that media storage no longer holds or cannot read
    without_file: int = 0  # refused at upload (not an image, too large): never stored


class _Pieces:
    """A write-only file that zipfile writes the archive into, and the export empties as it sends.

    It has no ``tell``, so zipfile counts the offsets itself and writes each member's sizes and
    CRC after its data (a data descriptor), as any archive written to a pipe."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []

    def write(self, data) -> int:
        self._pieces.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._pieces)
        self._pieces.clear()
        return data


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
    base = PurePosixPath(image.original_name.replace("\\", "/")).name
    name = safe_name(base, fallback=f"image-{image.pk}")
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        name = PurePosixPath(name[: _NAME_MAX - 5]).name + _format_suffix(handle)
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


def _member_info(path: str, *, when, size: int) -> zipfile.ZipInfo:
    """A member stored as it is (photos and PNGs are compressed already), dated ``when``."""
    date_time = timezone.localtime(when).timetuple()[:6] if when else (1980, 1, 1, 0, 0, 0)
    info = zipfile.ZipInfo(path, date_time=max(date_time, (1980, 1, 1, 0, 0, 0)))  # zip dates start in 1980
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    info.file_size = size  # decides whether the member needs ZIP64 sizes
    return info


def collection_export_zip(*, collection: Collection, report: ExportReport | None = None) -> Iterator[bytes]:
    """The collection's originals as a zip archive, in pieces to send or write as they come.

    Images are read in label then id order: the unlabelled ones at the top of the archive, then
    a folder per label (its name made safe by ``safe_name``; two labels that give the same name,
    or a name a file at the top has, get ``(2)``). A file is named as it was imported, without
    its folders; a second file of the same name in a folder gets `` (2)``. The bytes are the
    stored ones, unchanged. An image without a stored file (refused at upload) and one whose file
    media storage cannot give are not in the archive, and the manifest says why. ``report``, when
    given, is filled in as the archive is written."""
    report = report if report is not None else ExportReport()
    pieces = _Pieces()
    with tempfile.SpooledTemporaryFile(max_size=8 << 20, mode="w+", newline="", encoding="utf-8") as manifest_file:
        manifest = csv.writer(manifest_file)
        manifest.writerow(MANIFEST_FIELDS)
        with zipfile.ZipFile(pieces, mode="w", allowZip64=True) as archive:
            top_names: set[str] = {EXPORT_MANIFEST.casefold()}
            folder, folder_label, folder_names = "", None, top_names
            for image in collection_export_images(collection=collection):
                if image.label != folder_label:
                    folder_label = image.label
                    if image.label:
                        folder, folder_names = _unique(safe_name(image.label, fallback="_"), top_names) + "/", set()
                    else:
                        folder, folder_names = "", top_names
                path, note = yield from _member_write(archive, pieces, image, folder=folder, taken=folder_names, report=report)
                manifest.writerow(
                    [_manifest_cell(value) for value in (path, image.pk, image.original_name, image.label, image.sha256,
                                                         image.width, image.height, image.status, note or image.error)]
                )
            manifest_file.seek(0)
            # Its size is known only in characters here: ZIP64 sizes whatever it comes to.
            with archive.open(_member_info(EXPORT_MANIFEST, when=timezone.now(), size=0), "w", force_zip64=True) as member:
                while text := manifest_file.read(EXPORT_CHUNK_BYTES):
                    member.write(text.encode("utf-8"))
                    yield pieces.take()
        yield pieces.take()


def _member_write(archive, pieces: _Pieces, image: Image, *, folder: str, taken: set[str], report: ExportReport):
    """Write one image's file into ``archive``, yielding the archive's pieces as they come; return
    (its path in the archive, or "", and why it is not there, or "")."""
    if not image.file:
        report.without_file += 1
        return "", ""
    try:
        handle = default_storage.open(image.file.name, "rb")
    except OSError as exc:
        report.missing += 1
        return "", f"not exported: media storage cannot give its file ({exc.strerror or type(exc).__name__})"
    with handle:
        path = folder + _unique(_file_name(image, handle), taken)
        written = 0
        with archive.open(_member_info(path, when=image.created_at, size=handle.size), "w") as member:
            while chunk := handle.read(EXPORT_CHUNK_BYTES):
                member.write(chunk)
                written += len(chunk)
                yield pieces.take()
    report.files += 1
    report.bytes += written
    return path, ""


def collection_export_response(collection: Collection) -> StreamingHttpResponse:
    """The collection as a zip download (the API's and the admin's), sent as it is written; the
    caller has checked that media storage is there."""
    response = StreamingHttpResponse(collection_export_zip(collection=collection), content_type="application/zip")
    response["Content-Disposition"] = content_disposition_header(True, safe_name(collection.name, fallback="collection") + ".zip")
    response["Cache-Control"] = "no-store"
    return response
