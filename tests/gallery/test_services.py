import io
import json
import os
import threading
import time
from datetime import timedelta
import stat
import zipfile

import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.urls import reverse

from gallery.models import Collection, Image
from search.models import Embedding, EncoderVersion
from gallery import services
from gallery.services import (
    IncomingFile,
    collection_delete,
    collection_get_or_create,
    collection_import,
    images_create,
    images_delete,
    images_record_thumbnails,
    media_orphans_delete,
)
from tests.conftest import wait_for
from tests.utils import image_bytes, models_as_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def collection():
    return collection_get_or_create(name="things")


def test_batch_with_bad_files_keeps_going_and_records_reasons(collection):
    good = image_bytes(pattern=1)
    truncated = image_bytes(size=(200, 200), fmt="JPEG", pattern=2)[:300]
    report = images_create(
        collection=collection,
        files=[
            IncomingFile(name="ok.png", data=good, label="red"),
            IncomingFile(name="empty.png", data=b""),
            IncomingFile(name="notes.png", data=b"not an image at all"),
            IncomingFile(name="cut.jpg", data=truncated),
            IncomingFile(name="also-ok.png", data=image_bytes(pattern=3)),
        ],
    )
    rows = {image.original_name: image for image in Image.objects.filter(collection=collection)}
    assert len(report.created) == 5
    assert rows["ok.png"].status == Image.Status.PENDING and rows["ok.png"].label == "red"
    assert rows["also-ok.png"].status == Image.Status.PENDING
    assert rows["empty.png"].status == Image.Status.FAILED and "empty file" in rows["empty.png"].error
    assert rows["notes.png"].status == Image.Status.FAILED and "not an image" in rows["notes.png"].error
    assert rows["ok.png"].file.read() == good
    assert rows["ok.png"].sha256 and (rows["ok.png"].width, rows["ok.png"].height) == (64, 48)
    assert not rows["empty.png"].file
    assert {name for name, _ in report.failed} >= {"empty.png", "notes.png"}


def test_thumbnails_are_recorded_per_row_with_the_size_decoded(collection):
    """The decoder's size replaces the header's: it has seen the whole file (an orientation after
    a PNG's pixels turns the picture a quarter)."""
    from_header, without, untouched = (
        Image.objects.create(collection=collection, original_name=name, sha256=name, width=width, height=height)
        for name, width, height in (("from_header", 60, 40), ("without", None, None), ("untouched", None, None))
    )
    from_header.thumbnail.name, from_header.width, from_header.height = "thumbnails/a.webp", 40, 60
    without.thumbnail.name, without.width, without.height = "thumbnails/b.webp", 1024, 768
    assert images_record_thumbnails(images=[from_header, without]) == {from_header.id, without.id}
    rows = {image.original_name: image for image in Image.objects.filter(collection=collection)}
    assert (rows["from_header"].thumbnail.name, rows["from_header"].width, rows["from_header"].height) == ("thumbnails/a.webp", 40, 60)
    assert (rows["without"].thumbnail.name, rows["without"].width, rows["without"].height) == ("thumbnails/b.webp", 1024, 768)
    assert not rows["untouched"].thumbnail and rows["untouched"].width is None
    assert images_record_thumbnails(images=[]) == set()


def test_oversized_file_fails_without_being_stored(collection, settings):
    settings.CBIR_MAX_UPLOAD_BYTES = 100
    images_create(collection=collection, files=[IncomingFile(name="big.png", data=image_bytes(pattern=4))])
    image = Image.objects.get()
    assert image.status == Image.Status.FAILED and "file too large" in image.error and not image.file


def test_stored_name_never_comes_from_the_user(collection):
    images_create(
        collection=collection, files=[IncomingFile(name="../../etc/pass wd;rm -rf $HOME\u00e9.png", data=image_bytes())]
    )
    image = Image.objects.get()
    assert image.original_name == "../../etc/pass wd;rm -rf $HOME\u00e9.png"
    assert image.file.name.startswith(f"images/{collection.pk}/") and ".." not in image.file.name
    assert image.file.name.endswith(".png")


