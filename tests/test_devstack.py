"""`make run`'s web server, started as `cbir_site.devstack` starts it, on the test database."""
import os
import time
import urllib.error
import urllib.request

import psycopg
import pytest
from django.conf import settings

from cbir_site import devstack, embedded
from tests.utils import database_url

pytestmark = pytest.mark.django_db

APP_NAME = "cbir-devstack-test"  # libpq's PGAPPNAME: tells the server's connections apart


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _server_connections(database: psycopg.Connection) -> int:
    return database.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [APP_NAME]).fetchone()[0]


def test_the_development_server_keeps_no_database_connection_after_its_requests():
    """It serves each request on a new thread. With kept connections (CBIR_DB_CONN_MAX_AGE above 0)
    each thread's connection outlived it until collected: browsing the gallery filled
    PostgreSQL's 100 connection slots, and every page then answered 503."""
    port = embedded.free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CBIR_VAR_DIR": str(settings.VAR_DIR),
        "PGAPPNAME": APP_NAME,
    }
    server = devstack.web_process(env=env, host="127.0.0.1", port=str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _get(f"{base}/api/health/") == 200:
                    break
            except OSError:  # not listening yet
                pass
            assert server.poll() is None, "the development server exited"
            assert time.monotonic() < deadline, "the development server did not answer in 120 s"
            time.sleep(0.5)
        statuses = [_get(f"{base}{path}") for _ in range(20) for path in ("/", "/api/collections/", "/search/")]
        assert statuses == [200] * 60
        with psycopg.connect(database_url(), autocommit=True) as database:
            deadline = time.monotonic() + 10
            while (held := _server_connections(database)) > 0 and time.monotonic() < deadline:
                time.sleep(0.2)
        assert held == 0, f"{held} database connections left open by 60 finished requests"
    finally:
        server.terminate()
        server.wait(timeout=30)
