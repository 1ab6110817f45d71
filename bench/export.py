"""Downloading a collection as a zip: the cost of ``gallery.export.images_export_zip`` (the
API's, the admin's and ``export_collection``'s archive) against Python's zipfile writing the same
stored files with nothing else, in the same run, and the memory the export holds while it runs.

    .venv/bin/python bench/export.py [--images 2000] [--rounds 3]
    .venv/bin/python bench/export.py --small 100000 [--rounds 3]   # many small files

With ``--small N``, the collection is instead N rows loaded with COPY, in 10 labels, each naming
the same stored 64x48 PNG (with made-up SHA-256s, so the read-back check skips them) (the cost a file adds, apart from its bytes: a member header, a
name made safe and unique, a manifest row, a file opened).

The photos are ``bench/ingest.py``'s 1024x768 JPEGs (made once into var/bench/photos from the
shared OpenMoji set, labelled by its subgroups), imported once into a collection of an embedded
PostgreSQL under var/bench-export (no worker is needed: an export reads the originals). Each
round writes the archive twice, into a sink that counts the bytes and keeps none (the socket of
a download, without the network), alternating which goes first:
- baseline: the collection's stored file names read in one query, then ``ZipFile.write`` of each
  (stored, not compressed, as the export does), to the same kind of sink: no manifest, no names
  made safe or unique, no label folders, every file at the top;
- product: ``images_export_zip`` of the collection's images, its pieces taken as a response would send them.
A round first reads every file once (not timed), so both find them in the page cache. Wall and
CPU time per round (medians), MB/s of archive, their ratio; and each one's peak of Python
allocations (tracemalloc, in a round of its own, untimed): zipfile keeps a ``ZipInfo`` of every
member until it writes the central directory, the export spools its records to a temporary file.
With ``--http``, the rounds instead download the archive through gunicorn, as ``compose.yaml``
serves the web (one process of 4 threads here; ``GET /api/collections/{id}/export/`` with a staff
token), read by a client in 1 MB pieces and thrown away, against the in-process export into the
sink above (the baseline: the same archive without the server and the socket), alternating.
Then two downloads at once (``CBIR_MAX_EXPORTS``' default), and a third asked meanwhile, which
must be refused. Reported: MB/s each way, their ratio, the server's CPU per download (from the
kernel's accounting of its processes) and its peak RSS.

Last, the export's archive is written to a file twice, as written and with ZIP64 records forced,
and each is read back by zipfile (every CRC; every file's SHA-256 against the manifest) and by
unzip, 7-Zip and bsdtar where the machine has them (Debian: ``apt-get install unzip 7zip
libarchive-tools``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
import zipfile
from pathlib import Path

import project
from ingest import generate

VAR = project.ROOT / "var" / "bench-export"


class Sink:
    """A write-only stream that counts what it is given, as a socket would take it."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data) -> int:
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def load(n: int) -> int:
    """The collection of the first ``n`` photos, imported once; its id."""
    from django.core.management import call_command

    from gallery.models import Image
    from gallery.services import IncomingFile, collection_get_or_create, images_create

    call_command("migrate", verbosity=0)
    collection = collection_get_or_create(name=f"export-{n}")
    if Image.objects.filter(collection=collection).count() != n:
        Image.objects.filter(collection=collection).delete()
        photos = generate(n, processes=2)
        for start in range(0, n, 200):
            images_create(
                collection=collection,
                files=[IncomingFile(name=f"{path.parent.name}/{path.name}", label=path.parent.name, data=path.read_bytes())
                       for path in photos[start:start + 200]],
            )
    if Image.objects.filter(collection=collection).exclude(file="").count() != n:
        raise RuntimeError("the collection should hold a stored file for each photo")
    return collection.pk