def test_folder_import_with_labels_from_dirs(collection, tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs" / "small").mkdir(parents=True)
    (tmp_path / "cats" / "a.png").write_bytes(image_bytes(pattern=1))
    (tmp_path / "dogs" / "small" / "b.jpg").write_bytes(image_bytes(fmt="JPEG", pattern=2))
    (tmp_path / "root.png").write_bytes(image_bytes(pattern=3))
    (tmp_path / "dogs" / "IMG_0001.HEIC").write_bytes(image_bytes(fmt="HEIF", pattern=4))  # an iPhone's photo
    (tmp_path / "README.txt").write_text("not a picture")
    (tmp_path / ".hidden.png").write_bytes(image_bytes())
    (tmp_path / "link.png").symlink_to(tmp_path / "root.png")
    report = collection_import(collection=collection, path=tmp_path, labels_from_dirs=True)
    labels = dict(Image.objects.values_list("original_name", "label"))
    assert labels == {"cats/a.png": "cats", "dogs/small/b.jpg": "small", "root.png": "", "dogs/IMG_0001.HEIC": "dogs"}
    assert Image.objects.get(original_name="dogs/IMG_0001.HEIC").status == Image.Status.PENDING
    assert ("README.txt", "not an image file extension") in report.skipped
    assert ("link.png", "symbolic link not followed") in report.skipped


def _zip(entries) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data, *mode in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode:
                info.external_attr = mode[0] << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def test_hostile_zip_is_read_safely(collection, tmp_path, settings):
    settings.CBIR_MAX_UPLOAD_BYTES = 1_000_000
    archive = tmp_path / "upload.zip"
    archive.write_bytes(
        _zip(
            [
                ("birds/ok.png", image_bytes(pattern=1)),
                ("../../escape/evil.png", image_bytes(pattern=2)),
                ("links/link.png", "/etc/passwd", stat.S_IFLNK | 0o777),
                ("inner/nested.zip", _zip([("x.png", image_bytes())])),
                ("bomb/zeros.png", b"\x00" * 5_000_000),  # deflates to a few KB
                ("weird/na\u00efve name (1).png", image_bytes(pattern=3)),
                ("__MACOSX/birds/._ok.png", b"resource fork"),
            ]
        )
    )
    report = collection_import(collection=collection, path=archive, labels_from_dirs=True)
    labels = dict(Image.objects.values_list("original_name", "label"))
    assert labels == {"birds/ok.png": "birds", "weird/na\u00efve name (1).png": "weird"}
    reasons = dict(report.skipped)
    assert reasons["../../escape/evil.png"] == "unsafe path in archive (absolute or '..') refused"
    assert reasons["links/link.png"] == "symbolic link inside archive not followed"
    assert reasons["inner/nested.zip"] == "nested archive not expanded"
    assert "CBIR_MAX_UPLOAD_BYTES" in reasons["bomb/zeros.png"]
    assert not (tmp_path.parent / "escape").exists()



def _damaged(archive: bytes, member: str, offset: int, value: int) -> bytes:
    """``archive`` with the byte at ``offset`` into ``member``'s compressed data set to ``value``."""
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(member)
    local = archive[info.header_offset : info.header_offset + 30]
    start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    data = bytearray(archive)
    data[start + offset] = value
    return bytes(data)


def test_damaged_zip_members_are_skipped_with_a_reason_and_the_rest_is_imported(collection, tmp_path):
    """Found by fuzzing: a broken deflate or LZMA stream raised zlib.error or LZMAError out of the
    import instead of skipping the member."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ok.png", image_bytes(pattern=1), compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("deflate.png", image_bytes(pattern=2), compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("lzma.png", image_bytes(pattern=3), compress_type=zipfile.ZIP_LZMA)
    damaged = _damaged(buffer.getvalue(), "deflate.png", 0, 0x07)  # a final block of the reserved type
    damaged = _damaged(damaged, "lzma.png", 12, 0xFF)
    upload = tmp_path / "damaged.zip"
    upload.write_bytes(damaged)

    report = collection_import(collection=collection, path=upload)
    assert list(Image.objects.values_list("original_name", flat=True)) == ["ok.png"]
    reasons = dict(report.skipped)
    assert set(reasons) == {"deflate.png", "lzma.png"}
    assert all(reason.startswith("unreadable archive member: ") for reason in reasons.values())



def test_a_member_error_without_a_message_is_named_by_its_type(collection, tmp_path, monkeypatch):
    """Some readers raise bare exceptions (``EOFError()``); the reason then names the type rather
    than ending in an empty string."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cut.png", image_bytes(pattern=1))
    upload = tmp_path / "cut.zip"
    upload.write_bytes(buffer.getvalue())

    def bare_eof(*args, **kwargs):
        raise EOFError()

    monkeypatch.setattr(zipfile.ZipExtFile, "read", bare_eof)
    report = collection_import(collection=collection, path=upload)
    assert dict(report.skipped) == {"cut.png": "unreadable archive member: EOFError"}

