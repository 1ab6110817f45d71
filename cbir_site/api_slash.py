"""An API path sent without its trailing slash is answered as with it.

Every endpoint's path ends in ``/``. Left to Django (``APPEND_SLASH``), ``GET /api/collections``
was redirected, while ``POST /api/search`` or ``DELETE /api/moves/3`` failed: a 500 with
``DJANGO_DEBUG`` on (Django refuses to redirect a request with a body), and with it off a 301 that
clients follow as a GET, so the upload or the deletion never happened. A client cannot tell
either from its own mistake. Under /api/ only: the site's pages keep Django's redirect."""
from django.http import HttpRequest, HttpResponseBase
from django.urls import is_valid_path


class ApiSlashMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        path = request.path_info
        if path.startswith("/api/") and not path.endswith("/"):
            urlconf = getattr(request, "urlconf", None)
            if not is_valid_path(path, urlconf) and is_valid_path(path + "/", urlconf):
                request.path_info, request.path = path + "/", request.path + "/"
        return self.get_response(request)
