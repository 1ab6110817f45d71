import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image as PILImage

from gallery import imaging
from gallery.models import Image
from gallery.selectors import COVER_IMAGES
from gallery.services import IncomingFile, collection_get_or_create, images_create
from search.selectors import upload_list_similar
from tests.utils import image_bytes, make_encoder
from workers.services import images_index

pytestmark = pytest.mark.django_db

COLORS = [(220, 20, 20), (20, 220, 20), (20, 20, 220), (220, 220, 20), (20, 220, 220), (220, 20, 220)]


@pytest.fixture
def indexed():
    """Six indexed images (embedded synchronously with a real encoder) and one failed upload."""
    make_encoder()
    collection = collection_get_or_create(name="colours")
    pictures = {f"c{i}.png": image_bytes(color=color, pattern=i) for i, color in enumerate(COLORS)}
    images_create(
        collection=collection,
        files=[IncomingFile(name=name, data=data, label=f"L{i % 2}") for i, (name, data) in enumerate(pictures.items())]
        + [IncomingFile(name="bad.png", data=b"nope")],
    )
    images_index(image_ids=list(Image.objects.values_list("id", flat=True)))
    assert Image.objects.filter(status=Image.Status.INDEXED).count() == 6
    return collection, pictures


def test_search_by_upload_finds_the_same_picture_first(client, indexed):
    collection, pictures = indexed
    response = client.post(reverse("api-search"), {"image": SimpleUploadedFile("q.png", pictures["c3.png"]), "k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    first = body["results"][0]
    assert first["original_name"] == "c3.png"
    assert first["distance"] == pytest.approx(0.0, abs=1e-5) and first["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert set(first) == {"id", "collection", "label", "original_name", "image_url", "thumbnail_url", "distance", "similarity"}
    assert first["collection"] == {"id": collection.pk, "name": "colours"}
    assert first["thumbnail_url"].startswith("http://testserver/media/thumbnails/") and first["thumbnail_url"].endswith(".webp")
    distances = [hit["distance"] for hit in body["results"]]
    assert distances == sorted(distances)


def test_upload_search_pages_through_its_next_link(client, indexed):
    """An upload search can only be paged by posting the same picture again: to the ``next`` URL,
    whose query string (offset, k) wins over the form's fields."""
    _, pictures = indexed
    url = reverse("api-search")

    def post(target, **fields):
        response = client.post(target, {"image": SimpleUploadedFile("q.png", pictures["c3.png"]), **fields})
        assert response.status_code == 200, response.content
        return response.json()

    everything = [hit["id"] for hit in post(url, k=6)["results"]]
    first = post(url, k=2)
    assert [hit["id"] for hit in first["results"]] == everything[:2]
    assert "offset=2" in first["next"] and "k=2" in first["next"]
    second = post(first["next"], k=2)  # the form still says offset 0: the link's offset counts
    assert [hit["id"] for hit in second["results"]] == everything[2:4]
    third = post(second["next"])
    assert [hit["id"] for hit in third["results"]] == everything[4:6]
    assert post(f"{url}?k=3", k=5)["count"] == 3  # the query string wins over the form
    assert post(f"{url}?image=c0.png", k=1)["results"][0]["original_name"] == "c3.png"  # but not over the upload
    response = client.post(f"{url}?k=zero", {"image": SimpleUploadedFile("q.png", pictures["c3.png"])})
    assert response.status_code == 400 and "k" in response.json()["errors"]


def test_upload_search_with_a_region_searches_with_that_part_of_the_picture(client, indexed):
    from tests.utils import side_by_side

    _, pictures = indexed
    both = side_by_side(pictures["c1.png"], pictures["c4.png"])
    url = reverse("api-search")

    def post(**fields):
        return client.post(url, {"image": SimpleUploadedFile("both.png", both), "k": 6, **fields})

    whole = post().json()["results"]
    left, right = (post(region=region).json()["results"] for region in ("0,0,0.5,1", "0.5,0,1,1"))
    assert left[0]["original_name"] == "c1.png" and left[0]["similarity"] > 0.99  # the same pixels
    assert right[0]["original_name"] == "c4.png" and right[0]["similarity"] > 0.99
    assert {hit["id"] for hit in whole} == {hit["id"] for hit in left} == {hit["id"] for hit in right}
    assert max(hit["similarity"] for hit in whole) < left[0]["similarity"]  # the whole is neither picture
    assert [hit["id"] for hit in post(region="0,0,1,1").json()["results"]] == [hit["id"] for hit in whole]
    # in the query string too, where the next page of a region's search keeps it
    first = client.post(f"{url}?region=0,0,0.5,1", {"image": SimpleUploadedFile("both.png", both), "k": 3}).json()
    assert [hit["id"] for hit in first["results"]] == [hit["id"] for hit in left[:3]] and "offset=3" in first["next"]

    for region, message in (
        ("0,0,0.5", "a region is four fractions"),
        ("0.5,0,0.5,1", "with left before right"),
        ("-0.1,0,1,1", "each from 0 to 1"),
        ("0,0,1,0.1", "the region is 128×5 pixels of the 128×48 picture; it must be at least 8 pixels each way"),
    ):
        response = post(region=region)
        assert response.status_code == 400, region
        assert message in response.json()["errors"]["region"][0] and list(response.json()["errors"]) == ["region"]


def test_similar_leaves_the_query_out_and_pins_queries(client, indexed, django_assert_num_queries):
    image = Image.objects.get(original_name="c0.png")
    # image, encoder, query vector, ids of its byte-identical copies, the query's nearest images
    # for query expansion, ranking, images (the search settings come with the connection). The
    # first search also makes a bounded count of the encoder's vectors (then cached for a few
    # minutes), and a collection filter adds the collection and a count of its candidates. With
    # this few vectors every ranking is an exhaustive scan, one statement, whether k asks for
    # fewer images than there are (2) or more (10). expand=0 leaves out the expansion's query.
    for k, counts in ((2, (8, 6, 9)), (10, (7, 6, 8))):
        plain, unexpanded, filtered = counts
        with django_assert_num_queries(plain):
            client.get(reverse("api-image-similar", args=[image.pk]), {"k": k})
        with django_assert_num_queries(unexpanded):
            client.get(reverse("api-image-similar", args=[image.pk]), {"k": k, "expand": 0})
        with django_assert_num_queries(filtered):
            response = client.get(reverse("api-image-similar", args=[image.pk]), {"k": k, "collection": "colours"})
    body = response.json()
    assert response.status_code == 200
    assert body["query"]["id"] == image.pk
    assert body["count"] == 5 and image.pk not in [hit["id"] for hit in body["results"]]


@pytest.mark.parametrize("k", ["0", "201", "ten"])
def test_bad_k_is_a_400_naming_k(client, indexed, k):
    image = Image.objects.get(original_name="c0.png")
    response = client.get(reverse("api-image-similar", args=[image.pk]), {"k": k})
    assert response.status_code == 400 and "k" in response.json()["errors"]


def test_unknown_collection_is_a_400(client, indexed):
    response = client.post(reverse("api-search"), {"image": SimpleUploadedFile("q.png", image_bytes()), "collection": "nope"})
    assert response.status_code == 400 and "collection" in response.json()["errors"]


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"just some text", "not an image"),
        (image_bytes(size=(300, 300), fmt="JPEG", pattern=5)[:700], "truncated or corrupt"),
    ],
)
def test_bad_upload_is_a_400_with_reason(client, indexed, data, reason):
    response = client.post(reverse("api-search"), {"image": SimpleUploadedFile("q.jpg", data)})
    assert response.status_code == 400
    assert reason in response.json()["error"]