def test_a_zip_the_reader_cannot_take_is_refused_with_a_reason(collection, tmp_path):
    """Found by fuzzing: an archive naming a zip version past what Python reads raised
    NotImplementedError out of the import."""
    archive = bytearray(_zip([("a.png", image_bytes(pattern=1))]))
    entry = archive.find(b"PK\x01\x02")
    archive[entry + 6] = 0xFF  # "version needed to extract": 25.5
    upload = tmp_path / "broken.zip"
    upload.write_bytes(bytes(archive))

    report = collection_import(collection=collection, path=upload)
    assert not Image.objects.exists()
    [(name, reason)] = report.skipped
    assert name.endswith("broken.zip") and reason.startswith("not a readable zip archive: ")

def test_same_file_twice_in_one_upload_is_stored_once(collection):
    data = image_bytes(pattern=9)
    report = images_create(
        collection=collection, files=[IncomingFile(name="a.png", data=data), IncomingFile(name="b.png", data=data)]
    )
    original = Image.objects.get()
    assert original.original_name == "a.png"
    assert report.duplicates == [("b.png", original.pk)]
    assert [r["status"] for r in report.results] == ["pending", "duplicate"]


def test_duplicates_across_chunks_keep_the_first_copy_in_order(collection, monkeypatch):
    # Files are hashed, checked and stored by several threads per chunk; what is kept and what is a
    # duplicate of what must still follow the order of the files, across chunk boundaries too.
    from gallery import services

    monkeypatch.setattr(services, "ENQUEUE_CHUNK_SIZE", 3)
    a, b, c = (image_bytes(pattern=p) for p in (21, 22, 23))
    names_and_data = [("a1", a), ("b1", b), ("a2", a), ("bad1", b"junk"), ("c1", c), ("bad2", b"junk"), ("b2", b), ("a3", a)]
    report = images_create(collection=collection, files=[IncomingFile(name=n, data=d) for n, d in names_and_data])

    kept = {image.original_name: image.pk for image in Image.objects.exclude(status=Image.Status.FAILED)}
    assert sorted(kept) == ["a1", "b1", "c1"]
    assert report.duplicates == [("a2", kept["a1"]), ("b2", kept["b1"]), ("a3", kept["a1"])]
    # A bad file is reported failed each time it comes, recorded by one row (in the next chunk here).
    refused = Image.objects.get(status=Image.Status.FAILED)
    assert refused.original_name == "bad1" and report.refused_again == [("bad2", refused.pk)]
    assert [name for name, _ in report.failed] == ["bad1", "bad2"] and report.queued == 3
    assert [r["name"] for r in report.results] == [n for n, _ in names_and_data]
    assert len({Image.objects.get(pk=pk).file.name for pk in kept.values()}) == 3


def test_importing_a_folder_again_adds_no_second_row_for_its_refused_files(collection, settings, tmp_path):
    """Each refused file is reported failed again, with the id of the row that recorded its
    refusal; the collection's failed count stays the number of bad files. Refused for another
    reason (the limits changed), or accepted now, a file is checked and recorded anew."""
    folder = tmp_path / "photos"  # beside the test's media folder, not above it
    folder.mkdir()
    (folder / "good.png").write_bytes(image_bytes(pattern=1))
    (folder / "notes.png").write_bytes(b"not a picture at all")
    (folder / "empty.png").write_bytes(b"")
    (folder / "big.png").write_bytes(image_bytes(size=(300, 300), pattern=2))
    settings.CBIR_MAX_UPLOAD_BYTES = (folder / "big.png").stat().st_size - 1
    first = collection_import(collection=collection, path=folder)
    assert (first.queued, len(first.failed), first.refused_again) == (1, 2, []) and len(first.skipped) == 1
    assert sorted(name for name, _ in first.skipped) == ["big.png"]  # too large to read from the folder
    images_create(collection=collection, files=[IncomingFile(name="big.png", data=(folder / "big.png").read_bytes())])
    rows = {image.original_name: image.pk for image in Image.objects.filter(status=Image.Status.FAILED)}
    assert sorted(rows) == ["big.png", "empty.png", "notes.png"]

    again = collection_import(collection=collection, path=folder)
    assert (again.queued, len(again.duplicates)) == (0, 1)
    assert sorted(again.refused_again) == [("empty.png", rows["empty.png"]), ("notes.png", rows["notes.png"])]
    results = {entry["name"]: entry for entry in again.results}
    assert results["notes.png"]["status"] == "failed" and results["notes.png"]["id"] == rows["notes.png"]
    assert "not an image" in results["notes.png"]["error"]
    assert Image.objects.filter(status=Image.Status.FAILED).count() == 3

    settings.CBIR_MAX_UPLOAD_BYTES = 50 << 20  # raised: the large file is taken now
    taken = images_create(collection=collection, files=[IncomingFile(name="big.png", data=(folder / "big.png").read_bytes())])
    assert taken.queued == 1 and taken.refused_again == []
    settings.CBIR_MAX_UPLOAD_BYTES = 10  # lowered: refused for another reason, so recorded anew
    other_reason = images_create(collection=collection, files=[IncomingFile(name="notes.png", data=b"not a picture at all")])
    assert other_reason.refused_again == [] and len(other_reason.created) == 1 and "file too large" in other_reason.failed[0][1]


