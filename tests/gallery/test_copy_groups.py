"""A collection's pictures that are there more than once, found a page at a time: the selector,
the page (with the deletion of ticked copies) and the API."""
import io

import numpy as np

import pytest
from django.urls import reverse
from PIL import Image as PILImage

from gallery.models import Image
from gallery.selectors import collection_list_copy_groups
from gallery.services import IncomingFile, collection_get_or_create, images_create
from tests.utils import image_bytes, make_encoder
from workers.services import images_index

pytestmark = pytest.mark.django_db


def _resaved(data: bytes, *, size: tuple[int, int], fmt: str) -> bytes:
    picture = PILImage.open(io.BytesIO(data)).convert("RGB").resize(size, PILImage.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, quality=75)
    return buffer.getvalue()


@pytest.fixture
def library():
    """photos: seven (and its smaller JPEG), eight, nine (and a larger WebP of it), ten; archive:
    eight's file again. All indexed, created in that order. Returns the rows by name."""
    make_encoder()
    photos, archive = collection_get_or_create(name="photos"), collection_get_or_create(name="archive")
    seven, eight, nine = (image_bytes(pattern=n, size=(400, 300)) for n in (7, 8, 9))
    files = [
        ("seven.png", seven), ("seven-small.jpg", _resaved(seven, size=(200, 150), fmt="JPEG")), ("eight.png", eight),
        ("nine.png", nine), ("nine-large.webp", _resaved(nine, size=(800, 600), fmt="WEBP")),
        ("ten.png", image_bytes(pattern=10, size=(400, 300))),
    ]
    for name, data in files:  # one at a time: ids in this order
        images_create(collection=photos, files=[IncomingFile(name=name, data=data)])
    images_create(collection=archive, files=[IncomingFile(name="eight-again.png", data=eight)])
    images_index(image_ids=list(Image.objects.values_list("id", flat=True)))
    assert not Image.objects.exclude(status=Image.Status.INDEXED).exists()
    return {image.original_name: image for image in Image.objects.select_related("collection")}


def _names(found) -> list[tuple[str, list[str]]]:
    return [(group.image.original_name, [copy.image.original_name for copy in group.copies]) for group in found.groups]


def test_each_picture_with_copies_is_listed_once_under_its_first_image(library):
    photos = library["seven.png"].collection
    found = collection_list_copy_groups(collection=photos)
    assert _names(found) == [("seven.png", ["seven-small.jpg"]), ("nine.png", ["nine-large.webp"])]
    assert found.done and found.checked == 6 and found.checked_to == library["ten.png"].pk
    assert not found.groups[0].copies[0].identical
    # everywhere: eight's file in the archive makes it a group too, the same bytes
    everywhere = collection_list_copy_groups(collection=photos, everywhere=True)
    assert _names(everywhere) == [("seven.png", ["seven-small.jpg"]), ("eight.png", ["eight-again.png"]), ("nine.png", ["nine-large.webp"])]
    assert everywhere.groups[1].copies[0].identical
    archive = library["eight-again.png"].collection
    assert _names(collection_list_copy_groups(collection=archive)) == []
    assert _names(collection_list_copy_groups(collection=archive, everywhere=True)) == [("eight-again.png", ["eight.png"])]


def test_pages_go_on_after_the_last_image_checked(library):
    photos = library["seven.png"].collection
    first = collection_list_copy_groups(collection=photos, groups=1)
    assert _names(first) == [("seven.png", ["seven-small.jpg"])]
    assert (first.checked, first.checked_to, first.done) == (1, library["seven.png"].pk, False)
    second = collection_list_copy_groups(collection=photos, groups=1, after=first.checked_to)
    assert _names(second) == [("nine.png", ["nine-large.webp"])]  # seven-small.jpg is in seven's group
    assert second.checked == 3 and not second.done
    third = collection_list_copy_groups(collection=photos, groups=1, after=second.checked_to)
    assert _names(third) == [] and third.done and third.checked == 2
    # a page that runs out of checks stops there, with no group yet
    short = collection_list_copy_groups(collection=photos, after=first.checked_to, checks=2)
    assert _names(short) == [] and short.checked == 2 and short.checked_to == library["eight.png"].pk and not short.done


def test_the_page_lists_the_groups_and_pages_on(client, library):
    photos = library["seven.png"].collection
    collection_page = client.get(reverse("gallery:collection-detail", args=[photos.pk])).content.decode()
    url = reverse("gallery:collection-copies", args=[photos.pk])
    assert url in collection_page
    page = client.get(url).content.decode()
    for name in ("seven.png", "seven-small.jpg", "nine.png", "nine-large.webp"):
        assert reverse("gallery:image-detail", args=[library[name].pk]) in page
    assert reverse("gallery:image-detail", args=[library["eight.png"].pk]) not in page
    assert "Images 1–6 checked, the last of them" in page and 'rel="next"' not in page
    assert 'type="checkbox"' not in page  # only for a user who may delete images
    everywhere = client.get(url, {"scope": "all"}).content.decode()
    assert reverse("gallery:image-detail", args=[library["eight-again.png"].pk]) in everywhere and "the same file" in everywhere
    later = client.get(url, {"after": library["seven.png"].pk, "seen": 1}).content.decode()
    assert "Images 2–6 checked" in later and reverse("gallery:image-detail", args=[library["seven.png"].pk]) not in later
    assert client.get(url, {"after": "x", "seen": "-4"}).status_code == 200


