import html
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from gallery.models import Image
from gallery.selectors import COVER_IMAGES
from gallery.services import IncomingFile, collection_get_or_create, images_create
from tests.utils import image_bytes
from workers.services import images_index
from tests.search.test_apis import indexed  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


def test_gallery_lists_collections_and_thumbnails(client, indexed):  # noqa: F811
    collection, _ = indexed
    page = client.get(reverse("gallery:collection-list")).content.decode()
    assert "colours" in page and "6 indexed" in page
    # the card shows the latest indexed pictures: here indexed together, so the highest ids
    latest = list(Image.objects.filter(status=Image.Status.INDEXED).order_by("-id"))
    covers = re.findall(r'<img src="([^"]+)"', page.split('class="covers"', 1)[1].split("</div>", 1)[0])
    assert covers == [image.thumbnail.url for image in latest[:COVER_IMAGES]]
    detail = client.get(reverse("gallery:collection-detail", args=[collection.pk])).content.decode()
    for image in Image.objects.filter(status=Image.Status.INDEXED):
        assert image.thumbnail.url in detail
    assert "not an image" in detail  # the failed upload shows its reason


def test_counts_read_as_english_one_image_and_thousands_separated(client):
    one = collection_get_or_create(name="one")
    Image.objects.create(collection=one, original_name="a.png", sha256="a")
    many = collection_get_or_create(name="many")
    Image.objects.bulk_create(Image(collection=many, original_name=f"{i}.png", sha256=str(i)) for i in range(1234))

    listing = client.get(reverse("gallery:collection-list")).content.decode()
    assert "<span>1 image</span>" in listing and "<span>1,234 images</span>" in listing
    assert '<b data-count="total">1</b> <span data-plural="total">image</span>' in client.get(
        reverse("gallery:collection-detail", args=[one.pk])
    ).content.decode()
    detail = client.get(reverse("gallery:collection-detail", args=[many.pk])).content.decode()
    assert '<b data-count="total">1,234</b> <span data-plural="total">images</span>' in detail
    assert "1,234 images still being processed" in detail


def test_collection_page_narrows_to_a_status_and_shows_why_images_failed(client, indexed):  # noqa: F811
    collection, _ = indexed
    truncated = image_bytes(size=(200, 200), fmt="JPEG", pattern=9)[:6000]  # a header that passes, data that does not
    images_create(collection=collection, files=[IncomingFile(name="cut.jpg", data=truncated, label="L0")])
    cut = Image.objects.get(original_name="cut.jpg")
    images_index(image_ids=[cut.pk])
    cut.refresh_from_db()
    assert cut.status == Image.Status.FAILED and cut.file
    url = reverse("gallery:collection-detail", args=[collection.pk])
    failed = client.get(url, {"status": "failed"}).content.decode()
    assert cut.error in failed and "not an image" in failed  # each failed image with its reason
    assert cut.file.url not in failed  # in place of a thumbnail, the reason: never the original
    assert not any(image.thumbnail.url in failed for image in Image.objects.filter(status=Image.Status.INDEXED))
    narrowed = client.get(url, {"status": "failed", "label": "L0"}).content.decode()
    assert cut.error in narrowed and "not an image" not in narrowed  # bad.png has no label
    assert 'href="?label=L0&amp;status=indexed"' in narrowed and 'href="?label=L1&amp;status=failed"' in narrowed
    everything = client.get(url, {"status": "bogus"}).content.decode()  # an unknown status narrows nothing
    assert all(image.thumbnail.url in everything for image in Image.objects.filter(status=Image.Status.INDEXED))
    assert 'class="jump"' not in everything  # one page: no box to type a page into


def test_collection_page_follows_progress_only_while_images_are_pending(client, indexed):  # noqa: F811
    collection, _ = indexed
    url = reverse("gallery:collection-detail", args=[collection.pk])
    api = reverse("api-collection-detail", args=[collection.pk])
    settled = client.get(url).content.decode()
    assert f'data-url="{api}"' in settled and '<b data-count="indexed">6</b>' in settled
    assert "no thumbnail yet" not in settled
    assert "<script>" not in settled  # nothing pending: no polling
    Image.objects.filter(original_name="c1.png").update(status=Image.Status.PENDING, thumbnail="")  # as uploaded
    busy = client.get(url).content.decode()
    assert '<b data-count="pending">1</b>' in busy and '<b data-count="indexed">5</b>' in busy
    assert "no thumbnail yet" in busy and Image.objects.get(original_name="c1.png").file.url not in busy  # not the original
    assert "<script>" in busy and "1 image still being processed" in busy
    # what the script reads: the counts under the same names
    assert client.get(api).json()["images"] == {"total": 7, "indexed": 5, "pending": 1, "failed": 1}


