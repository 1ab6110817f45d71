"""A HEAD request answered with the headers a GET would get, and no body.

Django's views write the same response for HEAD as for GET, and leave dropping the body to the
server. gunicorn drops it but logs a warning for every such response ("WSGI app sent body bytes on
a no-body response"), so a monitor asking HEAD of a page or of /api/health/ every few seconds
would fill the log. This drops the body here instead, keeping its Content-Length."""
from django.http import HttpRequest, HttpResponseBase


class HeadWithoutBodyMiddleware:
    """The outermost middleware: it sees the response last, once every header is set."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        if request.method != "HEAD":
            return response
        if response.streaming:
            # Not read at all: a file's handle stays registered to close with the response, and
            # a generator is closed with it.
            response.streaming_content = []
        else:
            if not response.has_header("Content-Length"):
                response["Content-Length"] = str(len(response.content))
            response.content = b""
        return response
