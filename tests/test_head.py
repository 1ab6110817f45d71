"""HEAD through the whole WSGI application, as gunicorn calls it: the headers a GET gets, the
same Content-Length, and no body (``cbir_site.head``). Django's test client drops a HEAD body
itself, so these call the application directly."""
import pytest
from django.urls import reverse

from gallery.models import Collection
from tests.utils import wsgi_call

pytestmark = pytest.mark.django_db


# Pages whose body is the same from one request to the next (/api/health/'s holds timings).
@pytest.mark.parametrize("page", ["api-collection-list", "gallery:collection-list", "search:search-page"])
def test_head_answers_a_pages_headers_without_its_body(page):
    Collection.objects.create(name="some")
    path = reverse(page)

    got_status, got_headers, got = wsgi_call("GET", path)
    head_status, head_headers, sent = wsgi_call("HEAD", path)

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