def test_image_page_shows_similar_images_with_similarity(client, indexed):  # noqa: F811
    image = Image.objects.get(original_name="c2.png")
    page = client.get(reverse("gallery:image-detail", args=[image.pk])).content.decode()
    assert "Most similar" in page
    others = Image.objects.filter(status=Image.Status.INDEXED).exclude(pk=image.pk)
    assert all(reverse("gallery:image-detail", args=[other.pk]) in page for other in others)
    assert page.count("sim ") == 5
    # the page shows the thumbnail and links to the original, which no page shows
    assert f'<a href="{image.file.url}" title="the original"><img src="{image.thumbnail.url}"' in page
    assert f'src="{image.file.url}"' not in page


def test_image_page_pages_on_through_the_similar_images(client, indexed, monkeypatch):  # noqa: F811
    from gallery import views
    from search.selectors import image_list_similar

    monkeypatch.setattr(views, "SIMILAR_PER_PAGE", 2)
    image = Image.objects.get(original_name="c2.png")
    url = reverse("gallery:image-detail", args=[image.pk])
    def ranked(k: int, offset: int = 0) -> list[str]:
        return [reverse("gallery:image-detail", args=[hit.image.pk]) for hit in image_list_similar(image=image, k=k, offset=offset)]

    pages = [client.get(url, {"page": number, "scope": "all"}).content.decode() for number in (1, 2, 3)]
    assert [_tiles(page) for page in pages] == [ranked(2), ranked(2, offset=2), ranked(2, offset=4)]
    paged = [tile for page in pages for tile in _tiles(page)]
    assert len(paged) == 5 and sorted(paged) == sorted(ranked(10))  # every other image, once
    assert [re.findall(r"#(\d+) ", page) for page in pages] == [["1", "2"], ["3", "4"], ["5"]]  # ranks run on
    assert 'href="?scope=all&amp;page=2" rel="next"' in pages[0] and 'rel="prev"' not in pages[0]
    assert 'href="?scope=all" rel="prev"' in pages[1] and 'href="?scope=all&amp;page=3" rel="next"' in pages[1]
    assert 'href="?scope=all&amp;page=2" rel="prev"' in pages[2] and 'rel="next"' not in pages[2]  # the last one
    assert _tiles(client.get(url, {"page": "two"}).content.decode()) == ranked(2)  # not a number: the first page
    deepest = client.get(url, {"page": 10**9}).content.decode()  # past the ranking's depth: its last page
    assert f'href="?page={1000 // 2 - 1}" rel="prev"' in deepest and _tiles(deepest) == []


def test_the_page_of_a_failed_or_pending_image_says_why_it_has_no_similar_images(client, indexed):  # noqa: F811
    collection, _ = indexed
    failed = Image.objects.get(status="failed")
    page = client.get(reverse("gallery:image-detail", args=[failed.pk])).content.decode()
    assert page.count(failed.error) == 1  # once, beside its status
    assert "could not be indexed (the reason is above)" in page
    assert "None" not in page and "Similar images in" not in page  # no size was ever read; no scope to pick

    pending = Image.objects.create(collection=collection, original_name="new.png", sha256="new", width=30, height=20)
    page = client.get(reverse("gallery:image-detail", args=[pending.pk])).content.decode()
    assert "30×20 · pending" in page and "still being indexed" in page and "Similar images in" not in page