def load_small(n: int) -> int:
    """A collection of ``n`` rows in 10 labels, all naming one small stored PNG; its id."""
    import io
    import uuid

    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from PIL import Image as PILImage

    from gallery.models import Collection, Image

    call_command("migrate", verbosity=0)
    collection = Collection.objects.get_or_create(name=f"export-small-{n}")[0]
    if Image.objects.filter(collection=collection).count() != n:
        Image.objects.filter(collection=collection).delete()
        name = f"images/{collection.pk}/{uuid.uuid4().hex}.png"
        buffer = io.BytesIO()
        PILImage.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
        (Path(settings.MEDIA_ROOT) / name).parent.mkdir(parents=True, exist_ok=True)
        (Path(settings.MEDIA_ROOT) / name).write_bytes(buffer.getvalue())
        connection.ensure_connection()
        with connection.connection.cursor() as raw:
            with raw.copy(
                "COPY gallery_image (collection_id, file, thumbnail, original_name, label, sha256, status, error, created_at, updated_at)"
                " FROM STDIN"
            ) as copy:
                for i in range(n):
                    copy.write_row((collection.pk, name, "", f"shot-{i:07d}.png", f"label-{i % 10}", f"{i:064x}", "pending", "", "now", "now"))
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE gallery_image")
    return collection.pk


def export_plain(collection_id: int, sink: Sink) -> None:
    from django.conf import settings

    from gallery.models import Image

    media = Path(settings.MEDIA_ROOT)
    names = Image.objects.filter(collection_id=collection_id).order_by("pk").values_list("pk", "file")
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for pk, name in names:
            archive.write(media / name, arcname=f"{pk}{Path(name).suffix}")


def export_product(collection_id: int, sink: Sink) -> None:
    from gallery.export import images_export_zip
    from gallery.models import Collection
    from gallery.selectors import collection_images

    for piece in images_export_zip(images=collection_images(collection=Collection.objects.get(pk=collection_id))):
        sink.write(piece)


