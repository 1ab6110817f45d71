"""A private site (CBIR_PRIVATE): pages, API and media need a signed-in user; the rest stays open."""
import base64

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from rest_framework.authtoken.models import Token

from cbir_site import access
from cbir_site.access import RememberingBasicAuthentication
from gallery.models import Image
from gallery.services import IncomingFile, collection_get_or_create, images_create
from tests.utils import image_bytes

pytestmark = pytest.mark.django_db

PASSWORD = "a long enough passphrase"


@pytest.fixture
def private(settings):
    settings.CBIR_PRIVATE = True


@pytest.fixture
def viewer():
    return User.objects.create_user("viewer", password=PASSWORD)


@pytest.fixture
def stored():
    collection = collection_get_or_create(name="private")
    images_create(collection=collection, files=[IncomingFile(name="red.png", data=image_bytes())])
    return Image.objects.get(collection=collection)


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def test_a_public_site_asks_nobody_to_sign_in(client, stored):
    assert client.get(reverse("gallery:collection-list")).status_code == 200
    assert client.get(reverse("api-collection-list")).status_code == 200


def test_a_private_site_sends_pages_to_sign_in_and_answers_the_api_with_401(client, private, stored):
    page = client.get(reverse("gallery:collection-detail", args=[stored.collection_id]) + "?status=pending")
    assert page.status_code == 302
    assert page["Location"] == f"/accounts/login/?next=/collections/{stored.collection_id}/%3Fstatus%3Dpending"
    assert client.get(stored.file.url).status_code == 302  # the media files too, where Django serves them
    for url in (reverse("api-collection-list"), reverse("api-image-detail", args=[stored.pk]), reverse("api-schema")):
        answer = client.get(url)
        assert answer.status_code == 401 and "Authorization: Token" in answer.json()["error"], url
        assert answer["WWW-Authenticate"] == 'Token realm="api"'
    assert client.post(reverse("api-search"), {"image": image_bytes()}).status_code == 401
    assert client.get(reverse("api-health")).status_code in (200, 503)  # the health check stays open
    assert client.get(reverse("login")).status_code == 200
    assert client.get("/favicon.ico").status_code == 301  # to the icon, as on an open site


def test_pages_name_their_icon_and_favicon_ico_leads_to_it(client):
    """Browsers ask for /favicon.ico on pages that name no icon (the admin's): a 404 on every visit."""
    from django.contrib.staticfiles import finders
    from django.templatetags.static import static

    icon = static("cbir/favicon.svg")
    assert f'<link rel="icon" href="{icon}"' in client.get(reverse("login")).content.decode()
    answer = client.get("/favicon.ico")
    assert (answer.status_code, answer["Location"]) == (301, icon)
    assert finders.find("cbir/favicon.svg")


def test_signing_in_opens_the_private_site_and_signing_out_closes_it(client, private, viewer, stored):
    wrong = client.post(reverse("login"), {"username": "viewer", "password": "not it"})
    assert wrong.status_code == 200 and "do not match" in wrong.content.decode()
    signed_in = client.post(reverse("login"), {"username": "viewer", "password": PASSWORD, "next": "/search/"})
    assert signed_in.status_code == 302 and signed_in["Location"] == "/search/"
    page = client.get(reverse("gallery:collection-list")).content.decode()
    assert "private" in page and "Sign out viewer" in page
    assert client.get(reverse("api-collection-list")).json()["results"][0]["name"] == "private"  # the session counts for the API
    client.post(reverse("logout"))
    assert client.get(reverse("gallery:collection-list")).status_code == 302


def test_api_clients_sign_in_with_a_token_or_http_basic(client, private, viewer, stored):
    token = Token.objects.create(user=viewer)
    url = reverse("api-image-detail", args=[stored.pk])
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {token.key}").json()["id"] == stored.pk
    assert client.get(url, HTTP_AUTHORIZATION=_basic("viewer", PASSWORD)).status_code == 200
    refused = {
        "wrong token": f"Token {token.key[:-1]}x",
        "wrong password": _basic("viewer", "not it"),
        "not base64": "Basic ???",
        "empty token": "Token ",
        "other scheme": f"Bearer {token.key}",
    }
    for why, header in refused.items():
        assert client.get(url, HTTP_AUTHORIZATION=header).status_code == 401, why
    viewer.is_active = False
    viewer.save()
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {token.key}").status_code == 401  # a disabled account's token


def test_a_staff_token_may_delete_and_a_viewer_token_may_not(client, viewer, stored):
    staff = User.objects.create_user("admin2", password=PASSWORD, is_staff=True)
    url = reverse("api-image-detail", args=[stored.pk])
    viewer_token, staff_token = Token.objects.create(user=viewer), Token.objects.create(user=staff)
    assert client.delete(url, HTTP_AUTHORIZATION=f"Token {viewer_token.key}").status_code == 403
    assert client.delete(url, HTTP_AUTHORIZATION=f"Token {staff_token.key}").status_code == 204
    assert not Image.objects.filter(pk=stored.pk).exists()


@pytest.fixture
def password_checks(monkeypatch):
    """The passwords checked (each one Django's slow hash), from a clean memory of credentials."""
    RememberingBasicAuthentication._verified.clear()
    checks, check = [], User.check_password
    monkeypatch.setattr(User, "check_password", lambda user, raw: checks.append(raw) or check(user, raw))
    yield checks
    RememberingBasicAuthentication._verified.clear()


def test_http_basic_checks_a_password_once_until_it_changes(client, private, viewer, stored, password_checks):
    url = reverse("api-collection-list")
    for _ in range(3):
        assert client.get(url, HTTP_AUTHORIZATION=_basic("viewer", PASSWORD)).status_code == 200
    assert password_checks == [PASSWORD]
    for _ in range(2):  # a wrong password is checked every time, and never remembered
        assert client.get(url, HTTP_AUTHORIZATION=_basic("viewer", "not it")).status_code == 401
    assert password_checks == [PASSWORD, "not it", "not it"]
    viewer.set_password("a new long passphrase")
    viewer.save()
    assert client.get(url, HTTP_AUTHORIZATION=_basic("viewer", PASSWORD)).status_code == 401  # at once
    assert client.get(url, HTTP_AUTHORIZATION=_basic("viewer", "a new long passphrase")).status_code == 200
    viewer.is_active = False
    viewer.save()
    assert client.get(url, HTTP_AUTHORIZATION=_basic("viewer", "a new long passphrase")).status_code == 401
    viewer.is_active, viewer.username = True, "renamed"
    viewer.save()
    assert client.get(url, HTTP_AUTHORIZATION=_basic("viewer", "a new long passphrase")).status_code == 401


def test_remembered_credentials_expire(client, private, viewer, stored, password_checks, monkeypatch):
    monkeypatch.setattr(access, "BASIC_AUTH_MEMORY_SECONDS", -1)
    for _ in range(2):
        assert client.get(reverse("api-collection-list"), HTTP_AUTHORIZATION=_basic("viewer", PASSWORD)).status_code == 200
    assert password_checks == [PASSWORD, PASSWORD]


def test_a_staff_call_on_a_private_site_checks_its_password_once(client, private, stored, password_checks):
    """The middleware and the view both authenticate a staff DELETE."""
    User.objects.create_user("admin2", password=PASSWORD, is_staff=True)
    answer = client.delete(reverse("api-image-detail", args=[stored.pk]), HTTP_AUTHORIZATION=_basic("admin2", PASSWORD))
    assert answer.status_code == 204 and not Image.objects.filter(pk=stored.pk).exists()
    assert password_checks == [PASSWORD]