def test_search_page_ranks_an_upload(client, indexed):  # noqa: F811
    _, pictures = indexed
    empty = client.get(reverse("search:search-page")).content.decode()
    # the form takes a dropped or pasted image too (search.js, driven in Chromium by hand)
    assert 'accept="image/*,.heic,.heif"' in empty and "data-image-search" in empty and "cbir/search.js" in empty
    page = client.post(
        reverse("search:search-page"), {"image": SimpleUploadedFile("q.png", pictures["c4.png"]), "k": 3}
    ).content.decode()
    first = Image.objects.get(original_name="c4.png")
    assert page.index(first.thumbnail.url) < min(
        page.index(other.thumbnail.url) for other in Image.objects.filter(status="indexed").exclude(pk=first.pk)
        if other.thumbnail.url in page
    )
    assert "sim 1.000" in page


def _carried_query(page: str) -> str:
    return re.search(r'<input type="hidden" name="query" value="([^"]*)">', page).group(1)


def _tiles(page: str) -> list[str]:
    return re.findall(r'<a class="tile[^"]*" href="([^"]+)"', page)


def test_search_page_searches_again_with_the_same_image_for_another_k_or_collection(client, indexed):  # noqa: F811
    """A browser cannot keep the chosen file across the page load: the page carries the query."""
    collection, pictures = indexed
    url = reverse("search:search-page")
    first = client.post(url, {"image": SimpleUploadedFile("q.png", pictures["c4.png"]), "k": 3}).content.decode()
    carried = _carried_query(first)
    assert carried and len(_tiles(first)) == 3

    again = client.post(url, {"query": carried, "k": 5}).content.decode()
    assert _tiles(again)[:3] == _tiles(first) and len(_tiles(again)) == 5
    assert "data:image/webp;base64," in again and _carried_query(again)

    other = collection_get_or_create(name="elsewhere")
    narrowed = client.post(url, {"query": carried, "k": 5, "collection": other.pk}).content.decode()
    assert _tiles(narrowed) == [] and "0 most similar" in narrowed

    bad_k = client.post(url, {"query": carried, "k": 0}).content.decode()
    assert _tiles(bad_k) == [] and _carried_query(bad_k) == carried  # kept for the next try


def test_search_page_pages_on_with_the_same_image_and_starts_again_for_a_new_one(client, indexed):  # noqa: F811
    _, pictures = indexed
    url = reverse("search:search-page")
    whole = client.post(url, {"image": SimpleUploadedFile("q.png", pictures["c4.png"]), "k": 6}).content.decode()
    first = client.post(url, {"image": SimpleUploadedFile("q.png", pictures["c4.png"]), "k": 4}).content.decode()
    carried, pages = _carried_query(first), [first]
    assert 'name="offset" value="4"' in first and "← previous" not in first
    pages.append(client.post(url, {"query": carried, "k": 4, "offset": 4}).content.decode())
    # six indexed images: the second page holds the last two, and has no further page
    paged = [tile for page in pages for tile in _tiles(page)]
    assert len(paged) == 6 and sorted(paged) == sorted(_tiles(whole)) and len(_tiles(pages[1])) == 2
    assert re.findall(r"#(\d+) ", pages[1]) == ["5", "6"] and "Most similar, 5 to 6" in pages[1]
    assert 'name="offset" value="0"' in pages[1] and "more →" not in pages[1]
    # a new image starts from its nearest, whatever offset comes with it
    again = client.post(url, {"image": SimpleUploadedFile("q.png", pictures["c4.png"]), "k": 4, "offset": 4}).content.decode()
    assert _tiles(again) == _tiles(first)
    too_deep = client.post(url, {"query": carried, "k": 4, "offset": 998}).content.decode()
    assert "Results go 1,000 deep at most." in too_deep and _tiles(too_deep) == []