def test_missing_image_field_is_a_400(client, indexed):
    response = client.post(reverse("api-search"), {"k": 3})
    assert response.status_code == 400 and "image" in response.json()["errors"]


def test_unknown_image_is_404_and_failed_image_is_409(client, indexed):
    assert client.get(reverse("api-image-similar", args=[999_999])).status_code == 404
    failed = Image.objects.get(original_name="bad.png")
    response = client.get(reverse("api-image-similar", args=[failed.pk]))
    assert response.status_code == 409 and response.json()["status"] == "failed"
    assert response.json()["error"] == f"image {failed.pk} has no similar images: it could not be indexed ({failed.error})"


def test_no_active_encoder_is_503(client):
    collection = collection_get_or_create(name="empty")
    response = client.post(reverse("api-search"), {"image": SimpleUploadedFile("q.png", image_bytes())})
    assert response.status_code == 503 and "no active encoder" in response.json()["error"]
    assert collection.pk


def test_an_active_encoder_whose_checkpoint_cannot_be_loaded_is_503_not_a_crash(client):
    """Its file deleted, corrupt, or on a volume this web server lacks: search says so and the
    page still renders, instead of answering 500."""
    import os

    collection_get_or_create(name="lost")
    encoder = make_encoder()
    os.unlink(encoder.checkpoint.path)
    response = client.post(reverse("api-search"), {"image": SimpleUploadedFile("q.png", image_bytes())})
    assert response.status_code == 503
    assert response.json()["error"] == (
        f"the checkpoint of encoder #{encoder.pk} could not be loaded (FileNotFoundError); the server's log says why"
    )
    page = client.post(reverse("search:search-page"), {"image": SimpleUploadedFile("q.png", image_bytes()), "k": 5})
    assert page.status_code == 200 and "could not be loaded (FileNotFoundError)" in page.content.decode()
    assert encoder.checkpoint.path not in page.content.decode()  # no server path shown


