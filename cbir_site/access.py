"""A private site (``CBIR_PRIVATE=1``): every page, API call and media file needs a signed-in user.

People sign in at /accounts/login/ (any active user, not only staff). API clients send
``Authorization: Token <key>`` (a key from the admin's Tokens page or ``manage.py drf_create_token
<user>``), or HTTP Basic. The health check, the sign-in pages, the admin (which has its own sign-in
for staff) and static files stay open.
"""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework.authentication import BasicAuthentication, TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

OPEN_PATHS = ("/accounts/", "/admin/", "/static/", "/api/health/")
# The API's own ways to read credentials from the Authorization header (gallery.apis takes the same).
API_AUTHENTICATORS = (TokenAuthentication(), BasicAuthentication())


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
