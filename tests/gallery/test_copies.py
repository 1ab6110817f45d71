"""Copies of a picture (rescaled, recompressed, the same file elsewhere), found by the copy
signatures that indexing records: the selector, the API and the image page."""
import io

import pytest
from django.urls import reverse
from PIL import Image as PILImage

from gallery.models import Image
from gallery.selectors import COPY_MIN_SIMILARITY, image_list_copies
from gallery.services import IncomingFile, collection_get_or_create, images_create
from tests.utils import image_bytes, make_encoder
from workers.services import images_index

ORIGINAL = image_bytes(pattern=7, size=(400, 300))


def _smaller_jpeg(data: bytes) -> bytes:
    picture = PILImage.open(io.BytesIO(data)).convert("RGB").resize((200, 150), PILImage.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()


@pytest.fixture
def copies():
    """An original, its smaller JPEG in the same collection, the same file in another, and two
    other pictures; all indexed. Returns the rows by name."""
    make_encoder()
    photos, archive = collection_get_or_create(name="photos"), collection_get_or_create(name="archive")
    images_create(collection=photos, files=[
        IncomingFile(name="original.png", data=ORIGINAL), IncomingFile(name="small.jpg", data=_smaller_jpeg(ORIGINAL)),
        IncomingFile(name="other.png", data=image_bytes(pattern=8, size=(400, 300))),
    ])
    images_create(collection=archive, files=[
        IncomingFile(name="same-file.png", data=ORIGINAL), IncomingFile(name="grey.png", data=image_bytes(color=(128, 128, 128))),
    ])
    images_index(image_ids=list(Image.objects.values_list("id", flat=True)))
    return {image.original_name: image for image in Image.objects.select_related("collection")}


@pytest.mark.django_db
def test_the_copies_of_a_picture_are_found_in_every_collection_and_nothing_else(copies):
    found = image_list_copies(image=copies["original.png"])
    assert found.has_signature
    assert [copy.image.original_name for copy in found.copies] == ["same-file.png", "small.jpg"]  # nearest first
    same, small = found.copies
    assert same.identical and same.similarity == pytest.approx(1.0, abs=1e-3)
    assert not small.identical and COPY_MIN_SIMILARITY <= small.similarity < 1.0
    assert same.image.collection.name == "archive"
    other = image_list_copies(image=copies["other.png"])
    assert other.has_signature and other.copies == []
    # a flat grey picture has no signature, nor does an image indexed before signatures
    assert not image_list_copies(image=copies["grey.png"]).has_signature
    Image.objects.filter(pk=copies["small.jpg"].pk).update(signature=None)
    assert not image_list_copies(image=copies["small.jpg"]).has_signature
    assert [copy.image.original_name for copy in image_list_copies(image=copies["original.png"]).copies] == ["same-file.png"]


@pytest.mark.django_db
def test_the_signature_is_not_loaded_with_every_image_row(copies):
    image = Image.objects.get(pk=copies["original.png"].pk)
    assert "signature" in image.get_deferred_fields()
    image.label = "relabelled"
    image.save()  # a save leaves the deferred signature as it is
    assert image_list_copies(image=image).copies


@pytest.mark.django_db
def test_the_api_lists_an_images_copies(client, copies):
    body = client.get(reverse("api-image-copies", args=[copies["original.png"].pk])).json()
    assert body["query"] == copies["original.png"].pk and body["count"] == 2
    first, second = body["results"]
    assert (first["original_name"], first["identical"], first["collection"]["name"]) == ("same-file.png", True, "archive")
    assert (second["original_name"], second["identical"]) == ("small.jpg", False)
    assert COPY_MIN_SIMILARITY <= second["similarity"] < 1 and second["width"] == 200 and second["thumbnail_url"]
    assert client.get(reverse("api-image-copies", args=[copies["other.png"].pk])).json() == {
        "query": copies["other.png"].pk, "count": 0, "results": [],
    }
    missing = client.get(reverse("api-image-copies", args=[999_999]))
    assert missing.status_code == 404
    pending = images_create(collection=copies["original.png"].collection, files=[IncomingFile(name="new.png", data=image_bytes(pattern=9))])
    response = client.get(reverse("api-image-copies", args=[pending.created[0]]))
    assert response.status_code == 409 and "still being indexed" in response.json()["error"]


@pytest.mark.django_db
def test_the_image_page_shows_the_copies_of_its_picture(client, copies):
    page = client.get(reverse("gallery:image-detail", args=[copies["original.png"].pk])).content.decode()
    assert "Copies of this picture" in page
    for name in ("same-file.png", "small.jpg"):
        assert reverse("gallery:image-detail", args=[copies[name].pk]) in page.split("Most similar")[0]
    assert "the same file" in page and "another file" in page and "200×150" in page
    page = client.get(reverse("gallery:image-detail", args=[copies["other.png"].pk])).content.decode()
    assert "Copies of this picture" not in page
