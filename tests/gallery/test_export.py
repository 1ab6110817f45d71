"""A collection exported as a zip (``gallery.export``): through the API, the admin, the gallery
page and ``manage.py export_collection``; the files unchanged, a folder per label, names every
system can create, a manifest of every image, and an archive ``import_images`` reads back."""
import csv
import errno
import io
import os
import re
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.contrib.admin import helpers
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from django.core.signals import request_finished
from django.db import close_old_connections, connection
from django.urls import reverse

from gallery import export
from gallery.export import EXPORT_MANIFEST, ExportReport, images_export_zip, safe_name
from gallery.media import MEDIA_MARKER
from gallery.models import Collection, Image
from gallery.selectors import collection_images
from gallery.services import IncomingFile, images_create
from tests.utils import image_bytes, wsgi_call

pytestmark = pytest.mark.django_db


def _upload(collection: Collection, *files: tuple[str, str, bytes]) -> dict[str, Image]:
    """Store (name, label, bytes) files as an upload does; the images by name."""
    images_create(collection=collection, files=[IncomingFile(name=name, label=label, data=data) for name, label, data in files])
    return {image.original_name: image for image in Image.objects.filter(collection=collection)}


def _read(archive: bytes) -> tuple[dict[str, bytes], list[dict]]:
    """The archive's files by path (the manifest apart) and the manifest's rows."""
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        assert opened.testzip() is None  # every member's CRC checks
        files = {name: opened.read(name) for name in opened.namelist()}
    manifest = list(csv.DictReader(io.StringIO(files.pop(EXPORT_MANIFEST).decode("utf-8"))))
    return files, manifest


