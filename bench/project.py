"""What the benchmarks that drive the product in-process share."""
from __future__ import annotations

import atexit
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django(var: Path, **environ: str) -> None:
    """Django set up on the project's own embedded PostgreSQL and files under ``var`` (its
    CBIR_VAR_DIR), with ``environ`` as defaults for other settings."""
    var.mkdir(parents=True, exist_ok=True)
    os.environ["CBIR_VAR_DIR"] = str(var)
    servers_stopped_at_exit(var)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cbir_site.settings")
    for name, value in environ.items():
        os.environ.setdefault(name, value)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def servers_stopped_at_exit(var: Path) -> None:
    """Stop the embedded PostgreSQL and Redis of ``var`` when this benchmark exits, as ``make
    test`` stops its own, so that no server it started keeps memory, or runs autovacuum on the
    rows it deleted, under whatever runs next. Servers that were already running (``make run``
    on that folder, another benchmark) are left running, and so are external ones
    (``DATABASE_URL``)."""
    sys.path.insert(0, str(ROOT))
    from cbir_site import embedded

    if os.environ.get("DATABASE_URL") or embedded.servers_running(var):
        return

    def stop() -> None:
        os.environ["CBIR_VAR_DIR"] = str(var)
        embedded.stop_all()

    atexit.register(stop)


def report_header(*, device: str = "") -> dict:
    """What a benchmark's report begins with, as docs/benchmarks.md records it: the date, the
    machine (and the device the work ran on, where it says one) and the exact command."""
    machine = f"{platform.machine()}, {os.cpu_count()} cores" + (f", {device}" if device else "")
    return {"date": time.strftime("%Y-%m-%d"), "machine": machine, "command": " ".join(sys.argv)}
