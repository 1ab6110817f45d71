"""The OpenAPI schema validates, and real responses match the shapes it promises."""
import jsonschema
import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from drf_spectacular.validation import validate_schema

from gallery.models import Image
from tests.search.test_apis import indexed  # noqa: F401  (fixture)
from tests.utils import image_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(client):
    response = client.get(reverse("api-schema"))
    assert response.status_code == 200
    document = yaml.safe_load(response.content)
    validate_schema(document)
    return document


def _json_schema(openapi_schema):
    """OpenAPI 3.0 'nullable' as JSON Schema null types, recursively."""
    if isinstance(openapi_schema, dict):
        converted = {k: _json_schema(v) for k, v in openapi_schema.items() if k != "nullable"}
        if openapi_schema.get("nullable") and "type" in converted:
            converted["type"] = [converted["type"], "null"]
        elif openapi_schema.get("nullable"):  # a nullable reference: allOf [$ref] + nullable
            converted = {"anyOf": [converted, {"type": "null"}]}
        if "$ref" in converted:
            converted["$ref"] = converted["$ref"].replace("#/components/schemas/", "#/definitions/")
        return converted
    if isinstance(openapi_schema, list):
        return [_json_schema(item) for item in openapi_schema]
    return openapi_schema


def assert_matches(schema, path, method, status, body):
    operation = schema["paths"][path][method]
    response_schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
    definitions = _json_schema(schema["components"]["schemas"])
    jsonschema.validate(body, {**_json_schema(response_schema), "definitions": definitions})


def test_every_endpoint_is_documented(schema):
    assert set(schema["paths"]) >= {
        "/api/images/{image_id}/similar/", "/api/search/", "/api/images/", "/api/collections/", "/api/collections/{collection_id}/",
        "/api/collections/{collection_id}/images/", "/api/health/", "/api/images/{image_id}/copies/",
    }
    similar = schema["paths"]["/api/images/{image_id}/similar/"]["get"]
    assert {p["name"] for p in similar["parameters"]} >= {"k", "offset", "collection", "label", "min_similarity", "exclude"}
    assert set(similar["responses"]) == {"200", "400", "404", "409", "503"}


def test_responses_match_the_schema(client, schema, indexed):  # noqa: F811
    collection, pictures = indexed
    image = Image.objects.filter(status="indexed").first()
    similar = client.get(reverse("api-image-similar", args=[image.pk]), {"k": 2})
    assert_matches(schema, "/api/images/{image_id}/similar/", "get", 200, similar.json())
    bad = client.get(reverse("api-image-similar", args=[image.pk]), {"k": 0})
    assert_matches(schema, "/api/images/{image_id}/similar/", "get", 400, bad.json())
    failed = Image.objects.get(status="failed")
    assert_matches(schema, "/api/images/{image_id}/similar/", "get", 409, client.get(reverse("api-image-similar", args=[failed.pk])).json())
    copies = client.get(reverse("api-image-copies", args=[image.pk]))
    assert copies.status_code == 200
    assert_matches(schema, "/api/images/{image_id}/copies/", "get", 200, copies.json())
    assert_matches(schema, "/api/images/{image_id}/copies/", "get", 409, client.get(reverse("api-image-copies", args=[failed.pk])).json())
    search = client.post(reverse("api-search"), {"image": SimpleUploadedFile("q.png", pictures["c1.png"])})
    assert_matches(schema, "/api/search/", "post", 200, search.json())
    upload = client.post(reverse("api-image-upload"), {"collection": collection.pk, "files": [SimpleUploadedFile("n.png", image_bytes(pattern=77))]})
    assert_matches(schema, "/api/images/", "post", 202, upload.json())
    assert_matches(schema, "/api/collections/", "get", 200, client.get(reverse("api-collection-list")).json())
    detail = client.get(reverse("api-collection-detail", args=[collection.pk])).json()
    assert_matches(schema, "/api/collections/{collection_id}/", "get", 200, detail)
    images = client.get(reverse("api-collection-images", args=[collection.pk]), {"limit": 2})
    assert images.json()["next"] and images.json()["results"][0]["status"]
    assert_matches(schema, "/api/collections/{collection_id}/images/", "get", 200, images.json())
    bad_page = client.get(reverse("api-collection-images", args=[collection.pk]), {"status": "lost"})
    assert_matches(schema, "/api/collections/{collection_id}/images/", "get", 400, bad_page.json())


def test_interactive_docs_are_served_without_a_cdn(client):
    page = client.get(reverse("api-docs")).content.decode()
    assert "swagger-ui" in page and "cdn.jsdelivr" not in page and "unpkg.com" not in page


def test_every_api_route_answers_options_and_other_methods_without_a_server_error(admin_client):
    """Found by fuzzing every route with every method: OPTIONS on the docs page was a 500 (its
    HTML renderer has no template for the metadata DRF answers OPTIONS with)."""
    from cbir_site.api_urls import urlpatterns

    answers = {}
    for route in urlpatterns:
        path = "/api/" + str(route.pattern).replace("<int:collection_id>", "1").replace("<int:image_id>", "1")
        for method in ("options", "head", "put", "patch", "delete"):
            answers[method.upper(), path] = getattr(admin_client, method)(path).status_code
    assert len(answers) == 5 * len(urlpatterns)
    assert {key: code for key, code in answers.items() if code >= 500} == {}
    assert answers["OPTIONS", "/api/docs/"] == 405 and answers["HEAD", "/api/docs/"] == 200
