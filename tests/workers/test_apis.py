import pytest
from django.urls import reverse

from search.models import EncoderVersion
from tests.search.test_schema import assert_matches, schema  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


def test_health_reports_the_database_the_broker_and_the_active_encoder(client, schema):  # noqa: F811
    encoder = EncoderVersion.objects.create(name="live", arch="patch_kmeans", dim=256, status="active")
    response = client.get(reverse("api-health"))
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] and body["database"]["ok"] and body["broker"]["ok"] and "workers" not in body
    assert body["database"]["active_encoder"] == {"id": encoder.pk, "name": "live"}
    assert_matches(schema, "/api/health/", "get", 200, body)


def test_health_is_503_with_the_reason_when_the_broker_does_not_answer(client, settings, schema):  # noqa: F811
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:9/0"  # a real connection attempt, refused: nothing listens there
    response = client.get(reverse("api-health"), {"workers": "1"})
    assert response.status_code == 503
    body = response.json()
    assert not body["ok"] and body["database"]["ok"] and not body["broker"]["ok"]
    assert "127.0.0.1:9" in body["broker"]["error"] and "refused" in body["broker"]["error"]
    assert "workers" not in body  # not pinged through a broker that is down
    assert_matches(schema, "/api/health/", "get", 503, body)


def test_health_counts_the_workers_that_answer_a_ping(client, celery_worker):
    body = client.get(reverse("api-health"), {"workers": "true"}).json()
    assert body["ok"] and body["workers"]["ok"] and body["workers"]["count"] >= 1


@pytest.mark.django_db(transaction=True)
def test_a_database_that_does_not_answer_gives_a_503_that_says_so(client, database_down):
    api = client.get(reverse("api-collection-list"))
    assert api.status_code == 503 and api["Retry-After"] == "30"
    assert api.json() == {"error": "the database is unavailable; try again shortly"}
    page = client.get(reverse("gallery:collection-list"))
    assert page.status_code == 503 and "The database does not answer just now" in page.content.decode()
    health = client.get(reverse("api-health"))
    assert health.status_code == 503 and not health.json()["database"]["ok"]