def test_search_page_searches_with_a_region_of_the_picture_then_the_whole_again(client, indexed):  # noqa: F811
    """A box drawn over the query's picture (search.js sends it as fractions) searches with that
    part of it, for other numbers of results and pages too, until the whole picture is asked for."""
    from tests.utils import side_by_side

    _, pictures = indexed
    url = reverse("search:search-page")
    page_of = {name: reverse("gallery:image-detail", args=[pk]) for name, pk in Image.objects.values_list("original_name", "pk")}
    both = side_by_side(pictures["c1.png"], pictures["c4.png"])
    whole = client.post(url, {"image": SimpleUploadedFile("both.png", both), "k": 6}).content.decode()
    carried = _carried_query(whole)
    assert "Drag a box over the picture" in whole and "data-region-box" not in whole

    left = client.post(url, {"query": carried, "k": 6, "region": "0,0,0.5,1"}).content.decode()
    right = client.post(url, {"query": carried, "k": 6, "region": "0.5,0,1,1"}).content.decode()
    assert _tiles(left)[0] == page_of["c1.png"] and _tiles(right)[0] == page_of["c4.png"]
    assert "6 most similar to the part in the box" in left
    assert 'style="left:0.00%;top:0.00%;width:50.00%;height:100.00%"' in left
    assert 'style="left:50.00%;top:0.00%;width:50.00%;height:100.00%"' in right
    # the page carries the region on: another number of results, the next page
    in_left = _carried_query(left)
    fewer = client.post(url, {"query": in_left, "k": 3}).content.decode()
    assert _tiles(fewer) == _tiles(left)[:3] and "data-region-box" in fewer
    further = client.post(url, {"query": _carried_query(fewer), "k": 3, "offset": 3}).content.decode()
    assert _tiles(further) == _tiles(left)[3:]
    # a region drawn on a later page starts from the nearest again
    redrawn = client.post(url, {"query": in_left, "k": 3, "offset": 3, "region": "0.5,0,1,1"}).content.decode()
    assert _tiles(redrawn) == _tiles(right)[:3]
    back = client.post(url, {"query": _carried_query(redrawn), "k": 6, "region": "whole"}).content.decode()
    assert _tiles(back) == _tiles(whole) and "data-region-box" not in back
    # a new picture is searched whole, whatever region comes with it
    new = client.post(url, {"image": SimpleUploadedFile("both.png", both), "k": 6, "region": "0,0,0.5,1"}).content.decode()
    assert _tiles(new) == _tiles(whole)


def test_the_image_page_leads_to_a_search_with_a_part_of_its_picture(client, indexed):  # noqa: F811
    """``/search/?image=ID`` starts from a stored image: its vector, and its thumbnail to draw on."""
    import base64

    from tests.utils import side_by_side

    collection, pictures = indexed
    url = reverse("search:search-page")
    images_create(collection=collection, files=[IncomingFile(name="both.png", data=side_by_side(pictures["c1.png"], pictures["c4.png"]))])
    both = Image.objects.get(original_name="both.png")
    images_index(image_ids=[both.pk])
    both.refresh_from_db()
    page_of = {name: reverse("gallery:image-detail", args=[pk]) for name, pk in Image.objects.values_list("original_name", "pk")}
    assert f'href="{url}?image={both.pk}"' in client.get(page_of["both.png"]).content.decode()

    start = client.get(url, {"image": both.pk}).content.decode()
    assert _tiles(start)[0] == page_of["both.png"] and "sim 1.000" in start  # its own vector, as stored
    with both.thumbnail.open("rb") as thumbnail:  # the preview a region is cut from: its thumbnail, carried
        assert f'src="data:image/webp;base64,{base64.b64encode(thumbnail.read()).decode()}"' in start
    left = client.post(url, {"query": _carried_query(start), "k": 3, "region": "0,0,0.5,1"}).content.decode()
    right = client.post(url, {"query": _carried_query(start), "k": 3, "region": "0.5,0,1,1"}).content.decode()
    assert _tiles(left)[0] == page_of["c1.png"] and _tiles(right)[0] == page_of["c4.png"]
    back = client.post(url, {"query": _carried_query(left), "k": 10, "region": "whole"}).content.decode()
    assert _tiles(back) == _tiles(start)

    failed = Image.objects.get(original_name="bad.png")
    page = client.get(url, {"image": failed.pk}).content.decode()
    assert f"This image cannot be searched with: image {failed.pk} has no similar images: it could not be indexed" in page
    assert _tiles(page) == [] and "Search with a part" not in client.get(reverse("gallery:image-detail", args=[failed.pk])).content.decode()
    for unknown in ("999999", "x", "²", "9" * 30):
        assert client.get(url, {"image": unknown}).status_code == 404, unknown
    both.thumbnail.storage.delete(both.thumbnail.name)  # gone from media storage: said, not a 500
    page = client.get(url, {"image": both.pk})
    assert page.status_code == 200 and f"The thumbnail of image {both.pk} could not be read" in page.content.decode()


