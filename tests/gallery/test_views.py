import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from gallery.models import Image
from tests.search.test_apis import indexed  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


def test_gallery_lists_collections_and_thumbnails(client, indexed):  # noqa: F811
    collection, _ = indexed
    page = client.get(reverse("gallery:collection-list")).content.decode()
    assert "colours" in page and "6 indexed" in page
    detail = client.get(reverse("gallery:collection-detail", args=[collection.pk])).content.decode()
    for image in Image.objects.filter(status=Image.Status.INDEXED):
        assert image.thumbnail.url in detail
    assert "not an image" in detail  # the failed upload shows its reason


def test_image_page_shows_similar_images_with_similarity(client, indexed):  # noqa: F811
    image = Image.objects.get(original_name="c2.png")
    page = client.get(reverse("gallery:image-detail", args=[image.pk])).content.decode()
    assert "Most similar" in page
    others = Image.objects.filter(status=Image.Status.INDEXED).exclude(pk=image.pk)
    assert all(reverse("gallery:image-detail", args=[other.pk]) in page for other in others)
    assert page.count("sim ") == 5


def test_search_page_ranks_an_upload(client, indexed):  # noqa: F811
    _, pictures = indexed
    assert client.get(reverse("search:search-page")).status_code == 200
    page = client.post(
        reverse("search:search-page"), {"image": SimpleUploadedFile("q.png", pictures["c4.png"]), "k": 3}
    ).content.decode()
    first = Image.objects.get(original_name="c4.png")
    assert page.index(first.thumbnail.url) < min(
        page.index(other.thumbnail.url) for other in Image.objects.filter(status="indexed").exclude(pk=first.pk)
        if other.thumbnail.url in page
    )
    assert "sim 1.000" in page


def test_search_page_explains_a_bad_file(client, indexed):  # noqa: F811
    page = client.post(reverse("search:search-page"), {"image": SimpleUploadedFile("q.png", b"garbage"), "k": 3})
    assert page.status_code == 200 and "cannot be searched with: not an image" in page.content.decode()
