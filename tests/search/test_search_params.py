import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from gallery.models import Collection, Image
from gallery.services import IncomingFile, collection_get_or_create, images_create
from tests.utils import image_bytes, make_encoder
from workers.services import images_index

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_collections():
    """'a' and 'b' hold textured pictures with labels x/y; b holds a byte-identical copy of a/0."""
    make_encoder()
    a, b = collection_get_or_create(name="a"), collection_get_or_create(name="b")
    shared = image_bytes(color=(200, 50, 50), pattern=0)
    images_create(
        collection=a,
        files=[IncomingFile(name="a0", data=shared, label="x")]
        + [IncomingFile(name=f"a{i}", data=image_bytes(color=(200, 40 * i, 50), pattern=i), label="xy"[i % 2]) for i in range(1, 6)],
    )
    images_create(
        collection=b,
        files=[IncomingFile(name="b-copy", data=shared, label="x")]
        + [IncomingFile(name=f"b{i}", data=image_bytes(color=(50, 40 * i, 200), pattern=10 + i), label="y") for i in range(1, 4)],
    )
    images_index(image_ids=list(Image.objects.values_list("id", flat=True)))
    return a, b


def _similar(client, image, **params):
    response = client.get(reverse("api-image-similar", args=[image.pk]), params)
    assert response.status_code == 200, response.content
    return response.json()


def test_several_collections_by_repeat_or_comma(client, two_collections):
    a, b = two_collections
    query = Image.objects.get(original_name="a1")
    everything = {hit["id"] for hit in _similar(client, query, k=50)["results"]}
    repeated = client.get(reverse("api-image-similar", args=[query.pk]), {"collection": ["a", str(b.pk)], "k": 50}).json()
    comma = _similar(client, query, collection=f"a,{b.pk}", k=50)
    only_b = _similar(client, query, collection="b", k=50)
    assert {hit["id"] for hit in repeated["results"]} == {hit["id"] for hit in comma["results"]} == everything
    assert {hit["collection"]["name"] for hit in only_b["results"]} == {"b"} and only_b["count"] == 4


def test_label_and_min_similarity_filters(client, two_collections):
    query = Image.objects.get(original_name="a1")
    labelled = _similar(client, query, label="y", k=50)["results"]
    assert labelled and {hit["label"] for hit in labelled} == {"y"}
    everything = _similar(client, query, k=50, expand=0)["results"]  # plain: ordered by similarity to the query
    threshold = (everything[2]["similarity"] + everything[3]["similarity"]) / 2  # between the 3rd and the 4th
    assert everything[2]["similarity"] > everything[3]["similarity"]
    close = _similar(client, query, min_similarity=threshold, k=50)["results"]
    assert {hit["id"] for hit in close} == {hit["id"] for hit in everything[:3]}  # near-ties may swap places


def test_exact_duplicates_are_left_out_unless_asked(client, two_collections):
    original = Image.objects.get(original_name="a0")
    copy = Image.objects.get(original_name="b-copy")
    assert copy.pk not in [hit["id"] for hit in _similar(client, original, k=50)["results"]]
    kept = _similar(client, original, k=50, exclude="false")["results"]
    assert kept[0]["id"] == copy.pk and kept[0]["distance"] == pytest.approx(0.0, abs=1e-5)
    assert original.pk not in [hit["id"] for hit in kept]  # the query itself never comes back

    upload = {"image": SimpleUploadedFile("q.png", image_bytes(color=(200, 50, 50), pattern=0)), "k": 3}
    found = client.post(reverse("api-search"), upload).json()["results"]
    assert {found[0]["id"], found[1]["id"]} == {original.pk, copy.pk}
    upload = {"image": SimpleUploadedFile("q.png", image_bytes(color=(200, 50, 50), pattern=0)), "k": 3, "exclude": "true"}
    assert not {original.pk, copy.pk} & {hit["id"] for hit in client.post(reverse("api-search"), upload).json()["results"]}


def test_pages_follow_each_other(client, two_collections):
    query = Image.objects.get(original_name="a2")
    whole = [hit["id"] for hit in _similar(client, query, k=6)["results"]]
    first = _similar(client, query, k=3)
    assert first["next"] and "offset=3" in first["next"]
    second = client.get(first["next"]).json()
    assert [hit["id"] for hit in first["results"] + second["results"]] == whole
    assert _similar(client, query, k=50)["next"] is None