@pytest.mark.parametrize(
    ("region", "message"),
    [
        ("1,0,0,1", "with left before right and top above bottom"),
        ("0,0,0.5", "four fractions of the picture"),
        ("nan,0,1,1", "each from 0 to 1"),
        ("0,0,1.5,1", "each from 0 to 1"),
        ("0,0,0.05,1", "the region is 6×48 pixels of the 128×48 picture; it must be at least 8 pixels each way"),
    ],
)
def test_search_page_refuses_a_bad_region_and_keeps_the_picture(client, indexed, region, message):  # noqa: F811
    from tests.utils import side_by_side

    _, pictures = indexed
    url = reverse("search:search-page")
    both = side_by_side(pictures["c1.png"], pictures["c4.png"])
    carried = _carried_query(client.post(url, {"image": SimpleUploadedFile("both.png", both), "k": 3}).content.decode())
    page = client.post(url, {"query": carried, "k": 3, "region": region}).content.decode()
    assert "That region cannot be searched with: " in page and message in page
    assert _tiles(page) == [] and _carried_query(page)  # the picture stays, for another box
    retried = client.post(url, {"query": _carried_query(page), "k": 3}).content.decode()
    assert len(_tiles(retried)) == 3 and "data-region-box" not in retried


def test_search_page_refuses_a_missing_altered_or_outdated_query(client, indexed):  # noqa: F811
    from search.services import encoder_activate, encoder_promote
    from tests.utils import make_encoder

    _, pictures = indexed
    url = reverse("search:search-page")
    assert "Choose an image to search with." in client.post(url, {"k": 3}).content.decode()
    carried = _carried_query(client.post(url, {"image": SimpleUploadedFile("q.png", pictures["c1.png"]), "k": 3}).content.decode())
    altered = carried[:-3] + ("AAA" if carried[-3:] != "AAA" else "BBB")
    page = client.post(url, {"query": altered, "k": 3}).content.decode()
    assert "was altered; choose the image again" in page and _tiles(page) == []

    newer = make_encoder(status="trained", seed=1)
    encoder_activate(encoder=newer)
    images_index(image_ids=list(Image.objects.values_list("id", flat=True)), encoders=[newer])
    assert encoder_promote(encoder=newer)
    page = client.post(url, {"query": carried, "k": 3}).content.decode()
    assert "The search engine was updated since that search" in page and _tiles(page) == []


def test_search_page_explains_a_bad_file(client, indexed):  # noqa: F811
    page = client.post(reverse("search:search-page"), {"image": SimpleUploadedFile("q.png", b"garbage"), "k": 3})
    assert page.status_code == 200 and "cannot be searched with: not an image" in page.content.decode()


def test_collection_page_lists_labels_up_to_a_cap_then_offers_a_box(client, monkeypatch):
    from gallery import views
    from gallery.services import collection_get_or_create

    collection = collection_get_or_create(name="labelled")
    Image.objects.bulk_create(
        Image(collection=collection, original_name=f"{label}.png", sha256=label, label=label) for label in ("a", "b", "c")
    )
    url = reverse("gallery:collection-detail", args=[collection.pk])
    assert "Labels (3)" in client.get(url).content.decode()
    monkeypatch.setattr(views, "LABELS_SHOWN", 2)
    page = client.get(url).content.decode()
    assert "Labels (2+)" in page and 'href="?label=b"' in page and 'href="?label=c"' not in page
    assert 'name="label"' in page  # the box for the labels not listed
    assert "c.png" in client.get(url, {"label": "c"}).content.decode()


def test_unknown_pages_get_the_site_404_page(client):
    response = client.get(reverse("gallery:image-detail", args=[999_999]))
    assert response.status_code == 404 and "Not found (404)" in response.content.decode()
    assert reverse("gallery:collection-list") in response.content.decode()


