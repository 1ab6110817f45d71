import base64
import io
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.storage import default_storage
from django.urls import reverse

from gallery.models import Collection, Image
from gallery.services import collection_get_or_create
from tests.utils import image_bytes

pytestmark = pytest.mark.django_db


def test_upload_many_files_reports_each(client):
    collection = collection_get_or_create(name="api")
    good = image_bytes(pattern=1)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats/in-zip.png", image_bytes(pattern=2))
        zf.writestr("cats/readme.txt", "hello")
    response = client.post(
        reverse("api-image-upload"),
        {
            "collection": "api",
            "label": "mixed",
            "files": [
                SimpleUploadedFile("one.png", good),
                SimpleUploadedFile("same-again.png", good),
                SimpleUploadedFile("broken.png", b"\x89PNG\r\n\x1a\nbroken"),
                SimpleUploadedFile("bundle.zip", archive.getvalue()),
            ],
        },
    )
    assert response.status_code == 202
    body = response.json()
    assert (body["stored"], body["failed"], body["duplicates"], body["skipped"]) == (2, 1, 1, 1)
    by_name = {r["name"]: r for r in body["results"]}
    one = Image.objects.get(original_name="one.png")
    assert by_name["one.png"] == {"name": "one.png", "id": one.pk, "status": "pending", "error": ""}
    assert by_name["same-again.png"] == {"name": "same-again.png", "status": "duplicate", "duplicate_of": one.pk}
    assert by_name["broken.png"]["status"] == "failed" and by_name["broken.png"]["error"]
    assert by_name["cats/readme.txt"]["status"] == "skipped"
    assert Image.objects.get(original_name="cats/in-zip.png").label == "mixed"
    assert collection.images.count() == 3


def test_upload_without_files_or_collection_is_a_400(client):
    response = client.post(reverse("api-image-upload"), {"collection": "nope"})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"collection", "files"}


def test_an_upload_named_in_bytes_that_are_not_utf_8_is_kept_not_dropped(client):
    """curl -F files=@NAME sends the name's bytes as the file system holds them: Latin-1 on an old
    share. Django's multipart parser skipped a part whose headers were not UTF-8, so of two files
    one was stored and the other vanished from the answer without a word."""
    collection_get_or_create(name="latin")
    boundary = "b0undary"
    parts = [
        ("good.png", b"good.png", image_bytes(pattern=1)),
        ("caf\u00e9.png", b"caf\xe9.png", image_bytes(pattern=2)),  # read as Latin-1
        ("\u00e9t\u00e9 \U0001F600.png", "\u00e9t\u00e9 \U0001F600.png".encode(), image_bytes(pattern=3)),  # UTF-8: as it is
        ("bell quote.png", b"bell\x07 quote\x93.png", image_bytes(pattern=4)),  # Django drops control characters
    ]
    body = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"".encode() + raw
        + b"\"\r\nContent-Type: image/png\r\n\r\n" + data + b"\r\n"
        for _, raw, data in parts
    )
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"collection\"\r\n\r\nlatin\r\n".encode()
        + body + f"--{boundary}--\r\n".encode()
    )
    response = client.generic("POST", reverse("api-image-upload"), body, content_type=f"multipart/form-data; boundary={boundary}")
    assert response.status_code == 202, response.content
    assert [(r["name"], r["status"]) for r in response.json()["results"]] == [(name, "pending") for name, _, _ in parts]
    stored = {image.original_name: default_storage.open(image.file.name).read() for image in Image.objects.all()}
    assert stored == {name: data for name, _, data in parts}  # the bytes of each file, untouched


def _basic(username: str, password: str) -> dict:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


@pytest.fixture
def uploaded(client):
    collection = collection_get_or_create(name="to-delete")
    files = [SimpleUploadedFile(f"{i}.png", image_bytes(pattern=i)) for i in range(2)]
    client.post(reverse("api-image-upload"), {"collection": "to-delete", "files": files})
    return collection, list(collection.images.order_by("id"))


def test_image_detail_tells_status_and_reason(client, uploaded):
    _, (image, _) = uploaded
    body = client.get(reverse("api-image-detail", args=[image.pk])).json()
    assert (body["id"], body["status"], body["error"], body["width"], body["height"]) == (image.pk, "pending", "", 64, 48)
    assert body["thumbnail_url"] is None and body["image_url"].endswith(image.file.url)  # no original for a thumbnail
    assert body["collection"] == {"id": image.collection_id, "name": "to-delete"}
    missing = client.get(reverse("api-image-detail", args=[999_999]))
    assert missing.status_code == 404 and "error" in missing.json()