def _slots_held_here() -> int:
    """Download slots this test's database session holds."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND pid = pg_backend_pid()",
            [export._SLOT_LOCKS],
        )
        return cursor.fetchone()[0]


@pytest.fixture(autouse=True)
def every_download_gives_its_slot_back():
    """Each response a test reads to its end (or closes) must have given its slot back."""
    yield
    assert _slots_held_here() == 0


def _close_as_the_server_does(response) -> None:
    """Close a response a test called its view for directly. Closing signals the request's end,
    which would close this test's connection inside its transaction; the test client keeps it open
    the same way."""
    request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        request_finished.connect(close_old_connections)


def _in_another_session(work):
    """``work()`` run in another thread, so with a database session of its own, as another web
    thread or process would; its result."""
    result = {}

    def run():
        try:
            result["value"] = work()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return result["value"]


def _slot_free() -> bool:
    """Whether another web thread would get a download slot now (it gives it straight back)."""

    def try_one():
        try:
            export.export_slot_give(export.export_slot_take())
        except export.ExportsBusy:
            return False
        return True

    return _in_another_session(try_one)


@contextmanager
def _every_slot_taken_elsewhere():
    """Other sessions hold every download slot until the block ends, as downloads running in other
    web threads would: one thread, with its own session, for each slot."""
    from django.conf import settings

    done, slots = threading.Event(), []
    taken = [threading.Event() for _ in range(settings.CBIR_MAX_EXPORTS)]

    def hold(taken_here: threading.Event):
        try:
            slot = export.export_slot_take()
            slots.append(slot)
            taken_here.set()
            done.wait(30)
            export.export_slot_give(slot)
        finally:
            taken_here.set()
            connection.close()

    threads = [threading.Thread(target=hold, args=(event,)) for event in taken]
    for thread, event in zip(threads, taken):  # one after another: each takes the next free slot
        thread.start()
        event.wait(30)
    assert sorted(slots) == list(range(settings.CBIR_MAX_EXPORTS))
    try:
        yield
    finally:
        done.set()
        for thread in threads:
            thread.join(30)


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("keeper", password="pw", is_staff=True)


def test_the_archive_holds_each_file_unchanged_in_a_folder_per_label_and_a_manifest_of_every_image(client, staff):
    pets = Collection.objects.create(name="pets")
    data = {name: image_bytes(pattern=n, fmt="JPEG" if name.endswith(".jpg") else "PNG") for n, name in enumerate(("a.png", "b.jpg", "c.png", "d.png"))}
    images = _upload(
        pets,
        ("cats/a.png", "cat", data["a.png"]),
        ("cats/b.jpg", "cat", data["b.jpg"]),
        ("dogs/a.png", "dog", data["c.png"]),  # the same name in another folder
        ("holiday/d.png", "", data["d.png"]),  # unlabelled: at the top, without its folders
        ("notes.png", "cat", b"this is text, not a picture"),  # refused at upload: no file
    )
    client.force_login(staff)

    response = client.get(reverse("api-collection-export", args=[pets.pk]))

    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == 'attachment; filename="pets.zip"'
    files, manifest = _read(b"".join(response.streaming_content))
    assert files == {"d.png": data["d.png"], "cat/a.png": data["a.png"], "cat/b.jpg": data["b.jpg"], "dog/a.png": data["c.png"]}
    rows = {row["original_name"]: row for row in manifest}
    assert [row["path"] for row in manifest] == ["d.png", "cat/a.png", "cat/b.jpg", "", "dog/a.png"]  # label, then id order
    assert {name: row["id"] for name, row in rows.items()} == {name: str(image.pk) for name, image in images.items()}
    assert rows["cats/a.png"]["sha256"] == images["cats/a.png"].sha256 and rows["cats/a.png"]["width"] == "64"
    assert (rows["notes.png"]["status"], rows["notes.png"]["label"]) == ("failed", "cat")
    assert rows["notes.png"]["error"] == images["notes.png"].error != ""


def test_names_are_made_safe_and_unique_for_every_file_system(client, staff):
    odd = Collection.objects.create(name="odd: names?")
    red, green, blue, grey, white, black = (
        image_bytes(color=colour) for colour in ((200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 90), (250, 250, 250), (5, 5, 5))
    )
    _upload(
        odd,
        ("IMG.png", "../../etc", red),  # a label that would climb out of the archive
        ("img.PNG", "../../etc", green),  # the same name to a case-insensitive file system
        ("scan", "", blue),  # no extension: an importer would skip it
        (".hidden.png", "", grey),  # a leading dot: importers and file browsers hide it
        ("formula.png", "=HYPERLINK(\"http://x\")", white),  # a label a spreadsheet would run
        ("line\nbreak.png", "", black),  # stored as line\\nbreak.png: the backslash is no folder
    )
    client.force_login(staff)

    response = client.get(reverse("api-collection-export", args=[odd.pk]))

    assert response["Content-Disposition"] == 'attachment; filename="odd_ names_.zip"'
    files, manifest = _read(b"".join(response.streaming_content))
    assert files == {
        "scan.png": blue,
        "_.hidden.png": grey,
        "_.._.._etc/IMG.png": red,
        "_.._.._etc/img (2).PNG": green,
        "=HYPERLINK(_http___x_)/formula.png": white,
        "line_nbreak.png": black,
    }
    assert {row["original_name"]: row["label"] for row in manifest}["formula.png"] == "'=HYPERLINK(\"http://x\")"


def test_two_labels_that_give_one_folder_name_get_two_folders(client, staff):
    clash = Collection.objects.create(name="clash")
    _upload(clash, ("x.png", "a/b", image_bytes(pattern=1)), ("y.png", "a_b", image_bytes(pattern=2)), ("z.png", "a:b", image_bytes(pattern=3)))
    client.force_login(staff)

    _, manifest = _read(b"".join(client.get(reverse("api-collection-export", args=[clash.pk])).streaming_content))

    # the first label in the database's order takes the name, the next ones a number
    labels_in_order = list(Image.objects.filter(collection=clash).order_by("label").values_list("label", flat=True))
    folders = {row["label"]: row["path"].split("/")[0] for row in manifest}
    assert [folders[label] for label in labels_in_order] == ["a_b", "a_b (2)", "a_b (3)"]


def test_a_file_media_storage_has_lost_is_left_out_and_named_in_the_manifest(staff, tmp_path):
    gaps = Collection.objects.create(name="gaps")
    images = _upload(gaps, ("kept.png", "", image_bytes(pattern=1)), ("lost.png", "", image_bytes(pattern=2)))
    default_storage.delete(images["lost.png"].file.name)
    report = ExportReport()

    files, manifest = _read(b"".join(images_export_zip(images=collection_images(collection=gaps), report=report)))

    assert list(files) == ["kept.png"]
    lost = next(row for row in manifest if row["original_name"] == "lost.png")
    assert lost["path"] == "" and lost["error"].startswith("not exported: media storage cannot give its file")
    assert (report.files, report.missing, report.without_file) == (1, 1, 0)
    with pytest.raises(CommandError, match=r"gaps.zip is incomplete: 1 image\(s\) not exported: media storage could not give") as incomplete:
        call_command("export_collection", str(tmp_path / "gaps.zip"), "--collection", "gaps")
    assert incomplete.value.returncode == 3 and list(_read((tmp_path / "gaps.zip").read_bytes())[0]) == ["kept.png"]


class _FailsAfterOneRead:
    """A stored file whose second read fails, as on a disk or network mount that breaks midway."""

    def __init__(self, file) -> None:
        self._file, self._reads = file, 0

    def read(self, size=-1):
        self._reads += 1
        if self._reads > 1:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return self._file.read(size)

    def __getattr__(self, name):
        return getattr(self._file, name)


def test_a_file_whose_reading_fails_midway_is_cut_short_there_and_the_manifest_says_so(monkeypatch, tmp_path, capsys):
    """The archive stays whole: the other files arrive, and the broken one holds what was read."""
    shaky = Collection.objects.create(name="shaky")
    broken_data, kept_data = image_bytes(size=(120, 90), pattern=1), image_bytes(pattern=2)
    images = _upload(shaky, ("broken.png", "", broken_data), ("kept.png", "", kept_data))
    monkeypatch.setattr(export, "EXPORT_CHUNK_BYTES", 64)
    real_open = default_storage.open

    def open_breaking_midway(name, mode="rb"):
        handle = real_open(name, mode)
        if name == images["broken.png"].file.name:
            handle.file = _FailsAfterOneRead(handle.file)
        return handle

    monkeypatch.setattr(default_storage, "open", open_breaking_midway)
    report = ExportReport()

    files, manifest = _read(b"".join(images_export_zip(images=collection_images(collection=shaky), report=report)))
    with pytest.raises(CommandError) as incomplete:
        call_command("export_collection", str(tmp_path / "shaky.zip"), "--collection", "shaky")

    assert files == {"broken.png": broken_data[:64], "kept.png": kept_data}
    rows = {row["original_name"]: row for row in manifest}
    assert rows["broken.png"]["path"] == "broken.png" and rows["broken.png"]["sha256"] == images["broken.png"].sha256
    assert rows["broken.png"]["error"] == (
        f"cut short: the archive holds its first 64 of {len(broken_data):,} bytes; media storage failed reading the rest "
        "(Input/output error)"
    )
    assert rows["kept.png"]["error"] == ""
    assert (report.files, report.cut_short, report.missing) == (2, 1, 0)
    assert incomplete.value.returncode == 3 and str(incomplete.value) == (
        f"{tmp_path / 'shaky.zip'} is incomplete: 1 file(s) cut short: media storage failed reading them midway, so the "
        "archive holds only their first bytes (manifest.csv names them)"
    )
    assert "shaky.zip: 2 files" in capsys.readouterr().out
    assert _read((tmp_path / "shaky.zip").read_bytes())[0] == files


def test_a_file_is_sent_in_pieces_and_arrives_whole(monkeypatch):
    big = Collection.objects.create(name="big")
    data = image_bytes(size=(300, 200), pattern=3)
    _upload(big, ("big.png", "", data))
    monkeypatch.setattr(export, "EXPORT_CHUNK_BYTES", 1000)

    pieces = list(images_export_zip(images=collection_images(collection=big)))

    assert len(pieces) > len(data) // 1000  # a piece for each thousand bytes read, not the file at once
    assert _read(b"".join(pieces))[0] == {"big.png": data}


def test_the_export_imports_again_with_the_same_files_and_labels(tmp_path, capsys):
    source = Collection.objects.create(name="source")
    _upload(
        source,
        ("cats/a.png", "cat", image_bytes(pattern=1)),
        ("cats/b.png", "cat", image_bytes(pattern=2)),
        ("c.png", "", image_bytes(pattern=3)),
        ("d.png", "dog", image_bytes(pattern=4)),
    )
    archive = tmp_path / "source.zip"

    call_command("export_collection", str(archive), "--collection", "source")
    call_command("import_images", str(archive), "--collection", "copy", "--labels-from-dirs")

    printed = capsys.readouterr().out
    assert f"{archive}: 4 files" in printed
    assert "4 queued for indexing, 0 failed, 0 duplicates, 1 skipped" in printed  # the manifest: not an image
    in_collection = lambda name: sorted(Image.objects.filter(collection__name=name).values_list("sha256", "label"))  # noqa: E731
    assert in_collection("copy") == in_collection("source")
    assert not list(tmp_path.glob(".*partial"))


def test_the_command_refuses_to_replace_a_file_and_names_an_unknown_collection(tmp_path):
    Collection.objects.create(name="here")
    taken = tmp_path / "taken.zip"
    taken.write_bytes(b"keep me")

    with pytest.raises(CommandError, match="exists; --force replaces it"):
        call_command("export_collection", str(taken), "--collection", "here")
    with pytest.raises(CommandError, match="no collection is named 'nowhere'"):
        call_command("export_collection", str(tmp_path / "new.zip"), "--collection", "nowhere")
    call_command("export_collection", str(taken), "--collection", "here", "--force")

    assert taken.read_bytes() != b"keep me"
    assert _read(taken.read_bytes()) == ({}, [])
    assert not (tmp_path / "new.zip").exists()


def test_only_staff_may_export_and_refusals_are_json(client, django_user_model, staff, media_root):
    kept = Collection.objects.create(name="kept")
    url = reverse("api-collection-export", args=[kept.pk])

    anonymous = client.get(url, HTTP_ACCEPT="application/zip")
    django_user_model.objects.create_user("visitor", password="pw")
    client.login(username="visitor", password="pw")
    visitor = client.get(url)
    client.force_login(staff)
    unknown = client.get(reverse("api-collection-export", args=[kept.pk + 1]))
    (Path(media_root) / MEDIA_MARKER).unlink()
    unmounted = client.get(url)

    assert (anonymous.status_code, anonymous["Content-Type"]) == (401, "application/json")
    assert visitor.status_code == 403
    assert unknown.status_code == 404
    assert unmounted.status_code == 503 and "media storage is not mounted" in unmounted.json()["error"]


def test_the_admin_downloads_one_collection_and_asks_to_pick_one_among_many(admin_client):
    one, two = Collection.objects.create(name="one"), Collection.objects.create(name="two")
    _upload(one, ("x.png", "", image_bytes(pattern=5)))
    url = reverse("admin:gallery_collection_changelist")

    download = admin_client.post(url, {"action": "export_zip", helpers.ACTION_CHECKBOX_NAME: [one.pk]})
    both = admin_client.post(url, {"action": "export_zip", helpers.ACTION_CHECKBOX_NAME: [one.pk, two.pk]}, follow=True)

    assert download["Content-Disposition"] == 'attachment; filename="one.zip"'
    assert list(_read(b"".join(download.streaming_content))[0]) == ["x.png"]
    assert "Pick one collection to download" in both.content.decode()


def test_the_gallery_page_offers_the_download_to_staff_only(client, staff):
    shown = Collection.objects.create(name="shown")
    page = reverse("gallery:collection-detail", args=[shown.pk])
    link = reverse("api-collection-export", args=[shown.pk])

    anonymous = client.get(page).content.decode()
    client.force_login(staff)
    as_staff = client.get(page).content.decode()

    assert link not in anonymous
    assert f'href="{link}" download' in as_staff


@pytest.mark.parametrize(
    ("text", "expected"),
    [("a/b\\c", "a_b_c"), ("..", "_"), ("...", "_"), ("CON", "_CON"), ("nul.png", "_nul.png"), ("x" * 200 + ".jpeg", "x" * 145 + ".jpeg"), (" trail. ", "trail")],
)
def test_safe_name(text, expected):
    assert safe_name(text, fallback="_") == expected


def test_offsets_and_counts_past_32_bits_are_written_as_zip64(monkeypatch):
    """An archive of more than 2 GiB, or 65,535 members, needs ZIP64 records: the limits are
    lowered here so that a small archive needs them too, and zipfile must still read it whole."""
    many = Collection.objects.create(name="many")
    data = {f"{n}.png": image_bytes(pattern=n) for n in range(4)}
    _upload(many, *((name, "", picture) for name, picture in data.items()))
    monkeypatch.setattr(export, "_OFFSET_MAX", 100)  # every member after the first starts past it
    monkeypatch.setattr(export, "_COUNT_MAX", 2)  # 5 members with the manifest

    archive = b"".join(images_export_zip(images=collection_images(collection=many)))

    assert b"PK\x06\x06" in archive and b"PK\x06\x07" in archive  # the ZIP64 end record and its locator
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        assert [info.header_offset > 100 for info in opened.infolist()] == [False, True, True, True, True]
    files, manifest = _read(archive)
    assert files == data and len(manifest) == 4


def test_a_label_or_a_status_narrows_the_export_as_it_narrows_the_gallery(client, staff, tmp_path):
    mixed = Collection.objects.create(name="mixed")
    cat, dog, other = image_bytes(pattern=1), image_bytes(pattern=2), image_bytes(pattern=3)
    _upload(mixed, ("a.png", "cat", cat), ("b.png", "dog", dog), ("c.png", "cat", b"not a picture"), ("d.png", "", other))
    url = reverse("api-collection-export", args=[mixed.pk])
    client.force_login(staff)

    cats = client.get(url, {"label": "cat"})
    failed_cats = client.get(url, {"label": "cat", "status": "failed"})
    refused = client.get(url, {"status": "lost"})
    page = client.get(reverse("gallery:collection-detail", args=[mixed.pk]), {"label": "cat"}).content.decode()
    call_command("export_collection", str(tmp_path / "dogs.zip"), "--collection", "mixed", "--label", "dog")

    assert cats["Content-Disposition"] == 'attachment; filename="mixed - cat.zip"'
    files, manifest = _read(b"".join(cats.streaming_content))
    assert files == {"cat/a.png": cat} and [row["original_name"] for row in manifest] == ["a.png", "c.png"]
    assert failed_cats["Content-Disposition"] == 'attachment; filename="mixed - cat - failed.zip"'
    assert _read(b"".join(failed_cats.streaming_content)) == ({}, [row for row in manifest if row["original_name"] == "c.png"])
    assert refused.status_code == 400 and "status" in refused.json()["errors"]
    assert f'href="{url}?label=cat" download' in page and "download these as zip" in page
    assert _read((tmp_path / "dogs.zip").read_bytes())[0] == {"dog/b.png": dog}


def test_the_admin_downloads_the_images_picked_or_every_image_a_filter_leaves(admin_client):
    first, second = Collection.objects.create(name="first"), Collection.objects.create(name="second")
    red, blue, green = image_bytes(pattern=1), image_bytes(pattern=2), image_bytes(pattern=3)
    picked = _upload(first, ("red.png", "warm", red), ("blue.png", "cold", blue))
    _upload(second, ("green.png", "cold", green))
    url = reverse("admin:gallery_image_changelist")

    ticked = admin_client.post(url, {"action": "export_zip", helpers.ACTION_CHECKBOX_NAME: [picked["red.png"].pk]})
    every_cold = admin_client.post(
        f"{url}?q=cold", {"action": "export_zip", "select_across": "1", helpers.ACTION_CHECKBOX_NAME: [picked["blue.png"].pk]}
    )

    assert ticked["Content-Disposition"] == 'attachment; filename="images.zip"'
    assert _read(b"".join(ticked.streaming_content))[0] == {"warm/red.png": red}
    assert _read(b"".join(every_cold.streaming_content))[0] == {"cold/blue.png": blue, "cold/green.png": green}  # from both collections


def test_a_head_request_gets_the_headers_without_an_archive_being_written(staff, monkeypatch):
    """Download managers ask HEAD first. The test client drops a HEAD answer's body itself, so the
    request goes through the WSGI application as gunicorn sends it: no archive is written to be
    thrown away, and the download's slot is given back (checked after the test)."""
    import base64

    written = []
    real = export.images_export_zip

    def watched(**kwargs):
        written.append(True)
        yield from real(**kwargs)

    monkeypatch.setattr(export, "images_export_zip", watched)
    asked = Collection.objects.create(name="asked")
    _upload(asked, ("x.png", "", image_bytes(pattern=1)))
    url = reverse("api-collection-export", args=[asked.pk])
    basic = "Basic " + base64.b64encode(b"keeper:pw").decode()

    head_status, headers, sent = wsgi_call("HEAD", url, HTTP_AUTHORIZATION=basic)
    not_started = list(written)
    got = wsgi_call("GET", url, HTTP_AUTHORIZATION=basic)

    assert head_status.startswith("200") and headers["Content-Disposition"] == 'attachment; filename="asked.zip"'
    assert sent == b"" and not_started == []
    assert got[0].startswith("200") and _read(got[2])[0] == {"x.png": image_bytes(pattern=1)} and written == [True]


