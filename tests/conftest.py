"""Test fixtures: the real embedded PostgreSQL+pgvector and Redis (started by cbir_site.settings
under CBIR_VAR_DIR), and a real Celery worker consuming from that Redis in a thread."""
from __future__ import annotations

import os
import time

import pytest
from celery.contrib.testing.worker import start_worker

from workers.celery import app as celery_app

WAIT_TIMEOUT_S = 180


def pytest_sessionfinish(session, exitstatus):
    if not os.environ.get("DATABASE_URL") and os.environ.get("CBIR_VAR_DIR"):
        from cbir_site import embedded

        embedded.stop_all()


@pytest.fixture(scope="session", autouse=True)
def encoder_files_removed_after_the_run():
    """The checkpoints and PNGs that the run's encoders leave under VAR_DIR/encoders, about 7 MB
    each and a few hundred MB a run, go at its end, so that running the suite again and again does
    not fill the disk. Files that were there before the run are left alone."""
    from django.conf import settings

    folder = settings.VAR_DIR / "encoders"
    before = set(folder.rglob("*"))
    yield
    for path in set(folder.rglob("*")) - before:
        if path.is_file():
            path.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def fresh_cache():
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """A media volume of the test's own, marked as ``manage.py migrate`` marks it."""
    from gallery.media import media_marker_write

    settings.MEDIA_ROOT = tmp_path / "media"
    media_marker_write()
    return settings.MEDIA_ROOT


@pytest.fixture
def database_down():
    """The default connection pointed at a port where nothing listens: real, refused connections.
    For tests with ``django_db(transaction=True)``: no test transaction is open around them."""
    from django.db import connection

    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT="9")
    yield
    connection.close()
    connection.settings_dict.update(saved)


@pytest.fixture(scope="session")
def celery_session_worker(django_db_setup, django_db_blocker):
    celery_app.control.purge()  # messages left by an earlier, interrupted run
    with django_db_blocker.unblock():
        with start_worker(
            celery_app, pool="solo", concurrency=1, perform_ping_check=False, loglevel="WARNING", shutdown_timeout=60
        ) as worker:
            yield worker


@pytest.fixture
def celery_worker(transactional_db, celery_session_worker):
    """A real worker on the real broker. Tests using it commit for real (transactional_db),
    so the worker thread sees their rows."""
    return celery_session_worker


@pytest.fixture(autouse=True)
def worker_thread_idle_before_the_flush(request):
    """A test that commits for real queues real indexing requests, and the session's worker thread,
    once started by an earlier test, takes them. The database is then emptied (TRUNCATE) at the
    test's end while that thread may still be indexing, and the two deadlocked in CI. So the
    test's leftover messages are purged and the thread's tasks waited for first; this fixture is
    set up after the test's database, so it is torn down before it."""
    from celery.worker import state

    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or bool(marker and marker.kwargs.get("transaction"))
    if transactional:
        request.getfixturevalue("_django_db_helper" if marker else "transactional_db")
    yield
    if transactional:
        celery_app.control.purge()
        wait_for(lambda: not (state.active_requests or state.reserved_requests), message="the worker thread's tasks")


def wait_for(predicate, *, timeout: float = WAIT_TIMEOUT_S, message: str = "condition"):
    """Poll ``predicate`` until it returns something truthy (work done by the worker thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