def test_duplicates_are_per_collection_and_ignore_failed_rows(collection):
    data = image_bytes(pattern=10)
    images_create(collection=collection, files=[IncomingFile(name="first.png", data=data)])
    again = images_create(collection=collection, files=[IncomingFile(name="again.png", data=data)])
    assert again.duplicates == [("again.png", Image.objects.get(original_name="first.png").pk)]

    other = collection_get_or_create(name="other")
    assert images_create(collection=other, files=[IncomingFile(name="x.png", data=data)]).duplicates == []

    # A worker failed on it (a crash, memory running out): the same bytes again are a retry of that image.
    first = Image.objects.get(original_name="first.png")
    Image.objects.filter(pk=first.pk).update(status=Image.Status.FAILED, error="the worker ran out of memory", attempts=3)
    retry = images_create(collection=collection, files=[IncomingFile(name="retry.png", data=data), IncomingFile(name="copy.png", data=data)])
    assert retry.duplicates == [("copy.png", first.pk)] and retry.created == [] and retry.retried == [("retry.png", first.pk)]
    assert retry.queued == 1 and retry.results[0] == {"name": "retry.png", "id": first.pk, "status": "pending", "error": ""}
    first.refresh_from_db()
    assert (first.status, first.error, first.attempts, first.original_name) == (Image.Status.PENDING, "", 0, "first.png")
    assert Image.objects.filter(collection=collection).count() == 1 and first.queued_at is not None


def test_import_images_command_creates_collection(tmp_path, capsys):
    (tmp_path / "red").mkdir()
    (tmp_path / "red" / "one.png").write_bytes(image_bytes(pattern=1))
    (tmp_path / "red" / "two.gif").write_bytes(image_bytes(fmt="GIF", pattern=2))
    call_command("import_images", str(tmp_path), "--collection", "fresh", "--labels-from-dirs")
    assert "2 queued for indexing, 0 failed, 0 duplicates, 0 skipped" in capsys.readouterr().out
    collection = Collection.objects.get(name="fresh")
    assert sorted(collection.images.values_list("label", flat=True)) == ["red", "red"]


def test_an_import_goes_on_past_files_it_cannot_read(tmp_path, monkeypatch, capsys):
    """A file that cannot be read (no permission, an I/O error of a disk or network share) is
    reported as skipped with the reason; it used to stop the import with a traceback."""
    from pathlib import Path

    for index, name in enumerate(("a.png", "b.png", "c.png")):
        (tmp_path / name).write_bytes(image_bytes(pattern=index))
    real_read = Path.read_bytes

    def read_bytes(path):  # the tests run as root, whom no permission stops
        if path.name == "b.png":
            raise PermissionError(13, "Permission denied")
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    call_command("import_images", str(tmp_path), "--collection", "partly-readable")
    out = capsys.readouterr().out
    assert "2 queued for indexing, 0 failed, 0 duplicates, 1 skipped" in out and "b.png: unreadable file: Permission denied" in out
    assert sorted(Image.objects.values_list("original_name", flat=True)) == ["a.png", "c.png"]


@pytest.mark.parametrize(
    "path, collection, message",
    [
        ("/dev/null", "devices", "not a folder, a .zip archive or a regular file: /dev/null"),
        (None, "  ", "a collection needs a name"),
        (None, "c" * 201, "a collection's name has at most 200 characters"),
        (None, "a\x01b", "a name cannot hold control characters"),
        (None, "two\nlines", "a name cannot hold control characters"),
        (None, "caf\udce9", "a name cannot hold .* bytes that are not UTF-8"),  # a Latin-1 argument in a UTF-8 shell
    ],
    ids=["a-device", "a-blank-name", "a-name-too-long", "a-control-character", "a-line-break", "not-utf-8"],
)
def test_import_images_refuses_what_it_cannot_take_with_a_command_error(tmp_path, path, collection, message):
    """Each was a traceback (FileNotFoundError, ValueError, the database's DataError)."""
    (tmp_path / "a.png").write_bytes(image_bytes(pattern=1))
    with pytest.raises(CommandError, match=message):
        call_command("import_images", path or str(tmp_path), "--collection", collection)
    assert not Collection.objects.exists() and not Image.objects.exists()