def test_downloads_past_the_limit_are_refused_until_one_ends(client, admin_client, staff, settings):
    """A download holds a web thread while the client receives it, so at most CBIR_MAX_EXPORTS run
    at once over every web process; one more is refused with a reason, and once a running one
    ends, a download goes through."""
    settings.CBIR_MAX_EXPORTS = 2
    kept = Collection.objects.create(name="kept")
    picture = image_bytes(pattern=4)
    _upload(kept, ("x.png", "", picture))
    url = reverse("api-collection-export", args=[kept.pk])
    client.force_login(staff)

    with _every_slot_taken_elsewhere():
        refused = client.get(url)
        asked_first = client.head(url)
        in_admin = admin_client.post(
            reverse("admin:gallery_collection_changelist"),
            {"action": "export_zip", helpers.ACTION_CHECKBOX_NAME: [kept.pk]},
            follow=True,
        )
    after = client.get(url)

    assert (refused.status_code, refused["Retry-After"]) == (503, "60")
    assert "2 zip downloads are running already (CBIR_MAX_EXPORTS)" in refused.json()["error"]
    assert (asked_first.status_code, asked_first["Retry-After"]) == (503, "60")
    assert "2 zip downloads are running already" in in_admin.content.decode()
    assert after.status_code == 200 and _read(b"".join(after.streaming_content))[0] == {"x.png": picture}


