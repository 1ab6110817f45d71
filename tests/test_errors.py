"""What a client gets for a path no view answers, and for an error no view catches: under /api/,
JSON in the API's shape (``error``); elsewhere, the site's pages (``cbir_site.api_errors``). And
an API path sent without its trailing slash (``cbir_site.api_slash``)."""
import pytest
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_a_path_no_view_answers_is_a_json_404_under_the_api_and_a_page_elsewhere(client):
    api = client.get("/api/no-such-thing/", HTTP_ACCEPT="text/html")
    mistyped = client.delete("/api/moves/-1/")
    page = client.get("/no-such-page/")

    assert (api.status_code, api["Content-Type"]) == (404, "application/json")
    assert api.json() == {"error": "no such API endpoint: /api/no-such-thing/ (GET /api/schema/ lists them)"}
    assert mistyped.status_code == 404 and mistyped.json()["error"].startswith("no such API endpoint: /api/moves/-1/")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")
    assert "Not found" in page.content.decode()


def test_an_error_no_view_catches_is_a_json_500_under_the_api_and_a_page_elsewhere(monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("a fault injected by the test")

    monkeypatch.setattr("gallery.apis.collection_list_with_covers", failing)
    monkeypatch.setattr("gallery.views.collection_list_with_covers", failing)
    client = Client(raise_request_exception=False)  # as a server answers, instead of raising in the test

    api = client.get(reverse("api-collection-list"))
    page = client.get(reverse("gallery:collection-list"))

    assert (api.status_code, api["Content-Type"]) == (500, "application/json")
    assert api.json()["error"].startswith("the server failed on this request; it is logged.")
    assert page.status_code == 500 and "Server error (500)" in page.content.decode()


def test_an_api_path_without_its_trailing_slash_is_answered_as_with_it(client, admin_client):
    from gallery.models import Collection, Image

    Collection.objects.create(name="some")
    listed = admin_client.get("/api/collections")
    moved = admin_client.post("/api/images/move", {"collection": "some", "images": [999]}, content_type="application/json")
    anonymous = client.post("/api/images/move", {"collection": "some", "images": [999]}, content_type="application/json")
    stopped = admin_client.delete("/api/moves/999")
    page = client.get("/search")

    assert listed.status_code == 200 and [row["name"] for row in listed.json()["results"]] == ["some"]
    assert moved.status_code == 200 and moved.json()["missing"] == [999] and not Image.objects.exists()
    assert anonymous.status_code in (401, 403) and anonymous["Content-Type"] == "application/json"
    assert stopped.status_code == 404 and stopped.json()["error"] == "no such image move"
    assert page.status_code == 301 and page["Location"] == "/search/"  # the pages keep Django's redirect
