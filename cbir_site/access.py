"""A private site (``CBIR_PRIVATE=1``): every page, API call and media file needs a signed-in user.

People sign in at /accounts/login/ (any active user, not only staff). API clients send
``Authorization: Token <key>`` (a key from the admin's Tokens page or ``manage.py drf_create_token
<user>``), or HTTP Basic. The health check, the sign-in pages, the admin (which has its own sign-in
for staff) and static files stay open.
"""
from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework.authentication import BasicAuthentication, TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

OPEN_PATHS = ("/accounts/", "/admin/", "/static/", "/api/health/", "/favicon.ico")
# How long, and for how many credentials, a process remembers HTTP Basic credentials it verified.
BASIC_AUTH_MEMORY_SECONDS = 300
BASIC_AUTH_MEMORY_SIZE = 1024


class RememberingBasicAuthentication(BasicAuthentication):
    """HTTP Basic that remembers credentials it has verified, for ``BASIC_AUTH_MEMORY_SECONDS``.

    Checking a password costs a deliberately slow hash (Django's PBKDF2), and HTTP Basic sends the
    password with every call: an API client paid that hash on each request, twice on a private
    site's staff calls (the middleware, then the view). A remembered pair costs one primary-key
    lookup instead (`bench/basic_auth.py`). Only credentials that passed are remembered, keyed by
    an HMAC of them under SECRET_KEY (never the password). The entry holds the user's stored
    password hash, so a password change, a rename or a deactivation ends it at once. A wrong
    password still costs the full check every time."""

    _verified: OrderedDict[str, tuple[int, str, float]] = OrderedDict()
    _lock = threading.Lock()

    @staticmethod
    def _key(userid: str, password: str) -> str:
        return hmac.new(settings.SECRET_KEY.encode(), f"{userid}\x00{password}".encode(), hashlib.sha256).hexdigest()

    def authenticate_credentials(self, userid, password, request=None):
        key = self._key(userid, password)
        with self._lock:
            entry = self._verified.get(key)
        if entry is not None and entry[2] > time.monotonic():
            user = get_user_model()._default_manager.filter(pk=entry[0]).first()
            if (
                user is not None and user.is_active and user.get_username() == userid
                and hmac.compare_digest(user.password, entry[1])
            ):
                return user, None
        user, auth = super().authenticate_credentials(userid, password, request)
        with self._lock:
            self._verified[key] = (user.pk, user.password, time.monotonic() + BASIC_AUTH_MEMORY_SECONDS)
            self._verified.move_to_end(key)
            while len(self._verified) > BASIC_AUTH_MEMORY_SIZE:
                self._verified.popitem(last=False)
        return user, auth


# The API's own ways to read credentials from the Authorization header (gallery.apis takes the same).
API_AUTHENTICATORS = (TokenAuthentication(), RememberingBasicAuthentication())


def request_signed_in(request: HttpRequest) -> bool:
    """A session of an active user, or an API token or HTTP Basic credentials of one."""
    if request.user.is_authenticated:
        return True
    api_request = Request(request)
    try:
        return any(authenticator.authenticate(api_request) for authenticator in API_AUTHENTICATORS)
    except AuthenticationFailed:  # credentials sent, and wrong: an unknown key, a bad password, a disabled user
        return False


class PrivateSiteMiddleware:
    """With ``CBIR_PRIVATE`` on, what is not in ``OPEN_PATHS`` needs a signed-in user: pages send
    the browser to the sign-in page, API calls get a JSON 401. Off, it lets everything through."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if settings.CBIR_PRIVATE and not request.path.startswith(OPEN_PATHS) and not request_signed_in(request):
            if request.path.startswith("/api/"):
                return JsonResponse(
                    {"error": "authentication required: send 'Authorization: Token <key>' or HTTP Basic credentials"},
                    status=401,
                    headers={"WWW-Authenticate": 'Token realm="api"'},
                )
            return redirect_to_login(request.get_full_path())
        return self.get_response(request)