def test_a_download_holds_its_slot_until_it_is_sent_or_the_client_leaves(client, staff, settings, monkeypatch):
    from rest_framework.test import APIRequestFactory, force_authenticate

    from gallery.apis import CollectionExportApi

    settings.CBIR_MAX_EXPORTS = 1
    monkeypatch.setattr(export, "EXPORT_CHUNK_BYTES", 64)  # many pieces, so that a client can leave midway
    kept = Collection.objects.create(name="kept")
    _upload(kept, ("x.png", "", image_bytes(pattern=4, size=(96, 96))))
    url = reverse("api-collection-export", args=[kept.pk])
    client.force_login(staff)

    whole = client.get(url)
    free_while_sending = _slot_free()
    b"".join(whole.streaming_content)
    free_once_sent = _slot_free()
    # The view called directly, as the test client's own closing would close the test's connection.
    request = APIRequestFactory().get(url)
    force_authenticate(request, user=staff)
    left = CollectionExportApi.as_view()(request, collection_id=kept.pk)
    next(iter(left.streaming_content))
    free_while_left_open = _slot_free()
    _close_as_the_server_does(left)  # as when its client went away

    assert (free_while_sending, free_once_sent, free_while_left_open) == (False, True, False)
    assert _slot_free()


def test_chosen_images_from_any_collections_download_as_one_zip(client, staff):
    """``/api/images/export/``: ids in the query string (as the search pages link) or posted (as
    JSON, for many more); an id with no image is left out."""
    first, second = Collection.objects.create(name="first"), Collection.objects.create(name="second")
    red, blue, green = image_bytes(pattern=1), image_bytes(pattern=2), image_bytes(pattern=3)
    ones = _upload(first, ("red.png", "warm", red), ("blue.png", "cold", blue))
    twos = _upload(second, ("green.png", "cold", green))
    url = reverse("api-images-export")
    asked = [ones["red.png"].pk, twos["green.png"].pk, twos["green.png"].pk + 100]
    client.force_login(staff)

    got = client.get(url, {"images": ",".join(map(str, asked)), "name": "picked"})
    posted = client.post(url, {"images": asked}, content_type="application/json")

    assert got["Content-Disposition"] == 'attachment; filename="picked.zip"'
    files, manifest = _read(b"".join(got.streaming_content))
    assert files == {"warm/red.png": red, "cold/green.png": green}
    assert sorted(int(row["id"]) for row in manifest) == sorted(asked[:2])
    assert posted.status_code == 200, posted.content
    assert posted["Content-Disposition"] == 'attachment; filename="images.zip"'
    assert _read(b"".join(posted.streaming_content))[0] == files