def test_the_admin_refuses_a_collection_name_with_control_characters_and_keeps_emoji_sequences(admin_client):
    from django.urls import reverse

    add = reverse("admin:gallery_collection_add")
    page = admin_client.post(add, {"name": "bell\x07", "description": ""})
    assert page.status_code == 200 and "a name cannot hold control characters" in page.content.decode()
    family = "family \U0001F468\u200D\U0001F469\u200D\U0001F467"  # joined by zero-width joiners (format characters)
    assert admin_client.post(add, {"name": family, "description": ""}).status_code == 302
    assert list(Collection.objects.values_list("name", flat=True)) == [family]


def test_a_single_file_larger_than_the_upload_limit_is_skipped_without_being_read(tmp_path, settings, capsys):
    settings.CBIR_MAX_UPLOAD_BYTES = 1000
    big = tmp_path / "big.png"
    big.write_bytes(image_bytes(size=(300, 300), pattern=3))
    assert big.stat().st_size > 1000
    call_command("import_images", str(big), "--collection", "one-file")
    assert "0 queued for indexing, 0 failed, 0 duplicates, 1 skipped" in capsys.readouterr().out
    assert not Image.objects.exists()


def _stored(collection, count: int) -> list[Image]:
    """``count`` images of ``collection``, each with its original stored, a thumbnail and a vector."""
    images_create(collection=collection, files=[IncomingFile(name=f"{i}.png", data=image_bytes(pattern=i)) for i in range(count)])
    encoder = EncoderVersion.objects.get_or_create(name="deletion", arch="patch_kmeans", dim=256)[0]
    images = list(Image.objects.filter(collection=collection).order_by("id"))
    for image in images:
        image.thumbnail.save("t.webp", ContentFile(b"thumb"), save=True)
        Embedding.objects.create(image=image, collection=collection, encoder=encoder, vector=[1.0] * 256)
    return images


def _files(images: list[Image]) -> list[str]:
    return [name for image in images for name in (image.file.name, image.thumbnail.name)]


def test_deleting_a_collection_removes_its_images_vectors_and_files_and_nothing_else(
    collection, django_capture_on_commit_callbacks
):
    gone, kept = _stored(collection, 3), _stored(collection_get_or_create(name="others"), 2)
    assert all(default_storage.exists(name) for name in _files(gone + kept))
    with django_capture_on_commit_callbacks(execute=True):
        assert collection_delete(collection=collection) == 3
    assert not Collection.objects.filter(pk=collection.pk).exists()
    assert not any(default_storage.exists(name) for name in _files(gone))
    assert all(default_storage.exists(name) for name in _files(kept))
    assert set(Embedding.objects.values_list("image_id", flat=True)) == {image.id for image in kept}


def test_the_admin_edits_labels_but_neither_adds_images_past_the_service_nor_moves_them(admin_client, collection):
    image = _stored(collection, 1)[0]
    assert admin_client.get(reverse("admin:gallery_image_add")).status_code == 403
    other = collection_get_or_create(name="elsewhere")
    response = admin_client.post(
        reverse("admin:gallery_image_change", args=[image.pk]),
        {"original_name": image.original_name, "label": "relabelled", "collection": other.pk},
    )
    assert response.status_code == 302
    image.refresh_from_db()
    assert (image.label, image.collection_id) == ("relabelled", collection.pk)
    assert Embedding.objects.get(image=image).collection_id == collection.pk


def test_the_admin_refuses_names_and_labels_with_control_characters_as_imports_never_store_them(admin_client, collection):
    """A label typed (or posted) in the admin was stored with its escape sequence, which imports
    write as ``\\x1b`` since names are made safe on the way in."""
    image = _stored(collection, 1)[0]
    change = reverse("admin:gallery_image_change", args=[image.pk])
    page = admin_client.post(change, {"original_name": "two\nlines.png", "label": "red\x1b[31m"})
    assert page.status_code == 200
    assert "a name cannot hold control characters" in page.content.decode()
    assert "a label cannot hold control characters" in page.content.decode()
    assert Image.objects.filter(pk=image.pk, original_name=image.original_name, label=image.label).exists()
    assert admin_client.post(change, {"original_name": image.original_name, "label": "caf\u00e9 \u2764\ufe0f"}).status_code == 302
    assert Image.objects.get(pk=image.pk).label == "caf\u00e9 \u2764\ufe0f"


@pytest.mark.django_db(transaction=True)
def test_an_import_into_a_deleted_collection_stops_with_a_clear_error_and_stores_nothing():
    collection = collection_get_or_create(name="short-lived")
    stale = Collection.objects.get(pk=collection.pk)  # what an import holds while the admin deletes
    collection_delete(collection=collection)
    with pytest.raises(services.CollectionGone, match="'short-lived' was deleted during the import"):
        images_create(collection=stale, files=[IncomingFile(name="a.png", data=image_bytes(pattern=1))])
    assert not Image.objects.exists() and not default_storage.exists(f"images/{stale.pk}")


