"""Every API error as the same JSON shape: ``error`` for a person, as in the views' own 400s; a
NUL character in a query string as a 400; and a database that does not answer as a 503, for the
API and the pages alike."""
import logging
import re

from django.apps import apps
from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.views import defaults
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)

# Django refuses these requests while parsing them, before any view sees a field; left to
# Django, a client would get an HTML page that says only "Bad Request (400)".
_REFUSED_REQUESTS = {
    TooManyFilesSent: lambda: (
        f"more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES:,} files in one request (CBIR_MAX_FILES_PER_UPLOAD): "
        "send them in several requests, or as one .zip"
    ),
    TooManyFieldsSent: lambda: f"more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:,} form fields in one request",
    RequestDataTooBig: lambda: f"the request's form fields exceed {settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes",
}


# What get_object_or_404 says: the model's class name, which a client need not know.
_NO_MATCH = re.compile(r"No (\w+) matches the given query\.")


def _not_found_said(message: str) -> str:
    """``message`` of an Http404, with "No MoveRun matches the given query." said as "no such
    image move" (the model's verbose name); any other message as it is."""
    found = _NO_MATCH.fullmatch(message)
    model = next((model for model in apps.get_models() if found and model._meta.object_name == found[1]), None)
    return f"no such {model._meta.verbose_name}" if model else message


def api_exception_handler(exc, context):
    """DRF's own errors (404 from get_object_or_404, 401/403 from permissions, 405, 415) say
    ``detail``; renamed to ``error``, what every view of this API answers with (a 404 names what
    is missing by its verbose name: "no such image"). Requests that
    Django refuses while parsing them get a JSON 400 that says why."""
    for refused, message in _REFUSED_REQUESTS.items():
        if isinstance(exc, refused):
            return Response({"error": message()}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = Http404(_not_found_said(str(exc)))
    response = exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and set(response.data) == {"detail"}:
        response.data = {"error": str(response.data["detail"])}
    return response


class NulCharacterMiddleware:
    """A query string holding a NUL character gets a 400 that names the parameter: JSON under
    /api/, plain text elsewhere. PostgreSQL cannot hold a NUL in a string, so a filter made from
    such a parameter (a label, a collection's name, the admin's list filters) failed with a 500.
    So does one with more parameters than Django parses (``DATA_UPLOAD_MAX_NUMBER_FIELDS``), which
    this is the first to read: with ``DJANGO_DEBUG`` on, Django's error page read them again and
    failed, a 500, and with it off an API client got an HTML page."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        try:
            names = sorted({name for name, values in request.GET.lists() if "\x00" in "".join([name, *values])})
        except TooManyFieldsSent:
            return _bad_request(
                request, f"more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:,} parameters in the query string"
            )
        if not names:
            return self.get_response(request)
        errors = {name.replace("\x00", "\\x00"): ["may not contain NUL characters"] for name in names}
        return _bad_request(
            request, "the query string may not contain NUL characters", errors=errors,
            named=", ".join(repr(name) for name in names),
        )


def _bad_request(request, message: str, *, errors: dict | None = None, named: str = "") -> HttpResponse:
    """A 400 saying ``message``: JSON under /api/ (with ``errors`` by parameter, where given),
    plain text elsewhere (naming the parameters ``named``)."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": message, **({"errors": errors} if errors else {})}, status=400)
    return HttpResponse(f"Bad request: {message}{f' ({named})' if named else ''}.", status=400, content_type="text/plain")


# How long a client is told to wait before it tries again while the database does not answer.
RETRY_AFTER_S = 30


class DatabaseUnavailableMiddleware:
    """A request that fails because the database does not answer (down, restarting, out of
    connections) gets a 503 that says so, with ``Retry-After``: JSON under /api/, a plain page
    elsewhere (standalone: rendering the site's layout would need the database). Left to Django,
    API clients got the HTML 500 page."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        logger.error("database unavailable for %s %s: %s", request.method, request.path, exception)
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        if request.path.startswith("/api/"):
            return JsonResponse({"error": "the database is unavailable; try again shortly"}, status=503, headers=headers)
        return HttpResponse(render_to_string("503.html"), status=503, headers=headers)


def not_found(request, exception=None):
    """Django's 404 for a path no view answers (or a view's Http404 outside DRF): under /api/, the
    API's JSON shape, so a client with a mistyped path reads why as for every other error; the
    site's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"error": f"no such API endpoint: {request.path} (GET /api/schema/ lists them)"}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    """Django's 500 for an error no view caught: under /api/, JSON; the site's page elsewhere.
    The error itself is logged by Django (``django.request``) with its traceback."""
    if request.path.startswith("/api/"):
        return JsonResponse(
            {"error": "the server failed on this request; it is logged. Nothing stored before this request is lost; try again in a moment"},
            status=500,
        )
    return defaults.server_error(request)