def test_a_user_who_may_delete_drops_ticked_copies_and_every_group_keeps_one(admin_client, library):
    photos = library["seven.png"].collection
    url = reverse("gallery:collection-copies", args=[photos.pk])
    page = admin_client.get(url).content.decode()
    assert 'type="checkbox"' in page and "Delete the ticked copies" in page
    seven, small, nine, large = (library[name].pk for name in ("seven.png", "seven-small.jpg", "nine.png", "nine-large.webp"))
    response = admin_client.post(url, {"group": [f"{seven},{small}", f"{nine},{large}"], "delete": [small, nine, large]}, follow=True)
    page = response.content.decode()
    assert response.redirect_chain[0][0] == url and response.status_code == 200
    assert "Deleted 1 copy" in page and "1 group was left as it was" in page
    assert not Image.objects.filter(pk=small).exists() and Image.objects.filter(pk__in=[seven, nine, large]).count() == 3


def test_only_copies_of_a_kept_picture_are_deleted_whatever_the_form_says(admin_client, library):
    photos = library["seven.png"].collection
    seven, eight, ten = (library[name].pk for name in ("seven.png", "eight.png", "ten.png"))
    response = admin_client.post(reverse("gallery:collection-copies", args=[photos.pk]), {"group": f"{seven},{eight},{ten}", "delete": [eight, ten]}, follow=True)
    assert "Nothing was deleted" in response.content.decode()
    assert Image.objects.filter(pk__in=[seven, eight, ten]).count() == 3


def test_deleting_needs_the_permission(client, django_user_model, library):
    photos = library["seven.png"].collection
    seven, small = library["seven.png"].pk, library["seven-small.jpg"].pk
    url = reverse("gallery:collection-copies", args=[photos.pk])
    assert client.post(url, {"group": f"{seven},{small}", "delete": small}).status_code == 403
    client.force_login(django_user_model.objects.create_user("viewer", password="x-long-password-1"))
    assert client.post(url, {"group": f"{seven},{small}", "delete": small}).status_code == 403
    assert Image.objects.filter(pk=small).exists()


def test_the_api_pages_through_the_groups(client, library):
    photos = library["seven.png"].collection
    url = reverse("api-collection-copies", args=[photos.pk])
    body = client.get(url, {"scope": "all"}).json()
    assert body["checked"] == 6 and body["next"] is None
    assert [(group["image"]["original_name"], [copy["original_name"] for copy in group["copies"]]) for group in body["results"]] == [
        ("seven.png", ["seven-small.jpg"]), ("eight.png", ["eight-again.png"]), ("nine.png", ["nine-large.webp"]),
    ]
    copy = body["results"][1]["copies"][0]
    assert copy["identical"] and copy["collection"]["name"] == "archive" and copy["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert body["results"][2]["copies"][0]["width"] == 800
    assert client.get(url, {"after": library["ten.png"].pk}).json() == {"checked": 0, "next": None, "results": []}
    for bad in ({"scope": "everything"}, {"after": "-1"}, {"after": "x"}):
        response = client.get(url, bad)
        assert response.status_code == 400 and set(bad) <= set(response.json()["errors"])
    assert client.get(reverse("api-collection-copies", args=[999_999])).status_code == 404


def test_the_apis_next_links_walk_every_group_once(client, library, monkeypatch):
    monkeypatch.setattr("gallery.apis.COPY_GROUPS_PER_PAGE", 1)
    url, seen = reverse("api-collection-copies", args=[library["seven.png"].collection_id]) + "?scope=all", []
    while url:
        body = client.get(url).json()
        seen += [group["image"]["original_name"] for group in body["results"]]
        url = body["next"]
        assert url is None or "scope=all" in url
    assert seen == ["seven.png", "eight.png", "nine.png"]


def test_a_chain_of_copies_lists_every_pair_together():
    # q ~ p and p ~ c at 0.99, but q and c only 0.96 alike: q's group cannot show c, so p is
    # listed too, with both; with a third copy of q that p shares, p would add nothing.
    from gallery.models import Collection

    chain = Collection.objects.create(name="chain")
    angle = np.arccos(0.99)

    def at(turn: float) -> list[float]:
        signature = np.zeros(384)
        signature[:2] = np.cos(turn * angle), np.sin(turn * angle)
        return signature.tolist()

    rows = {
        name: Image.objects.create(collection=chain, original_name=name, sha256=name, status="indexed", signature=at(turn))
        for name, turn in (("q", 0), ("p", 1), ("c", 2))
    }
    assert _names(collection_list_copy_groups(collection=chain)) == [("q", ["p"]), ("p", ["q", "c"])]
    Image.objects.filter(pk=rows["c"].pk).update(signature=at(0.5))  # now a copy of both: q's group has it
    assert _names(collection_list_copy_groups(collection=chain)) == [("q", ["c", "p"])]