@pytest.mark.django_db(transaction=True)
def test_deleting_a_collection_waits_for_an_import_chunk_in_flight_and_takes_its_images_too():
    """An import chunk holds the collection's row lock until it commits; the deletion takes the
    same lock first, so it then deletes the chunk's images too instead of failing on them."""
    collection = collection_get_or_create(name="busy")
    outcome = {}

    def delete() -> None:
        try:
            outcome["deleted"] = collection_delete(collection=Collection.objects.get(pk=collection.pk))
        except Exception as exc:  # reported to the test thread
            outcome["error"] = exc
        finally:
            connection.close()

    with transaction.atomic():  # the chunk, as images_create's flush runs it
        Collection.objects.select_for_update().get(pk=collection.pk)
        deleter = threading.Thread(target=delete)
        deleter.start()
        deleter.join(timeout=1.0)
        assert deleter.is_alive()  # waiting for the chunk
        Image.objects.create(collection=collection, original_name="in-flight.png", sha256="f" * 64)
    deleter.join(timeout=30)
    assert outcome == {"deleted": 1}
    assert not Image.objects.exists() and not Collection.objects.exists()


def _rows_with_files(collection, count: int) -> list[Image]:
    """Image rows with an original and a thumbnail in storage, not queued for indexing."""
    images = []
    for i in range(count):
        image = Image(collection=collection, original_name=f"{i}.png", sha256=f"{i:064x}")
        image.file.save(f"{i}.png", ContentFile(image_bytes(pattern=i)), save=False)
        image.thumbnail.save("t.webp", ContentFile(b"thumb"), save=True)
        images.append(image)
    return images


def test_a_large_deletion_leaves_the_files_to_the_workers(collection, celery_worker, monkeypatch):
    """Above FILES_DELETED_INLINE files the deleting call only queues their removal, and a real
    worker removes them: chunks of names for images, a whole collection's folders."""
    monkeypatch.setattr(services, "FILES_DELETED_INLINE", 3)
    unlinked = []  # (thread, names) of every call, also for other tests' leftover tasks
    unlink = services.stored_files_delete

    def recording(names):
        unlinked.append((threading.current_thread().name, list(names)))
        unlink(names)

    monkeypatch.setattr(services, "stored_files_delete", recording)
    images = _rows_with_files(collection, 5)
    first = set(_files(images[:3]))
    assert images_delete(images=Image.objects.filter(pk__in=[image.pk for image in images[:3]])) == 3
    wait_for(lambda: not any(default_storage.exists(name) for name in first), message="the worker to delete 6 files")
    assert sorted(len(names) for _, names in unlinked if first & set(names)) == [3, 3]  # two chunks
    assert Image.objects.count() == 2 and all(default_storage.exists(name) for name in _files(images[3:]))
    assert collection_delete(collection=collection) == 2  # 4 files
    wait_for(lambda: not default_storage.exists(f"images/{collection.pk}"), message="the worker to delete the folder")
    assert not default_storage.exists(f"thumbnails/{collection.pk}") and not Image.objects.exists()
    here = threading.current_thread().name
    by_caller = {name for thread, names in unlinked if thread == here for name in names}
    assert not by_caller & set(_files(images))  # every one of them unlinked by the worker


def test_deleting_images_keeps_the_files_until_the_deletion_commits(collection, django_capture_on_commit_callbacks):
    first, second = _stored(collection, 2)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert images_delete(images=Image.objects.filter(pk=first.pk)) == 1
        assert all(default_storage.exists(name) for name in _files([first]))  # not before the commit
    for callback in callbacks:
        callback()
    assert not any(default_storage.exists(name) for name in _files([first]))
    assert list(Image.objects.all()) == [second] and all(default_storage.exists(name) for name in _files([second]))


def test_the_admin_deletes_through_the_service(admin_client, collection, django_capture_on_commit_callbacks):
    images = _stored(collection, 2)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:gallery_image_changelist"),
            {"action": "delete_selected", "_selected_action": [images[0].pk], "post": "yes"},
        )
    assert response.status_code == 302
    assert not any(default_storage.exists(name) for name in _files(images[:1]))
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:gallery_collection_delete", args=[collection.pk]), {"post": "yes"})
    assert response.status_code == 302 and not Collection.objects.filter(pk=collection.pk).exists()
    assert not any(default_storage.exists(name) for name in _files(images[1:]))