@pytest.mark.parametrize(
    "params, name",
    [
        ({"offset": "-1"}, "offset"),
        ({"k": "150", "offset": "900"}, "offset"),
        ({"min_similarity": "2"}, "min_similarity"),
        ({"collection": "a,nope"}, "collection"),
        ({"exclude": "maybe"}, "exclude"),
        ({"expand": "-1"}, "expand"),
        ({"expand": "51"}, "expand"),
    ],
)
def test_invalid_parameters_are_named(client, two_collections, params, name):
    query = Image.objects.get(original_name="a1")
    response = client.get(reverse("api-image-similar", args=[query.pk]), params)
    assert response.status_code == 400 and name in response.json()["errors"], response.json()


@pytest.mark.parametrize("reference", ["a\x00", "\u00b2", "9" * 40, "1" * 5000])
def test_a_collection_reference_that_names_none_is_a_400_also_in_a_form_field(client, two_collections, reference):
    """Found by fuzzing: a NUL reached PostgreSQL (which cannot take one in a string), "²" passed
    str.isdigit() but not int(), and int() refuses a string of over 4,300 digits: each a 500."""
    a, _ = two_collections
    response = client.post(
        reverse("api-search"), {"image": SimpleUploadedFile("q.png", image_bytes(pattern=1)), "collection": reference}
    )
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == ["collection"]


def test_a_collection_named_with_more_digits_than_an_id_holds_is_found_by_its_name(client, two_collections):
    a, _ = two_collections
    long_number = Collection.objects.create(name="4" * 25)
    query = Image.objects.filter(collection=a, status=Image.Status.INDEXED).first()

    response = client.get(reverse("api-image-similar", args=[query.pk]), {"collection": long_number.name})

    assert response.status_code == 200, response.content
    assert response.json()["count"] == 0  # the collection holds no image


def test_a_file_posted_as_the_collection_is_a_400(client, two_collections):
    """Found by fuzzing: a file under a text field's name reached the comma splitting, a 500."""
    upload = {"image": SimpleUploadedFile("q.png", image_bytes(pattern=1)), "collection": SimpleUploadedFile("c.txt", b"a")}
    response = client.post(reverse("api-search"), upload)
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == ["collection"]


@pytest.mark.parametrize("body", [{"collection": ["a", "b"], "k": 3}, [1, 2, 3], "text"], ids=["object", "list", "string"])
def test_a_json_body_to_the_upload_search_is_a_415_that_says_so(client, two_collections, body):
    """Found by fuzzing: each of these was a 500. A JSON body cannot carry the query picture."""
    response = client.post(reverse("api-search"), body, content_type="application/json")
    assert response.status_code == 415, response.content
    assert "application/json" in response.json()["error"]


def test_a_nul_in_any_query_string_is_a_400_naming_the_parameter(client, admin_client, two_collections):
    a, _ = two_collections
    image = Image.objects.filter(collection=a).first()
    api = client.get(reverse("api-image-similar", args=[image.pk]), {"collection": "a", "label": "x\x00"})
    assert api.status_code == 400
    assert api.json() == {"error": "the query string may not contain NUL characters", "errors": {"label": ["may not contain NUL characters"]}}
    page = client.get(reverse("gallery:collection-detail", args=[a.pk]), {"label": "\x00"})
    assert page.status_code == 400 and "'label'" in page.content.decode()
    # Django's own admin list filters would hand it to PostgreSQL too
    admin = admin_client.get("/admin/gallery/image/", {"status__exact": "\x00"})
    assert admin.status_code == 400
    assert admin_client.get("/admin/gallery/image/", {"status__exact": "indexed"}).status_code == 200


@pytest.mark.parametrize("debug", [False, True], ids=["production", "DJANGO_DEBUG"])
def test_a_query_string_with_more_parameters_than_django_parses_is_a_400_that_says_so(client, settings, debug):
    """Found by fuzzing make run: 3,000 parameters were a 500 (Django's debug page read them again),
    and with debug off an API client got an HTML page."""
    settings.DEBUG = debug
    query = "&".join(f"p{n}=1" for n in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))

    api = client.get(f"{reverse('api-collection-list')}?{query}")
    page = client.get(f"{reverse('gallery:collection-list')}?{query}")

    assert (api.status_code, api.json()) == (400, {"error": "more than 1,000 parameters in the query string"})
    assert page.status_code == 400 and "more than 1,000 parameters in the query string" in page.content.decode()
