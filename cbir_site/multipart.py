"""Multipart parts whose headers are not UTF-8 are read, not dropped.

``curl -F files=@NAME`` sends a file's name as the bytes its file system holds: Latin-1 on an old
share or camera card. Django's multipart parser decodes each part's header lines as UTF-8 and
skips, without a word, a part whose line does not decode (``parse_boundary_stream``). Of an
upload of many files, such a file vanished from the answer while the others were stored.

``install()`` (run once, by ``CbirSiteConfig.ready``) wraps that function: the bytes of a part's
headers, and only those, reach it with each byte that is not UTF-8 read as the Latin-1 character
it likely stands for (``caf\\xe9.png`` is ``café.png``), as ``gallery.models.one_line`` reads such
a byte in a name on disk. The part's data is not touched.
Django is pinned in requirements.txt; ``tests/gallery/test_apis.py`` fails if a new version
moves or renames what is wrapped here.
"""
from __future__ import annotations

import codecs

from django.http import multipartparser

HEADER_END = b"\r\n\r\n"
LATIN_1_FALLBACK = "cbir-latin-1-fallback"


def _latin_1(error: UnicodeDecodeError) -> tuple[str, int]:
    """A decoding error handler: the bytes that are not UTF-8, as Latin-1 characters."""
    return error.object[error.start : error.end].decode("latin-1"), error.end


codecs.register_error(LATIN_1_FALLBACK, _latin_1)


class _HeaderBytesAsUtf8:
    """The part's stream as Django reads its headers: a chunk read that holds their end has the
    bytes before it that are not UTF-8 read as Latin-1. What Django puts back (``unget``) goes to
    the real stream, which reads the data that follows."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def read(self, size=None) -> bytes:
        chunk = self._stream.read(size)
        end = chunk.find(HEADER_END)
        if end == -1:  # Django puts it back and reads more (up to its limit on a part's headers)
            return chunk
        # UTF-8 comes back as it was; only the bytes that are not UTF-8 change
        return chunk[:end].decode("utf-8", LATIN_1_FALLBACK).encode() + chunk[end:]

    def unget(self, data: bytes) -> None:
        self._stream.unget(data)


def install() -> None:
    original = multipartparser.parse_boundary_stream
    if getattr(original, "reads_headers_that_are_not_utf_8", False):
        return

    def parse_boundary_stream(stream, max_header_size):
        kind, headers, _ = original(_HeaderBytesAsUtf8(stream), max_header_size)
        return kind, headers, stream  # the data is read from the real stream, as it is

    parse_boundary_stream.reads_headers_that_are_not_utf_8 = True
    multipartparser.parse_boundary_stream = parse_boundary_stream