def test_pruning_removes_only_old_files_that_no_row_names(collection):
    images = _stored(collection, 2)
    moved = images[1]
    moved.collection = collection_get_or_create(name="elsewhere")  # its files stay in the old folder
    moved.save()
    orphan = default_storage.save(f"images/{collection.pk}/orphan.png", ContentFile(b"left by a crash"))
    fresh = default_storage.save(f"thumbnails/{collection.pk}/fresh.webp", ContentFile(b"an import in progress"))
    hour_ago = time.time() - 3600
    for name in [orphan, *_files(images)]:
        os.utime(default_storage.path(name), (hour_ago, hour_ago))
    assert media_orphans_delete(older_than=timedelta(minutes=30), dry_run=True) == [orphan]
    assert default_storage.exists(orphan)
    call_command("prune_media", "--older-than", "30")
    assert not default_storage.exists(orphan)
    assert default_storage.exists(fresh) and all(default_storage.exists(name) for name in _files(images))


def test_the_admin_takes_a_folder_picked_in_the_browser_with_labels_from_its_folders(admin_client, collection):
    """The browser sends each file under its base name; the page's script sends the relative
    paths beside them, in order. Hidden files and other extensions are skipped as import_images
    skips them, a .zip inside is expanded, and a path that does not end in its file's name is
    not trusted."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("green/g.png", image_bytes(pattern=5))
    picked = [
        ("shots/red/r.png", image_bytes(pattern=1)),
        ("shots/blue/b.png", image_bytes(pattern=2)),
        ("shots/blue/.DS_Store", b"finder"),
        ("shots/notes.txt", b"text"),
        ("shots/more.zip", archive.getvalue()),
        ("shots/elsewhere/x.png", image_bytes(pattern=3)),
    ]
    files = [SimpleUploadedFile(path.rsplit("/", 1)[1], data) for path, data in picked]
    paths = [path for path, _ in picked]
    paths[-1] = "shots/elsewhere/not-x.png"  # does not match its file: the file goes by its name
    response = admin_client.post(
        reverse("admin:gallery_collection_upload", args=[collection.pk]),
        {"folder": files, "folder_paths": json.dumps(paths), "labels_from_dirs": "on"},
    )
    assert response.status_code == 302
    rows = dict(Image.objects.filter(collection=collection).values_list("original_name", "label"))
    assert rows == {"shots/red/r.png": "red", "shots/blue/b.png": "blue", "green/g.png": "green", "x.png": ""}
    nothing = admin_client.post(reverse("admin:gallery_collection_upload", args=[collection.pk]), {"label": "x"})
    assert nothing.status_code == 200 and "Pick images, .zip archives or a folder." in nothing.content.decode()


@pytest.mark.parametrize("paths", ["not json", "[" * 5000, '{"a": 1}', "[1, null]"], ids=["text", "nested-too-deep", "object", "not-strings"])
def test_folder_paths_that_are_not_a_list_of_paths_leave_the_files_under_their_names(admin_client, collection, paths):
    """The paths come from the page's script, so anything can arrive; deep nesting (found by
    fuzzing) made the JSON parser raise RecursionError, a 500."""
    files = [SimpleUploadedFile("r.png", image_bytes(pattern=1)), SimpleUploadedFile("b.png", image_bytes(pattern=2))]
    response = admin_client.post(
        reverse("admin:gallery_collection_upload", args=[collection.pk]),
        {"folder": files, "folder_paths": paths, "labels_from_dirs": "on"},
    )
    assert response.status_code == 302
    assert dict(Image.objects.filter(collection=collection).values_list("original_name", "label")) == {"r.png": "", "b.png": ""}


def test_an_admin_upload_of_too_many_files_gets_a_page_that_says_why(admin_client, collection, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    files = [SimpleUploadedFile(f"{i}.png", image_bytes(pattern=i)) for i in range(3)]
    response = admin_client.post(reverse("admin:gallery_collection_upload", args=[collection.pk]), {"files": files})
    assert response.status_code == 400
    assert "CBIR_MAX_FILES_PER_UPLOAD" in response.content.decode() and not Image.objects.exists()


def test_the_sweep_removes_old_files_of_collections_that_no_longer_exist(collection, settings):
    """What a deleted collection leaves when its file removal could not be queued: the periodic
    sweep removes the old files of folders named after no collection, and leaves fresh ones (a
    collection whose creation has not committed yet) and every existing collection's files."""
    from workers.tasks import sweep_pending

    kept = _rows_with_files(collection, 2)
    gone = f"images/{collection.pk + 1000}"
    old = default_storage.save(f"{gone}/old.png", ContentFile(b"left by a deletion"))
    fresh = default_storage.save(f"{gone}/fresh.png", ContentFile(b"an import not committed yet"))
    hour_ago = time.time() - 3600
    for name in [old, *_files(kept)]:
        os.utime(default_storage.path(name), (hour_ago, hour_ago))
    settings.CBIR_SWEEP_AFTER_S = 300
    sweep_pending()
    assert not default_storage.exists(old) and default_storage.exists(fresh)
    assert all(default_storage.exists(name) for name in _files(kept))
    os.utime(default_storage.path(fresh), (hour_ago, hour_ago))
    sweep_pending()
    assert not default_storage.exists(gone)  # emptied, then removed


