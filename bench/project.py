"""What the benchmarks that drive the product in-process share."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django(var: Path, **environ: str) -> None:
    """Django set up on the project's own embedded PostgreSQL and files under ``var`` (its
    CBIR_VAR_DIR), with ``environ`` as defaults for other settings."""
    var.mkdir(parents=True, exist_ok=True)
    os.environ["CBIR_VAR_DIR"] = str(var)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cbir_site.settings")
    for name, value in environ.items():
        os.environ.setdefault(name, value)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