def test_deleting_needs_a_staff_user_and_removes_rows_and_files(client, uploaded, django_user_model, django_capture_on_commit_callbacks):
    collection, (first, second) = uploaded
    django_user_model.objects.create_user("viewer", password="pw")
    django_user_model.objects.create_user("keeper", password="pw", is_staff=True)
    url = reverse("api-image-detail", args=[first.pk])
    anonymous = client.delete(url)
    assert anonymous.status_code == 401 and "error" in anonymous.json()
    assert client.delete(url, **_basic("viewer", "pw")).status_code == 403
    assert client.delete(url, **_basic("keeper", "wrong")).status_code == 401
    assert Image.objects.filter(pk=first.pk).exists() and default_storage.exists(first.file.name)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete(url, **_basic("keeper", "pw")).status_code == 204
    assert not Image.objects.filter(pk=first.pk).exists() and not default_storage.exists(first.file.name)
    assert client.delete(url, **_basic("keeper", "pw")).status_code == 404
    assert default_storage.exists(second.file.name)
    collection_url = reverse("api-collection-detail", args=[collection.pk])
    assert client.delete(collection_url).status_code == 401
    with django_capture_on_commit_callbacks(execute=True):
        assert client.delete(collection_url, **_basic("keeper", "pw")).status_code == 204
    assert not Collection.objects.filter(pk=collection.pk).exists() and not default_storage.exists(second.file.name)
    assert client.get(collection_url).status_code == 404


def test_uploads_can_be_closed_to_all_but_staff(client, settings, django_user_model):
    collection_get_or_create(name="closed")
    settings.CBIR_API_OPEN_UPLOADS = False
    django_user_model.objects.create_user("keeper", password="pw", is_staff=True)

    def upload(**headers):
        return client.post(reverse("api-image-upload"), {"collection": "closed", "files": [SimpleUploadedFile("a.png", image_bytes())]}, **headers)

    assert upload().status_code == 401 and not Image.objects.exists()
    assert upload(**_basic("keeper", "pw")).status_code == 202 and Image.objects.count() == 1


def test_collection_images_list_by_status_with_reasons_and_pages_by_id(client, django_assert_num_queries):
    collection = collection_get_or_create(name="mixed")
    files = [SimpleUploadedFile(f"{i}.png", image_bytes(pattern=i)) for i in range(5)]
    files += [SimpleUploadedFile("junk.png", b"not an image"), SimpleUploadedFile("empty.png", b"")]
    client.post(reverse("api-image-upload"), {"collection": "mixed", "files": files, "label": "x"})
    url = reverse("api-collection-images", args=[collection.pk])
    failed = client.get(url, {"status": "failed"}).json()
    assert [(hit["original_name"], hit["status"]) for hit in failed["results"]] == [("junk.png", "failed"), ("empty.png", "failed")]
    assert all(hit["error"] for hit in failed["results"]) and failed["next"] is None
    pages, next_url = [], f"{url}?status=pending&limit=2"
    while next_url:
        with django_assert_num_queries(2):  # the collection, one page of images
            body = client.get(next_url).json()
        pages.append([hit["original_name"] for hit in body["results"]])
        next_url = body["next"]
    assert pages == [["0.png", "1.png"], ["2.png", "3.png"], ["4.png"]]
    assert client.get(url, {"label": "y"}).json()["results"] == []


def test_collection_images_list_refuses_bad_parameters(client):
    collection = collection_get_or_create(name="empty")
    url = reverse("api-collection-images", args=[collection.pk])
    bad = client.get(url, {"status": "lost", "limit": 0, "after": -1})
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"status", "limit", "after"}
    assert client.get(url, {"limit": 501}).status_code == 400
    missing = client.get(reverse("api-collection-images", args=[999_999]))
    assert missing.status_code == 404 and "error" in missing.json()


def test_an_upload_of_too_many_files_is_a_json_400_that_says_so(client, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    collection_get_or_create(name="limited")
    files = [SimpleUploadedFile(f"{i}.png", image_bytes(pattern=i)) for i in range(3)]
    response = client.post(reverse("api-image-upload"), {"collection": "limited", "files": files})
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert response.json() == {
        "error": "more than 2 files in one request (CBIR_MAX_FILES_PER_UPLOAD): send them in several requests, or as one .zip"
    }
    assert not Image.objects.exists()
