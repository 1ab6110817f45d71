"""compose.yaml cannot be run here (no Docker engine), so its shape is checked against the code."""
import os
import re
import time
from pathlib import Path

import yaml
from django.conf import settings
from django.urls import reverse

from cbir_site import embedded

ROOT = Path(settings.BASE_DIR)


def test_compose_describes_the_production_services():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"db", "redis", "web", "worker", "beat", "migrate"} <= set(services)
    assert "pgvector" in services["db"]["image"] and "pg18" in services["db"]["image"]
    worker = services["worker"]
    assert worker["command"][:4] == ["celery", "-A", "workers", "worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    web_check = " ".join(services["web"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:8000{reverse('api-health')}" in web_check
    assert "127.0.0.1" in services["web"]["environment"]["DJANGO_ALLOWED_HOSTS"]
    assert "inspect ping" in services["worker"]["healthcheck"]["test"][1]
    for name in ("web", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and env["REDIS_URL"].startswith("redis://")
        assert env["DJANGO_DEBUG"] == "0" and "DJANGO_SECRET_KEY" in env


def test_every_variable_compose_sets_is_read_by_the_code():
    compose_text = (ROOT / "compose.yaml").read_text()
    code = "\n".join(p.read_text() for p in (ROOT / "cbir_site").glob("*.py"))
    for variable in set(re.findall(r"^\s+((?:DJANGO|CBIR)_[A-Z_]+):", compose_text, flags=re.M)):
        assert f'"{variable}"' in code, variable


def _dockerfile_command() -> list[str]:
    import json

    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    return json.loads(lines[-1][len("CMD "):])


def test_the_web_server_answers_an_upload_that_takes_longer_than_its_timeout(transactional_db, media_root):
    """The image's gunicorn ran synchronous workers, whose --timeout (60 s) bounds a whole request:
    an upload that took longer to arrive (50 MB on a slow link, a large zip to the admin) had its
    worker killed mid-way, and the client got a 500. Here the Dockerfile's own command runs with
    a 3 s timeout, and a request whose body arrives over 6 s must still get the app's answer."""
    import http.client
    import signal
    import socket
    import subprocess
    import sys

    from tests.utils import database_url, make_encoder

    make_encoder()  # so that the answer is about the uploaded file, which it had to read in full
    command = _dockerfile_command()
    assert command[0] == "gunicorn"
    port = embedded.free_port()
    options = {"--bind": f"127.0.0.1:{port}", "--timeout": "3", "--workers": "1"}
    command = [options.get(previous, option) for previous, option in zip(["", *command], command)]
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.CELERY_BROKER_URL,
        "CBIR_MEDIA_ROOT": str(media_root),
        "CBIR_VAR_DIR": str(settings.VAR_DIR),
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "test",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "CBIR_PRIVATE": "0",
    }
    server = subprocess.Popen([sys.executable, "-m", *command], env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.2)
        boundary = "slowupload"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode() + b"not an image " * 400 + f"\r\n--{boundary}--\r\n".encode()
        step = len(body) // 8 + 1

        def slowly():  # the body in 8 pieces, over 6 s
            for index in range(0, len(body), step):
                yield body[index : index + step]
                time.sleep(6 / 8)

        client = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        client.request(
            "POST", "/api/search/", body=slowly(),
            headers={"Content-Length": str(len(body)), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        response = client.getresponse()
        answer = response.read().decode()
        client.close()
        assert response.status == 400, answer
        assert "not an image in an accepted format" in answer
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