def test_collection_pages_count_from_the_kept_counts_and_from_the_rows_under_a_label(client):
    from gallery.services import collection_get_or_create

    big = collection_get_or_create(name="big")
    Image.objects.bulk_create(
        Image(collection=big, original_name=f"{i:03d}.png", sha256=str(i), status=status, label="odd" if i % 2 else "")
        for i, status in enumerate(["pending"] * 125 + ["failed"] * 5)
    )
    url = reverse("gallery:collection-detail", args=[big.pk])
    last = client.get(url, {"page": 3}).content.decode()
    assert "page 3 of 3" in last and "129.png" in last and "059.png" not in last
    failed = client.get(url, {"status": "failed"}).content.decode()
    assert "page 1 of 1" in failed and "125.png" in failed and "124.png" not in failed
    odd = client.get(url, {"label": "odd", "page": 2}).content.decode()  # 65 odd ones: counted from the rows
    assert "page 2 of 2" in odd and "129.png" in odd and "128.png" not in odd


def _pager(page: str) -> dict[str, str]:
    """The pager's links on a collection page, by rel, unescaped."""
    return {rel: html.unescape(href) for href, rel in re.findall(r'<a href="([^"]*)" rel="(prev|next)">', page)}


def _names(page: str) -> list[str]:
    return re.findall(r'<span title="([^"]+)">', page)


