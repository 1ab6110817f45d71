"""Whether this process sees the service's media storage: the volume of originals and thumbnails
that the web, the importer and every worker share (compose.yaml)."""
from __future__ import annotations

import socket
from pathlib import Path

from django.conf import settings

# A file at the top of media storage that says "this is the service's media volume". It is
# written by ``manage.py migrate`` (gallery/apps.py) and by every upload, and the workers look for
# it before indexing: on a worker whose shared media volume is not mounted, every stored file is
# missing, and without it they would all be marked failed instead of waiting for the volume.
MEDIA_MARKER = ".cbir-media"
_MEDIA_MARKER_TEXT = (
    b"This folder is the media storage of the CBIR service (originals and thumbnails). Workers look for this\n"
    b"file before they index: where it is missing, the shared media volume is taken as not mounted.\n"
)


class MediaStorageUnavailable(RuntimeError):
    """Media storage is not mounted here: no image file can be read, so none is failed for it."""


def media_marker_write() -> None:
    """Mark MEDIA_ROOT as the service's media storage (a no-op when it already is)."""
    marker = Path(settings.MEDIA_ROOT) / MEDIA_MARKER
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_bytes(_MEDIA_MARKER_TEXT)


def media_storage_check() -> None:
    """Raise ``MediaStorageUnavailable`` unless MEDIA_ROOT holds the marker."""
    if not (Path(settings.MEDIA_ROOT) / MEDIA_MARKER).exists():
        raise MediaStorageUnavailable(
            f"media storage is not mounted on {socket.gethostname()}: {settings.MEDIA_ROOT} has no "
            f"{MEDIA_MARKER} file. Mount the shared media volume there (CBIR_MEDIA_ROOT); `manage.py migrate` and "
            "every upload write that file"
        )