@pytest.mark.django_db(transaction=True)
def test_the_migration_writes_old_names_and_labels_on_one_line():
    """Rows stored before names were made safe on the way in kept their control characters: such a
    collection could not be saved in the admin any more, and pages showed boxes. Rows without
    one are left as they are, and a collection whose escaped name is taken gets a number."""
    call_command("migrate", "gallery", "0006", verbosity=0)
    try:
        then = models_as_of("gallery", "0006_collection_name_one_line")
        OldCollection, OldImage = then.get_model("gallery", "Collection"), then.get_model("gallery", "Image")
        bell = OldCollection.objects.create(name="a\x07b")  # the ORM does not run the name's validator
        OldCollection.objects.create(name="two\nlines")
        OldCollection.objects.create(name="two\\nlines")  # what "two\nlines" becomes, already taken
        plain = OldCollection.objects.create(name="plain")
        OldImage.objects.create(collection=bell, original_name="red\x1b[31m/x.png", label="red\x1b[31m", sha256="1")
        OldImage.objects.create(collection=plain, original_name="café/é\u200d.png", label="café", sha256="2")
    finally:
        call_command("migrate", "gallery", verbosity=0)

    assert set(Collection.objects.values_list("name", flat=True)) == {"a\\x07b", "two\\nlines", "two\\nlines (2)", "plain"}
    assert set(Image.objects.values_list("original_name", "label")) == {
        ("red\\x1b[31m/x.png", "red\\x1b[31m"),
        ("café/é\u200d.png", "café"),  # a joiner is a format character, not a control one: kept
    }
    for collection in Collection.objects.all():
        collection.full_clean()  # each can be saved in the admin again


@pytest.mark.django_db(transaction=True)
def test_the_migration_writes_old_encoder_names_on_one_line():
    """``train_encoder --name`` stored control characters as they came, until its names were
    checked as collection names are: such a version could not be saved in the admin any more."""
    call_command("migrate", "search", "0002", verbosity=0)
    try:
        OldEncoderVersion = models_as_of("search", "0002_ingestion_progress").get_model("search", "EncoderVersion")
        escape = OldEncoderVersion.objects.create(name="red\x1b[31m", arch="patch_kmeans", dim=16)
        plain = OldEncoderVersion.objects.create(name="café on demo", arch="patch_kmeans", dim=16)
    finally:
        call_command("migrate", "search", verbosity=0)

    assert dict(EncoderVersion.objects.values_list("pk", "name")) == {escape.pk: "red\\x1b[31m", plain.pk: "café on demo"}
    for encoder in EncoderVersion.objects.all():
        encoder.clean_fields(exclude=["config"])  # its name can be saved in the admin again


def test_names_from_hostile_folders_are_stored_and_printed_on_one_line(collection, tmp_path):
    """Control characters (a terminal's escape sequences, line breaks) and bytes that are not UTF-8
    in file and folder names: every file is imported, and its name and label hold neither."""
    root = tmp_path / "upload"
    escape = root / "red\x1b[31m label"
    escape.mkdir(parents=True)
    (escape / "two\nlines.png").write_bytes(image_bytes(pattern=1))
    latin = os.fsencode(root) + b"/caf\xe9"  # a folder named in Latin-1, as an old camera or share may
    os.mkdir(latin)
    with open(latin + b"/\xe9t\xe9.png", "wb") as handle:
        handle.write(image_bytes(pattern=2))
    (root / "not-an-image\x07.txt").write_bytes(b"bell")

    report = collection_import(collection=collection, path=root, labels_from_dirs=True)

    assert len(report.created) == 2 and not report.failed
    stored = dict(Image.objects.values_list("original_name", "label"))
    assert stored == {
        "red\\x1b[31m label/two\\nlines.png": "red\\x1b[31m label",
        "caf\u00e9/\u00e9t\u00e9.png": "caf\u00e9",  # read as Latin-1, the likeliest
    }
    out = io.StringIO()
    call_command("import_images", str(root), "--collection", "things", stdout=out)
    printed = out.getvalue()
    assert "2 duplicates" in printed and "not-an-image\\x07.txt: not an image file extension" in printed
    assert not any(character in printed.replace("\n", "") for character in "\x1b\x07")