def test_collection_api_counts(client, indexed):
    collection, _ = indexed
    body = client.get(reverse("api-collection-detail", args=[collection.pk])).json()
    assert body["images"] == {"total": 7, "indexed": 6, "pending": 0, "failed": 1}
    listing = client.get(reverse("api-collection-list")).json()["results"]
    assert [(c["name"], c["images"]["indexed"]) for c in listing] == [("colours", 6)]
    latest = Image.objects.filter(status=Image.Status.INDEXED).order_by("-indexed_at", "-id")[:COVER_IMAGES]
    covers = [{"id": image.pk, "thumbnail_url": f"http://testserver{image.thumbnail.url}"} for image in latest]
    assert len(covers) == COVER_IMAGES and listing[0]["covers"] == covers
    assert body["covers"] == covers  # one collection gives the same as the list


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_large_photo_searched_with_gets_the_vector_its_stored_copy_got(client, indexed, fmt):
    """The workers decode a stored photo at JPEG draft scale and reduce it before the encoder; a
    search upload of the same file goes through the same steps, so the same file has one vector
    (when search decoded at full size, this 1200x900 photo did not come back at zero distance)."""
    collection, _ = indexed
    photo = image_bytes(size=(1200, 900), pattern=7, fmt=fmt)
    images_create(collection=collection, files=[IncomingFile(name="photo", data=photo)])
    stored = Image.objects.get(original_name="photo")
    images_index(image_ids=[stored.id])

    [hit] = upload_list_similar(data=photo, k=1)
    assert hit.image.id == stored.id
    assert hit.distance < 1e-9
    response = client.post(reverse("api-search"), {"image": SimpleUploadedFile("q", photo), "k": 1})
    assert response.status_code == 200, response.content
    assert response.json()["results"][0]["id"] == stored.id


def test_a_panorama_is_searched_with_without_a_full_size_square(client, indexed, monkeypatch):
    """An upload of extreme aspect ratio is reduced before the encoder pads it to a square: the
    largest picture made on the way is the working side's square, not 12,000 pixels' square."""
    made = []
    new = PILImage.new

    def recording_new(mode, size, *args, **kwargs):
        made.append(size)
        return new(mode, size, *args, **kwargs)

    monkeypatch.setattr(PILImage, "new", recording_new)
    panorama = image_bytes(size=(12000, 8), pattern=3)
    response = client.post(reverse("api-search"), {"image": SimpleUploadedFile("wide.png", panorama), "k": 2})
    assert response.status_code == 200, response.content
    assert len(response.json()["results"]) == 2
    squares = [width for width, height in made if width == height]
    assert squares and max(squares) <= imaging.WORKING_SIDE


