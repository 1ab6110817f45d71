"""Every API error as the same JSON shape: ``error`` for a person, as in the views' own 400s."""
from rest_framework.views import exception_handler


def api_exception_handler(exc, context):
    """DRF's own errors (404 from get_object_or_404, 401/403 from permissions, 405, 415) say
    ``detail``; renamed to ``error``, what every view of this API answers with."""
    response = exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and set(response.data) == {"detail"}:
        response.data = {"error": str(response.data["detail"])}
    return response
