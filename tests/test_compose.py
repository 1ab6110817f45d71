"""compose.yaml cannot be run here (no Docker engine), so its shape is checked against the code."""
import re
from pathlib import Path

import yaml
from django.conf import settings
from django.urls import reverse

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