def _refined_similarities(query: Image, liked: list[Image], disliked: list[Image]) -> dict[int, float]:
    """Every image's cosine similarity to Rocchio's refined query, computed here from the
    stored vectors: the query's unit vector, plus 0.75 times the liked ones' mean, minus 0.15
    times the disliked ones' mean."""
    import numpy as np

    from search.models import Embedding

    vectors = {row.image_id: np.asarray(row.vector, dtype=np.float64) for row in Embedding.objects.all()}
    unit = {image_id: v / np.linalg.norm(v) for image_id, v in vectors.items()}
    refined = unit[query.pk] + 0.75 * np.mean([unit[i.pk] for i in liked], 0)
    if disliked:
        refined -= 0.15 * np.mean([unit[i.pk] for i in disliked], 0)
    refined /= np.linalg.norm(refined)
    return {image_id: float(v @ refined) for image_id, v in unit.items()}


def test_marked_results_steer_the_search_toward_what_is_liked(client, indexed):
    """Relevance feedback: the images marked ``like`` pull the query toward them and those marked
    ``unlike`` push it away (Rocchio), so the least similar image, liked, climbs the ranking."""
    query = Image.objects.get(original_name="c0.png")
    url = reverse("api-image-similar", args=[query.pk])
    plain = client.get(url, {"k": 5, "expand": 0}).json()["results"]
    last, first = Image.objects.get(pk=plain[-1]["id"]), Image.objects.get(pk=plain[0]["id"])

    response = client.get(url, {"k": 5, "expand": 0, "like": str(last.pk), "unlike": str(first.pk)})
    assert response.status_code == 200, response.content
    refined = response.json()["results"]
    expected = _refined_similarities(query, [last], [first])
    del expected[query.pk]  # /similar/ leaves the query out
    assert [hit["id"] for hit in refined] == sorted(expected, key=lambda image_id: (-expected[image_id], image_id))
    for hit in refined:
        assert hit["similarity"] == pytest.approx(expected[hit["id"]], abs=1e-4)
    ranks = [hit["id"] for hit in refined]
    assert ranks.index(last.pk) < 4 and ranks.index(first.pk) > 0  # the liked image climbed, the disliked one fell

    # the same marks by an upload search (form fields, and several ids separated by commas)
    liked = Image.objects.filter(original_name__in=["c4.png", "c5.png"]).order_by("id")
    uploaded = client.post(
        reverse("api-search"),
        {"image": SimpleUploadedFile("q.png", indexed[1]["c0.png"]), "k": 6, "expand": 0, "like": ",".join(str(i.pk) for i in liked)},
    )
    assert uploaded.status_code == 200, uploaded.content
    expected = _refined_similarities(query, list(liked), [])
    for hit in uploaded.json()["results"]:
        assert hit["similarity"] == pytest.approx(expected[hit["id"]], abs=1e-3)


def test_bad_marks_are_a_400_naming_like_or_unlike(client, indexed):
    query = Image.objects.get(original_name="c0.png")
    other = Image.objects.get(original_name="c1.png")
    failed = Image.objects.get(original_name="bad.png")
    url = reverse("api-image-similar", args=[query.pk])
    for params, field, message in (
        ({"like": "999999"}, "like", "image 999999 does not exist, so it cannot steer the search"),
        ({"unlike": str(failed.pk)}, "unlike", f"image {failed.pk} is not indexed, so it cannot steer the search"),
        ({"like": "abc"}, "like", "A valid integer is required."),
        ({"like": "0"}, "like", "greater than or equal to 1"),
        ({"like": str(other.pk), "unlike": str(other.pk)}, "unlike", f"image {other.pk} is marked both more and less like this"),
        ({"like": ",".join(str(i) for i in range(1, 202))}, "like", "no more than 200"),
    ):
        response = client.get(url, params)
        assert response.status_code == 400, params
        errors = response.json()["errors"]
        assert list(errors) == [field] and message in str(errors[field]), (params, errors)