def test_collection_pages_follow_on_from_the_last_image_shown_while_images_come_and_go(client, monkeypatch):
    """The pager's links seek to the image a page starts after (or ends before): no OFFSET, and
    images deleted or added meanwhile neither skip nor repeat one. Labels and statuses stay."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from gallery import views
    from gallery.services import collection_get_or_create

    monkeypatch.setattr(views, "IMAGES_PER_PAGE", 4)
    big = collection_get_or_create(name="big")
    Image.objects.bulk_create(
        Image(collection=big, original_name=f"{i:02d}.png", sha256=str(i), label="odd" if i % 2 else "even") for i in range(20)
    )
    url = reverse("gallery:collection-detail", args=[big.pk])
    first = client.get(url).content.decode()
    assert _names(first) == ["even", "odd", "even", "odd"] and "page 1 of 5" in first
    links = _pager(first)
    assert "prev" not in links and links["next"].startswith("?page=2&after=")
    Image.objects.filter(original_name__in=["00.png", "01.png"]).delete()  # from the page already seen
    with CaptureQueriesContext(connection) as queries:
        second = client.get(url + links["next"]).content.decode()
    assert not [q["sql"] for q in queries if "OFFSET" in q["sql"].upper()]
    seeks = [q["sql"] for q in queries if re.search(r'"gallery_image"\."id" [<>] ', q["sql"])]
    assert len(seeks) == 3 and all("ORDER BY" in sql for sql in seeks)  # the page and its two probes walk the key
    ids = sorted(Image.objects.filter(collection=big).values_list("pk", flat=True))
    shown = [int(href.split("/")[-2]) for href in _tiles(second)]
    assert shown == ids[2:6] and "page 2 of 5" in second  # 04..07; counted from the start, 04 and 05 would be skipped
    back = _pager(second)
    assert back["prev"] == "?"  # the first page needs no seek
    third = client.get(url + back["next"]).content.decode()
    assert [int(href.split("/")[-2]) for href in _tiles(third)] == ids[6:10] and "page 3 of 5" in third
    Image.objects.bulk_create([Image(collection=big, original_name="new.png", sha256="new")])  # after every page seen
    with CaptureQueriesContext(connection) as queries:
        again = client.get(url + _pager(third)["prev"]).content.decode()
    assert _pager(third)["prev"].startswith("?page=2&before=")
    assert not [q["sql"] for q in queries if "OFFSET" in q["sql"].upper()]
    assert _tiles(again) == _tiles(second) and "page 2 of 5" in again
    seen, page = _tiles(second) + _tiles(third), third
    while "next" in _pager(page):
        page = client.get(url + _pager(page)["next"]).content.decode()
        seen += _tiles(page)
    assert [int(href.split("/")[-2]) for href in seen] == ids[2:] + [Image.objects.get(original_name="new.png").pk]
    assert "page 6 of 6" in page  # as the links counted: two images went from the first page since

    odd = client.get(url, {"label": "odd", "status": "pending"}).content.decode()
    following = _pager(odd)["next"]
    assert following.startswith("?label=odd&status=pending&page=2&after=")
    assert set(_names(client.get(url + following).content.decode())) == {"odd"}


@pytest.mark.parametrize("label", ["", "odd"])
def test_collection_pages_nearer_the_end_are_counted_back_from_it_and_the_pager_offers_first_and_last(client, monkeypatch, label):
    """A page typed into the address, or the *last* link, nearer the end than the start is counted
    back from the end (ORDER BY id DESC), so the last page costs what the first does; it shows
    what counting from the start would."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from gallery import views
    from gallery.services import collection_get_or_create

    monkeypatch.setattr(views, "IMAGES_PER_PAGE", 4)
    big = collection_get_or_create(name="big")
    Image.objects.bulk_create(  # 22 images, 11 of them odd: 6 pages, or 3 under the label
        Image(collection=big, original_name=f"{i:02d}.png", sha256=str(i), label="odd" if i % 2 else "") for i in range(22)
    )
    ids = list(Image.objects.filter(collection=big, **({"label": label} if label else {})).order_by("id").values_list("pk", flat=True))
    url = reverse("gallery:collection-detail", args=[big.pk])
    query = {"label": label} if label else {}
    pages = -(-len(ids) // 4)
    first = client.get(url, query).content.decode()
    last_link = re.search(r'<a href="([^"]*)" rel="last">', first)
    assert last_link and html.unescape(last_link[1]) == ("?label=odd&" if label else "?") + f"page={pages}"
    assert 'rel="first"' not in first
    jump = re.search(r'<form method="get" class="jump">(.*?)</form>', first)  # the box to type a page into
    assert jump and f'name="page" min="1" max="{pages}"' in jump[1]
    carried = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', jump[1]))
    assert carried == query
    typed = client.get(url, {**carried, "page": pages - 1}).content.decode()
    assert [int(href.split("/")[-2]) for href in _tiles(typed)] == ids[(pages - 2) * 4 : (pages - 1) * 4]
    for number in range(1, pages + 1):
        with CaptureQueriesContext(connection) as queries:
            page = client.get(url, {**query, "page": number}).content.decode()
        shown = [int(href.split("/")[-2]) for href in _tiles(page)]
        assert shown == ids[(number - 1) * 4 : number * 4] and f"page {number} of {pages}" in page
        backwards = any(re.search(r'ORDER BY "gallery_image"\."id" DESC', q["sql"]) for q in queries)
        assert backwards == ((number - 1) * 4 > len(ids) // 2)
        assert ('rel="first"' in page) == (number > 2) and ('rel="last"' in page) == (number < pages - 1)


@pytest.mark.parametrize(
    "query",
    [
        {"page": "2", "after": "abc"}, {"page": "2", "after": "-1"}, {"page": "2", "after": "9" * 19},
        {"page": "2", "before": "１２"}, {"page": "x2", "after": "1"}, {"page": "2", "after": "999999999"},
    ],
)
def test_collection_pages_count_from_the_start_for_a_link_they_cannot_seek_by(client, monkeypatch, query):
    """A mistyped, hostile or stale seek (no image after it any more) is the page counted from
    the start, as a page number alone is."""
    from gallery import views
    from gallery.services import collection_get_or_create

    monkeypatch.setattr(views, "IMAGES_PER_PAGE", 4)
    big = collection_get_or_create(name="big")
    Image.objects.bulk_create(Image(collection=big, original_name=f"{i:02d}.png", sha256=str(i)) for i in range(10))
    url = reverse("gallery:collection-detail", args=[big.pk])
    response = client.get(url, query)
    number = 1 if query["page"] == "x2" else 2
    assert response.status_code == 200
    assert _tiles(response.content.decode()) == _tiles(client.get(url, {"page": number}).content.decode())
    assert f"page {number} of 3" in response.content.decode()


def test_image_page_refines_its_similar_images_with_the_results_marked(client, indexed, monkeypatch):  # noqa: F811
    """Relevance feedback on an image's page: ticked "more like this" / "less" marks go with
    Refine (a GET form), the page ranks as the selector does with them, shows them ticked, and its
    pager and its hidden fields carry them on; a mark that no longer resolves is set aside, saying so."""
    from gallery import views
    from search.selectors import Feedback, image_list_similar

    monkeypatch.setattr(views, "SIMILAR_PER_PAGE", 2)
    image = Image.objects.get(original_name="c0.png")
    url = reverse("gallery:image-detail", args=[image.pk])
    plain = image_list_similar(image=image, k=5)
    liked, disliked = plain[-1].image.pk, plain[0].image.pk
    marks = Feedback(liked=(liked,), disliked=(disliked,))

    def refined(k: int, offset: int = 0) -> list[str]:
        hits = image_list_similar(image=image, k=k, offset=offset, collection_ids=[image.collection_id], feedback=marks)
        return [reverse("gallery:image-detail", args=[hit.image.pk]) for hit in hits]

    assert refined(5) != [reverse("gallery:image-detail", args=[hit.image.pk]) for hit in plain]  # the marks change the ranking

    first = client.get(url).content.decode()
    assert '<form id="feedback" method="get">' in first and "steered by your marks" not in first
    assert f'name="like" value="{plain[0].image.pk}" form="feedback" data-mark>' in first  # unticked

    page = client.get(url, {"like": liked, "unlike": disliked, "refine": "1"}).content.decode()
    assert _tiles(page) == refined(2) and "steered by your marks" in page
    shown = [int(tile.rstrip("/").rsplit("/", 1)[1]) for tile in _tiles(page)]
    for field, pk in (("like", liked), ("unlike", disliked)):
        ticked = f'name="{field}" value="{pk}" form="feedback" data-mark checked>'
        hidden = f'<input type="hidden" name="{field}" value="{pk}" form="feedback" data-carried-mark>'
        assert (ticked in page) == (pk in shown) and (hidden in page) == (pk not in shown)
    assert f'href="?page=2&amp;like={liked}&amp;unlike={disliked}" rel="next"' in page
    second = client.get(url, {"page": 2, "like": liked, "unlike": disliked}).content.decode()
    assert _tiles(second) == refined(2, offset=2)
    assert 'href="?">clear the marks</a>' in page

    for stale, reason in (("999999", "image 999999 does not exist"), ("abc", "not an image id: abc")):
        set_aside = client.get(url, {"like": stale}).content.decode()
        assert f"Your marks were set aside: {reason}" in set_aside and _tiles(set_aside) == _tiles(first)


def test_search_page_refines_an_upload_search_with_the_results_marked(client, indexed):  # noqa: F811
    from search.selectors import Feedback, encoder_active, image_vector, vector_list_similar

    _, pictures = indexed
    url = reverse("search:search-page")
    query = Image.objects.get(original_name="c0.png")
    first = client.post(url, {"image": SimpleUploadedFile("q.png", pictures["c0.png"]), "k": 6}).content.decode()
    carried = _carried_query(first)
    assert 'form="image-search" data-mark>' in first and "Refine with my marks" in first
    shown = _tiles(first)
    liked = int(shown[-1].rstrip("/").rsplit("/", 1)[1])
    disliked = int(shown[1].rstrip("/").rsplit("/", 1)[1])

    def expected(k: int, offset: int = 0) -> list[str]:
        vector = image_vector(image=query, encoder=encoder_active())  # the upload is the stored picture
        hits = vector_list_similar(
            vector=vector, encoder=encoder_active(), k=k, offset=offset, feedback=Feedback(liked=(liked,), disliked=(disliked,))
        )
        return [reverse("gallery:image-detail", args=[hit.image.pk]) for hit in hits]

    marks = {"query": carried, "k": 3, "like": liked, "unlike": disliked}
    refined = client.post(url, {**marks, "offset": 3, "refine": "1"}).content.decode()  # Refine starts from the nearest
    assert _tiles(refined) == expected(3) and "steered by your marks" in refined
    assert _tiles(client.post(url, {**marks, "offset": 3}).content.decode()) == expected(3, offset=3)  # the pager keeps them
    cleared = client.post(url, {**marks, "marks": "clear"}).content.decode()
    assert _tiles(cleared) == shown[:3] and "steered by your marks" not in cleared
    new = client.post(url, {**marks, "image": SimpleUploadedFile("q.png", pictures["c0.png"])}).content.decode()
    assert _tiles(new) == shown[:3] and "steered" not in new  # a new image: the marks judged the old results
    stale = client.post(url, {**marks, "like": "999999"}).content.decode()
    assert "Your marks were set aside: image 999999 does not exist" in stale and _tiles(stale) == shown[:3]
