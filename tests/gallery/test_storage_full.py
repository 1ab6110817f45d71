"""Media storage that refuses a file mid-import (a full disk), and a database that does not answer:
the import stops with a clear error, what was committed before stays, and no file is left without a row."""
import errno
import os
import threading

import pytest
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from gallery import services
from gallery.models import Image
from gallery.services import IncomingFile, StorageFailed, collection_get_or_create, images_create
from tests.utils import image_bytes, make_encoder
from workers.services import images_index

pytestmark = pytest.mark.django_db

CHUNK = 4  # images per committed chunk here (the product's 64 would need larger uploads)


@pytest.fixture
def disk(monkeypatch):
    """``disk.fills_after(n)``: the file system takes ``n`` more files, then each write stops
    partway with ENOSPC, leaving its cut-short file behind, as a full disk does. ``disk.freed()``
    ends that. Django's own file storage is what is wrapped; everything of the product runs."""
    monkeypatch.setattr(services, "ENQUEUE_CHUNK_SIZE", CHUNK)
    real_save = FileSystemStorage._save
    state = {"left": None}
    lock = threading.Lock()

    def save(self, name, content):
        with lock:
            full = state["left"] is not None and state["left"] <= 0
            if state["left"] is not None:
                state["left"] -= 1
        if not full:
            return real_save(self, name, content)
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(content.read()[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(FileSystemStorage, "_save", save)

    class Disk:
        def fills_after(self, files: int) -> None:
            state["left"] = files

        def freed(self) -> None:
            state["left"] = None

    return Disk()


def _files(media_root, top: str) -> set[str]:
    folder = media_root / top
    return {str(path.relative_to(media_root)) for path in folder.rglob("*") if path.is_file()} if folder.exists() else set()


def _pictures(count: int) -> list[IncomingFile]:
    return [IncomingFile(name=f"p{i}.png", data=image_bytes(color=(i * 20 % 256, 90, 140), pattern=i)) for i in range(count)]


def test_a_full_disk_stops_the_import_and_keeps_what_was_committed(disk, media_root):
    collection = collection_get_or_create(name="full")
    disk.fills_after(CHUNK + 2)  # the first chunk fits, the second does not
    with pytest.raises(StorageFailed) as stopped:
        images_create(collection=collection, files=_pictures(3 * CHUNK))
    assert "No space left on device" in str(stopped.value) and f"Kept before it: {CHUNK} queued" in str(stopped.value)
    kept = list(Image.objects.filter(collection=collection))
    assert len(kept) == len(stopped.value.report.created) == CHUNK
    # every file in storage belongs to a row: the second chunk's files and the cut-short one are gone
    assert _files(media_root, "images") == {image.file.name for image in kept}
    disk.freed()
    report = images_create(collection=collection, files=_pictures(3 * CHUNK))  # the same upload again
    assert len(report.duplicates) == CHUNK and len(report.created) == 2 * CHUNK
    assert _files(media_root, "images") == set(Image.objects.values_list("file", flat=True))


def test_the_api_and_the_command_say_why_the_import_stopped(disk, client, tmp_path, media_root):
    collection = collection_get_or_create(name="full")
    disk.fills_after(CHUNK)
    answer = client.post(
        reverse("api-image-upload"),
        {"collection": "full", "files": [SimpleUploadedFile(picture.name, picture.data) for picture in _pictures(2 * CHUNK)]},
    )
    assert answer.status_code == 503
    assert "No space left on device" in answer.json()["error"]
    assert [result["status"] for result in answer.json()["results"]] == ["pending"] * CHUNK

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2 * CHUNK):  # pictures not uploaded before, so none is a duplicate
        (folder / f"new{i}.png").write_bytes(image_bytes(color=(i, 200, 10), pattern=100 + i))
    disk.fills_after(0)
    with pytest.raises(CommandError, match="media storage refused a file .No space left on device."):
        call_command("import_images", str(folder), "--collection", "full")
    assert Image.objects.filter(collection=collection).count() == CHUNK
    assert _files(media_root, "images") == set(Image.objects.values_list("file", flat=True))


def test_a_full_disk_while_thumbnailing_leaves_the_images_pending_and_no_files(disk, media_root):
    make_encoder()
    collection = collection_get_or_create(name="full")
    images_create(collection=collection, files=_pictures(CHUNK))
    ids = list(Image.objects.values_list("id", flat=True))
    disk.fills_after(1)  # one thumbnail fits, then the disk is full
    with pytest.raises(OSError):
        images_index(image_ids=ids)
    assert set(Image.objects.values_list("status", flat=True)) == {Image.Status.PENDING}  # the sweep retries them
    assert _files(media_root, "thumbnails") == set()
    disk.freed()
    images_index(image_ids=ids)
    assert set(Image.objects.values_list("status", flat=True)) == {Image.Status.INDEXED}
    assert _files(media_root, "thumbnails") == set(Image.objects.values_list("thumbnail", flat=True))


@pytest.mark.django_db(transaction=True)
def test_the_command_says_so_when_the_database_does_not_answer(tmp_path, database_down):
    (tmp_path / "red.png").write_bytes(image_bytes())
    with pytest.raises(CommandError, match="the database does not answer .*127.0.0.1.*images committed before stay"):
        call_command("import_images", str(tmp_path), "--collection", "anywhere")


def test_media_storage_that_cannot_be_marked_stops_the_import_before_it_stores_anything(settings, tmp_path):
    """Marking the volume (gallery.media) is the import's first write: where it fails, the import
    says why, as for a full disk, and no row is made."""
    (tmp_path / "a file").write_bytes(b"")
    settings.MEDIA_ROOT = tmp_path / "a file" / "media"
    with pytest.raises(StorageFailed, match=r"media storage refused a file \(.*Not a directory"):
        images_create(collection=collection_get_or_create(name="unmarked"), files=[IncomingFile(name="a.png", data=image_bytes(pattern=0))])
    assert not Image.objects.exists()