def test_chosen_images_download_in_the_order_given_each_named_after_its_place(client, staff):
    """``order=given``: every file at the top in the ids' order, numbered to sort as ranked (the
    same name twice is no clash), labels in the manifest; an id twice or with no image is skipped."""
    first, second = Collection.objects.create(name="first"), Collection.objects.create(name="second")
    pictures = {n: image_bytes(pattern=n) for n in range(1, 12)}
    ones = _upload(first, *((f"{n}.png", "warm", pictures[n]) for n in range(1, 11)))
    eleven = _upload(second, ("1.png", "", pictures[11]))["1.png"]  # the same name as one in first
    ranked = [eleven.pk] + [ones[f"{n}.png"].pk for n in range(10, 0, -1)]  # against id order
    asked = ranked[:3] + [ranked[0], eleven.pk + 1000] + ranked[3:]
    client.force_login(staff)

    got = client.post(reverse("api-images-export"), {"images": asked, "order": "given", "name": "ranked"}, content_type="application/json")
    refused = client.get(reverse("api-images-export"), {"images": ranked[0], "order": "rank"})

    assert got.status_code == 200 and got["Content-Disposition"] == 'attachment; filename="ranked.zip"'
    files, manifest = _read(b"".join(got.streaming_content))
    assert list(files) == ["01 1.png"] + [f"{place:02d} {n}.png" for place, n in zip(range(2, 12), range(10, 0, -1))]
    assert list(files.values()) == [pictures[11]] + [pictures[n] for n in range(10, 0, -1)]
    assert [int(row["id"]) for row in manifest] == ranked and manifest[1]["label"] == "warm" and manifest[1]["path"] == "02 10.png"
    assert refused.status_code == 400 and "order" in refused.json()["errors"]


