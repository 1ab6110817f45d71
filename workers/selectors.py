"""Reads about the service's own state: is each part it depends on reachable."""
from __future__ import annotations

import time
from typing import Callable

from django.conf import settings
from django.db import connection
from kombu import Connection

from search.models import EncoderVersion

# A health check answers within seconds even when a dependency hangs instead of refusing.
HEALTH_TIMEOUT_S = 2.0


def _checked(check: Callable[[], dict]) -> dict:
    """``check()``'s details with ``ok`` and the time it took; its error instead, if it raised."""
    started = time.perf_counter()
    try:
        details, ok = check(), True
    except Exception as exc:  # any failure of a dependency is a finding, not a crash of the check
        details, ok = {"error": f"{type(exc).__name__}: {exc}"[:300]}, False
    return {"ok": ok, "ms": round((time.perf_counter() - started) * 1000, 1), **details}


def _database() -> dict:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    active = EncoderVersion.objects.filter(status=EncoderVersion.Status.ACTIVE).values("id", "name").first()
    return {"active_encoder": active}


def _broker() -> dict:
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=HEALTH_TIMEOUT_S) as broker:
        broker.ensure_connection(max_retries=1, interval_start=0, timeout=HEALTH_TIMEOUT_S)
    return {}


def _workers() -> dict:
    from workers.celery import app

    replies = app.control.ping(timeout=HEALTH_TIMEOUT_S / 2) or []
    names = sorted(name for reply in replies for name in reply)
    if not names:
        raise RuntimeError("no worker answered a ping")
    return {"count": len(names), "names": names}


def service_health(*, ping_workers: bool = False) -> dict:
    """Whether the database and the broker answer (and, with ``ping_workers``, how many workers
    do), each with its latency, plus the active encoder. ``ok`` when every part checked is."""
    parts = {"database": _checked(_database), "broker": _checked(_broker)}
    if ping_workers and parts["broker"]["ok"]:
        parts["workers"] = _checked(_workers)
    return {"ok": all(part["ok"] for part in parts.values()), **parts}
