"""`make run`: the whole service on one machine, in the foreground, until Ctrl-C.

Starts (or reuses) the embedded PostgreSQL and Redis unless DATABASE_URL / REDIS_URL point
elsewhere, migrates, runs the first-run bootstrap (admin account, demo collection, encoder
training), then runs a Celery worker and the web app as child processes. Ctrl-C (or SIGTERM)
stops the children, then the embedded servers. Data under var/ is kept for the next run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
HOST = os.environ.get("CBIR_HOST", "127.0.0.1")
PORT = os.environ.get("CBIR_PORT", "8000")


def _manage(*args: str, env: dict) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, check=True)


def web_process(*, env: dict, host: str = HOST, port: str = PORT) -> subprocess.Popen:
    """Django's development server, started as `make run` starts it. It serves each request on a
    thread of its own, so it keeps no database connection between requests
    (CBIR_DB_CONN_MAX_AGE=0)."""
    return subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"{host}:{port}", "--noreload"],
        cwd=BASE_DIR,
        env={**env, "CBIR_DB_CONN_MAX_AGE": "0"},
    )


def main() -> int:
    from cbir_site import embedded

    env = dict(os.environ)
    started_embedded = False
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = embedded.postgres_url()
        started_embedded = True
    if not env.get("REDIS_URL"):
        env["REDIS_URL"] = embedded.redis_url()
        started_embedded = True
    env.setdefault("PYTHONUNBUFFERED", "1")

    children: list[subprocess.Popen] = []
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        _manage("migrate", "--noinput", env=env)
        _manage("bootstrap_demo", env=env)
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers", "worker", "--beat", "--loglevel", "INFO"],
                cwd=BASE_DIR,
                env=env,
            )
        )
        children.append(web_process(env=env))
        password_file = embedded.var_dir() / "admin-password.txt"
        login = f"user 'admin', password in {password_file}" if password_file.exists() else "your existing superuser"
        print(
            f"\n  CBIR is running at  http://{HOST}:{PORT}/\n"
            f"  Admin:              http://{HOST}:{PORT}/admin/  ({login})\n"
            f"  API:                http://{HOST}:{PORT}/api/collections/\n"
            "  Ctrl-C stops everything; data stays in var/.\n",
            flush=True,
        )
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    print(f"a child process exited with code {child.returncode}; stopping", file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        if started_embedded:
            embedded.stop_all()
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