def test_chosen_images_are_refused_with_reasons(client, django_user_model, staff, media_root, settings):
    kept = Collection.objects.create(name="kept")
    image = _upload(kept, ("x.png", "", image_bytes(pattern=1)))["x.png"]
    url = reverse("api-images-export")

    anonymous = client.get(url, {"images": image.pk}, HTTP_ACCEPT="application/zip")
    django_user_model.objects.create_user("visitor", password="pw")
    client.login(username="visitor", password="pw")
    visitor = client.get(url, {"images": image.pk})
    client.force_login(staff)
    none_asked = client.get(url)
    not_an_id = client.get(url, {"images": f"{image.pk},abc"})
    too_many = client.post(url, {"images": list(range(1, export.EXPORT_IMAGES_MAX + 2))}, content_type="application/json")
    none_there = client.get(url, {"images": image.pk + 1})
    with _every_slot_taken_elsewhere():
        busy = client.get(url, {"images": image.pk})
    (Path(media_root) / MEDIA_MARKER).unlink()
    unmounted = client.get(url, {"images": image.pk})

    assert (anonymous.status_code, anonymous["Content-Type"]) == (401, "application/json")
    assert visitor.status_code == 403
    assert [response.status_code for response in (none_asked, not_an_id, too_many)] == [400] * 3
    assert all("images" in response.json()["errors"] for response in (none_asked, not_an_id, too_many))
    assert (none_there.status_code, none_there.json()) == (404, {"error": "none of these images exists"})
    assert (busy.status_code, busy["Retry-After"]) == (503, "60")
    assert unmounted.status_code == 503 and "media storage is not mounted" in unmounted.json()["error"]


