import io
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from gallery.models import Image
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
