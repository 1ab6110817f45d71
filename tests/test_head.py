"""HEAD through the whole WSGI application, as gunicorn calls it: the headers a GET gets, the
same Content-Length, and no body (``cbir_site.head``). Django's test client drops a HEAD body
itself, so these call the application directly."""
from wsgiref.util import setup_testing_defaults

import pytest
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.urls import reverse

from cbir_site.wsgi import application
from gallery.models import Collection

pytestmark = pytest.mark.django_db


def _call(method: str, path: str) -> tuple[str, dict, bytes]:
    """(status, headers, body) of ``method path`` through the WSGI application, read to the end and
    closed as a server does (the request's start and end would close this test's connection inside
    its transaction, so those signals are held back, as the test client holds them)."""
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD=method, PATH_INFO=path)
    started: dict = {}

    def start_response(status, headers, exc_info=None):
        started.update(status=status, headers=dict(headers))

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        body = application(environ, start_response)
        try:
            sent = b"".join(body)
        finally:
            body.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return started["status"], started["headers"], sent


@pytest.mark.parametrize("page", ["api-health", "gallery:collection-list", "search:search-page"])
def test_head_answers_a_pages_headers_without_its_body(page):
    Collection.objects.create(name="some")
    path = reverse(page)

    got_status, got_headers, got = _call("GET", path)
    head_status, head_headers, sent = _call("HEAD", path)

    assert got and got_status.startswith("200") and head_status == got_status
    assert sent == b""
    assert head_headers["Content-Length"] == got_headers["Content-Length"] == str(len(got))
    assert head_headers["Content-Type"] == got_headers["Content-Type"]


def test_a_streamed_answer_to_head_is_not_read_and_is_closed():
    import inspect

    from django.http import StreamingHttpResponse
    from django.test import RequestFactory

    from cbir_site.head import HeadWithoutBodyMiddleware

    read, made = [], []

    def pieces():
        for piece in (b"one", b"two"):
            read.append(piece)
            yield piece

    def view(request):
        made.append(pieces())
        return StreamingHttpResponse(made[-1])

    response = HeadWithoutBodyMiddleware(view)(RequestFactory().head("/"))
    sent = b"".join(response.streaming_content)
    response.close()  # as the server does once it has sent the headers
    got = HeadWithoutBodyMiddleware(view)(RequestFactory().get("/"))

    assert sent == b"" and read == []
    assert inspect.getgeneratorstate(made[0]) == inspect.GEN_CLOSED
    assert b"".join(got.streaming_content) == b"onetwo" and read == [b"one", b"two"]
