"""Twelve-factor settings: DATABASE_URL / REDIS_URL replace the embedded servers."""
import json
import os
import subprocess
import sys

import pytest

from django.conf import settings
from django.db import connection

from tests.utils import database_url


@pytest.mark.django_db
def test_external_urls_start_no_embedded_server(tmp_path):
    params = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.CELERY_BROKER_URL,
        "CBIR_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_SETTINGS_MODULE": "cbir_site.settings",
    }
    script = (
        "import json, django; django.setup(); from django.conf import settings; from django.db import connection;"
        "connection.ensure_connection();"
        "print(json.dumps([settings.DATABASES['default']['NAME'], settings.CELERY_BROKER_URL]))"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=settings.BASE_DIR, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    name, broker = json.loads(out.stdout.strip().splitlines()[-1])
    assert (name, broker) == (params["NAME"], settings.CELERY_BROKER_URL)
    assert not (tmp_path / "var" / "postgres").exists() and not (tmp_path / "var" / "redis").exists()


@pytest.mark.parametrize("expansion, valid", [(0, True), (3, True), (50, True), (-1, False), (51, False)])
def test_query_expansion_setting_is_checked(settings, expansion, valid):
    from cbir_site.checks import check_cbir_settings

    settings.CBIR_QUERY_EXPANSION = expansion
    ids = [error.id for error in check_cbir_settings(None)]
    assert ("cbir.E004" not in ids) == valid


@pytest.mark.parametrize("limit, valid", [(1, True), (2, True), (0, False), (-3, False)])
def test_export_limit_setting_is_checked(settings, limit, valid):
    from cbir_site.checks import check_cbir_settings

    settings.CBIR_MAX_EXPORTS = limit
    ids = [error.id for error in check_cbir_settings(None)]
    assert ("cbir.E005" not in ids) == valid