def gunicorn_started(port: int):
    """gunicorn serving the project on ``port`` from this benchmark's folder (its database), one
    process of 4 threads; returns the process once the health endpoint answers."""
    import os
    import subprocess
    import urllib.request

    server = subprocess.Popen(
        [str(project.ROOT / ".venv" / "bin" / "gunicorn"), "cbir_site.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--worker-class", "gthread", "--threads", "4", "--timeout", "600"],
        cwd=project.ROOT, env={**os.environ, "CBIR_VAR_DIR": str(VAR)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(120):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health/", timeout=5):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("gunicorn did not answer within a minute")


def server_cpu_s(server) -> float:
    """User and system CPU seconds of gunicorn's process tree so far (live processes only)."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    pids = [server.pid] + [int(pid) for pid in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def server_peak_rss_mb(server) -> float:
    """The largest peak RSS (VmHWM) among gunicorn's processes, in MB."""
    pids = [server.pid] + [int(pid) for pid in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()]
    peaks = [int(line.split()[1]) for pid in pids for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:")]
    return max(peaks) / 1024


def download(url: str, token: str, *, begun=None, go_on=None) -> tuple[int, int]:
    """(status, bytes) of ``url``, read in 1 MB pieces and thrown away. With ``begun`` and
    ``go_on`` (events), it sets ``begun`` after the first piece and waits for ``go_on``: a
    download under way, holding its slot."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            received = 0
            while piece := response.read(1 << 20):
                received += len(piece)
                if begun is not None and not begun.is_set():
                    begun.set()
                    go_on.wait(timeout=120)
            return response.status, received
    except urllib.error.HTTPError as refused:
        return refused.code, 0


def http_rounds(collection_id: int, rounds: int) -> dict:
    """``--http``: the archive downloaded through gunicorn against the in-process export, then two
    downloads at once and a third refused meanwhile."""
    import socket
    import threading

    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user, _ = get_user_model().objects.get_or_create(username="bench-export", defaults={"is_staff": True})
    token = Token.objects.get_or_create(user=user)[0].key
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = gunicorn_started(port)
    url = f"http://127.0.0.1:{port}/api/collections/{collection_id}/export/"
    try:
        wall: dict[str, list[float]] = {"in_process": [], "http": []}
        cpu: list[float] = []
        sizes: dict[str, int] = {}
        for round_number in range(rounds):
            read_all(collection_id)
            ways = ["in_process", "http"] if round_number % 2 == 0 else ["http", "in_process"]
            for way in ways:
                started = time.perf_counter()
                if way == "http":
                    cpu_before = server_cpu_s(server)
                    answered, sizes[way] = download(url, token)
                    if answered != 200:
                        raise RuntimeError(f"the download was answered {answered}")
                    wall[way].append(time.perf_counter() - started)
                    cpu.append(server_cpu_s(server) - cpu_before)
                else:
                    sink = Sink()
                    export_product(collection_id, sink)
                    wall[way].append(time.perf_counter() - started)
                    sizes[way] = sink.bytes
            print(json.dumps({"round": round_number + 1, **{way: round(values[-1], 3) for way, values in wall.items()}}), flush=True)
        if sizes["http"] != sizes["in_process"]:
            raise RuntimeError(f"the download held {sizes['http']:,} bytes, the archive {sizes['in_process']:,}")

        def two_at_once(**pause) -> tuple[list[tuple[int, int]], list[threading.Thread]]:
            results: list[tuple[int, int]] = []
            both = [threading.Thread(target=lambda events: results.append(download(url, token, **events)), args=(events,))
                    for events in pause.get("each", [{}, {}])]
            for thread in both:
                thread.start()
            return results, both

        started = time.perf_counter()
        results, both = two_at_once()
        for thread in both:
            thread.join()
        together_s = time.perf_counter() - started
        if sorted(answered for answered, _ in results) != [200, 200] or any(size != sizes["http"] for _, size in results):
            raise RuntimeError(f"two downloads at once: {results}")
        # Two held open after their first piece: a third asked meanwhile finds no free slot.
        go_on = threading.Event()
        events = [{"begun": threading.Event(), "go_on": go_on} for _ in range(2)]
        held, both = two_at_once(each=events)
        if not all(event["begun"].wait(timeout=60) for event in events):
            raise RuntimeError("the two held downloads did not begin")
        third = download(url, token)[0]
        go_on.set()
        for thread in both:
            thread.join()
        medians = {way: statistics.median(values) for way, values in wall.items()}
        return {
            "archive_mb": round(sizes["http"] / 1e6, 1),
            **{f"{way}_s": round(value, 3) for way, value in medians.items()},
            **{f"{way}_mb_per_s": round(sizes["http"] / 1e6 / value, 1) for way, value in medians.items()},
            "http_to_in_process": round(medians["http"] / medians["in_process"], 2),
            "server_cpu_s_per_download": round(statistics.median(cpu), 3),
            "two_at_once_s": round(together_s, 3),
            "two_at_once_mb_per_s": round(2 * sizes["http"] / 1e6 / together_s, 1),
            "third_meanwhile": third,
            "server_peak_rss_mb": round(server_peak_rss_mb(server), 1),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


def read_all(collection_id: int) -> int:
    from django.conf import settings

    from gallery.models import Image

    media = Path(settings.MEDIA_ROOT)
    return sum(len((media / name).read_bytes()) for name in Image.objects.filter(collection_id=collection_id).values_list("file", flat=True))


# Limits lowered so that every record after the first is written as ZIP64 (as an archive past
# 2 GiB, or of more than 65,535 members, is), to check those records with every reader.
ZIP64_FORCED = {"_OFFSET_MAX": 1000, "_COUNT_MAX": 10}
# Other programs that read zip archives, where the machine has them: Info-ZIP's unzip, 7-Zip, and
# libarchive's bsdtar, which reads an archive front to back, as it arrives.
EXTERNAL_READERS = {
    "unzip": ["unzip", "-tq"],
    "7zz": ["7zz", "t"],
    "bsdtar": ["bsdtar", "-tf"],
}


def check_archive(collection_id: int, images: int, *, hashes: bool, **limits) -> dict[str, str]:
    """Write the export's archive to a file (with ``limits`` set on ``gallery.export``), read it back
    with zipfile (every CRC, and with ``hashes`` every file's SHA-256 against the manifest) and with
    each external reader found; what each said."""
    import csv
    import hashlib
    import io
    import shutil
    import subprocess

    from gallery import export

    archive = VAR / "export.zip"
    saved = {name: getattr(export, name) for name in limits}
    try:
        for name, value in limits.items():
            setattr(export, name, value)
        with open(archive, "wb") as out:
            export_product(collection_id, out)
    finally:
        for name, value in saved.items():
            setattr(export, name, value)
    try:
        with zipfile.ZipFile(archive) as opened:
            manifest = list(csv.DictReader(io.StringIO(opened.read(export.EXPORT_MANIFEST).decode("utf-8"))))
            whole = (
                opened.testzip() is None
                and len(opened.namelist()) == images + 1
                and all(hashlib.sha256(opened.read(row["path"])).hexdigest() == row["sha256"] for row in manifest if hashes)
            )
        said = {"zipfile": "ok" if whole else "FAILED"}
        for reader, command in EXTERNAL_READERS.items():
            if shutil.which(command[0]):
                done = subprocess.run([*command, str(archive)], capture_output=True, text=True)
                listed = reader != "bsdtar" or len(done.stdout.splitlines()) == images + 1
                said[reader] = "ok" if done.returncode == 0 and listed else f"FAILED: {done.stderr.strip()[-200:]}"
        return said
    finally:
        archive.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--small", type=int, default=0, help="N rows naming one small file, instead of the photos")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--http", action="store_true", help="download through gunicorn, against the in-process export")
    args = parser.parse_args()
    project.setup_django(VAR)
    if args.small:
        args.images = args.small
        collection_id = load_small(args.small)
    else:
        collection_id = load(args.images)
    files_bytes = read_all(collection_id)
    if args.http:
        report = {**project.report_header(), "images": args.images, "files_mb": round(files_bytes / 1e6, 1), "rounds": args.rounds,
                  **http_rounds(collection_id, args.rounds)}
        print(json.dumps(report, indent=2))
        return
    wall: dict[str, list[float]] = {"plain": [], "product": []}
    cpu: dict[str, list[float]] = {"plain": [], "product": []}
    sizes: dict[str, int] = {}
    for round_number in range(args.rounds):
        ways = [("plain", export_plain), ("product", export_product)]
        if round_number % 2:
            ways.reverse()
        read_all(collection_id)
        for name, export in ways:
            sink = Sink()
            started, started_cpu = time.perf_counter(), time.process_time()
            export(collection_id, sink)
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
            sizes[name] = sink.bytes
        print(json.dumps({"round": round_number + 1, **{name: round(values[-1], 3) for name, values in wall.items()}}), flush=True)

    peaks = {}
    for name, export in (("plain", export_plain), ("product", export_product)):
        tracemalloc.start()
        export(collection_id, Sink())
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    readers = {label: check_archive(collection_id, args.images, hashes=not args.small, **limits) for label, limits in (("as_written", {}), ("zip64_forced", ZIP64_FORCED))}
    medians = {name: statistics.median(values) for name, values in wall.items()}
    report = {
        **project.report_header(),
        "images": args.images,
        "files_mb": round(files_bytes / 1e6, 1),
        "archive_mb": {name: round(size / 1e6, 1) for name, size in sizes.items()},
        "rounds": args.rounds,
        **{f"{name}_s": round(value, 3) for name, value in medians.items()},
        **{f"{name}_cpu_s": round(statistics.median(values), 3) for name, values in cpu.items()},
        **{f"{name}_mb_per_s": round(sizes[name] / 1e6 / value, 1) for name, value in medians.items()},
        **{f"{name}_ms_per_image": round(value / args.images * 1000, 4) for name, value in medians.items()},
        "product_to_plain": round(medians["product"] / medians["plain"], 2),
        **{f"{name}_peak_python_mb": round(peak / 1e6, 2) for name, peak in peaks.items()},
        "archive_read_back_by": readers,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