def test_a_page_of_similar_images_links_its_results_as_a_zip_for_staff(client, staff):
    from tests.utils import make_encoder
    from workers.services import images_index

    make_encoder()
    pets = Collection.objects.create(name="pets")
    pictures = {f"{n}.png": image_bytes(pattern=n) for n in range(4)}
    images = _upload(pets, *((name, "pet", data) for name, data in pictures.items()))
    images_index(image_ids=[image.pk for image in images.values()])
    page = reverse("gallery:image-detail", args=[images["0.png"].pk])

    anonymous = client.get(page).content.decode()
    client.force_login(staff)
    as_staff = client.get(page).content.decode()

    assert reverse("api-images-export") not in anonymous
    link = re.search(r'href="(/api/images/export/\?images=[^"]+)" download', as_staff).group(1).replace("&amp;", "&")
    download = client.get(link)
    files, _ = _read(b"".join(download.streaming_content))
    assert sorted(files.values()) == sorted(pictures[name] for name in ("1.png", "2.png", "3.png"))  # the hits, not the query
    assert download["Content-Disposition"] == 'attachment; filename="similar images.zip"'
    ranked = [int(image_id) for image_id in re.search(r"images=([\d,]+)", link).group(1).split(",")]
    by_id = {image.pk: name for name, image in images.items()}
    assert list(files) == [f"{place} {by_id[image_id]}" for place, image_id in enumerate(ranked, 1)]  # in the page's order
