"""Deleting a large collection: how long the deleting call holds the request that made it (an
admin's click, `DELETE /api/collections/{id}/`), and the memory it takes, for the product's
``collection_delete`` against the code it replaced, in one run.

    .venv/bin/python bench/delete.py [--images 50000]

Before: Django's cascade (``QuerySet.delete``: every image row loaded into a model instance, the
vectors deleted by id lists), the file names read first and the files unlinked in the request's
commit hook. Now: two DELETE statements, and the files left to a worker
(``collection_files_delete``, timed here on its own, in the same process, as "worker").

Two equal collections are loaded into the product's tables under var/bench-delete (its own
embedded PostgreSQL): ``--images`` rows each, every one with a small original and thumbnail
file in media storage and a random vector in the HNSW-indexed embedding table, as an ingested
image has. Each deletion runs in a fresh subprocess, which reports its wall time and the peak
growth of its resident memory (sampled every 5 ms).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import project

ROOT = project.ROOT
VAR = ROOT / "var" / "bench-delete"


def setup_django() -> None:
    project.setup_django(VAR)


def load(n: int) -> list[int]:
    """Two collections of ``n`` images each, with files and vectors; returns their ids."""
    import numpy as np
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from pgvector.psycopg import register_vector

    from gallery.models import Collection
    from gallery.services import collection_delete
    from search.models import EncoderVersion

    call_command("migrate", verbosity=0)
    for old in Collection.objects.all():
        collection_delete(collection=old)
    encoder = EncoderVersion.objects.get_or_create(name="bench-delete", arch="patch_kmeans", dim=settings.CBIR_EMBEDDING_DIM)[0]
    rng = np.random.default_rng(0)
    ids = []
    connection.ensure_connection()
    register_vector(connection.connection)
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX IF EXISTS embedding_vector_hnsw")
    for number in range(2):
        collection = Collection.objects.create(name=f"delete-{number}-{int(time.time())}")
        ids.append(collection.pk)
        media = Path(settings.MEDIA_ROOT)
        for top in ("images", "thumbnails"):
            (media / top / str(collection.pk)).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            names = (f"images/{collection.pk}/{uuid.uuid4().hex}.png", f"thumbnails/{collection.pk}/{uuid.uuid4().hex}.webp")
            for name in names:
                (media / name).write_bytes(b"\x89PNG bench")
            rows.append(names)
        with connection.connection.cursor() as raw:
            with raw.copy(
                "COPY gallery_image (collection_id, file, thumbnail, original_name, label, sha256, status, error, created_at, updated_at)"
                " FROM STDIN"
            ) as copy:
                for i, (file, thumbnail) in enumerate(rows):
                    copy.write_row((collection.pk, file, thumbnail, f"{i}.png", "", f"{number}-{i}", "indexed", "", "now", "now"))
            raw.execute("SELECT id FROM gallery_image WHERE collection_id = %s ORDER BY id", [collection.pk])
            image_ids = [row[0] for row in raw.fetchall()]
            vectors = rng.normal(size=(n, settings.CBIR_EMBEDDING_DIM)).astype(np.float32)
            with raw.copy("COPY search_embedding (image_id, encoder_id, collection_id, vector) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "int8", "vector"])
                for image_id, vector in zip(image_ids, vectors):
                    copy.write_row((image_id, encoder.pk, collection.pk, vector))
        connection.connection.commit()
        print(f"  loaded collection {collection.pk}: {n:,} images, {2 * n:,} files", flush=True)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '1GB'")
        cursor.execute(
            "CREATE INDEX embedding_vector_hnsw ON search_embedding USING hnsw (vector vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        )
        cursor.execute("VACUUM ANALYZE gallery_image")
        cursor.execute("VACUUM ANALYZE search_embedding")
    print(f"  HNSW index built in {time.perf_counter() - started:.0f} s", flush=True)
    return ids


def delete_before(collection) -> float:
    """The code ``collection_delete`` replaced (as of d2e12fd): Django's cascade, files unlinked
    in the commit hook. Returns the seconds the commit hook took (the files' share)."""
    from django.db import transaction

    from gallery.models import Collection, Image
    from gallery.services import stored_files_delete

    hook = []

    def unlink(names: list[str]) -> None:
        started = time.perf_counter()
        stored_files_delete(names)
        hook.append(time.perf_counter() - started)

    with transaction.atomic():
        images = Image.objects.filter(collection=collection)
        names = [name for pair in images.values_list("file", "thumbnail") for name in pair if name]
        Image.objects.filter(pk__in=images.values("pk")).delete()
        transaction.on_commit(lambda: unlink(names))
        Collection.objects.filter(pk=collection.pk).delete()
    return hook[0]


def measure(variant: str, collection_id: int) -> dict:
    """Run in a subprocess: one deletion, timed, with the peak growth of this process's RSS."""
    import psutil

    from gallery import services
    from gallery.models import Collection

    collection = Collection.objects.get(pk=collection_id)
    me = psutil.Process()
    base = peak = me.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, me.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    files = None
    if variant == "before":
        files = delete_before(collection)
    else:
        sent = []
        services.task_send_safely = lambda task, *args: sent.append(args)  # no broker here: run the worker's part below
        services.collection_delete(collection=collection)
    request = time.perf_counter() - started
    done.set()
    sampler.join()
    result = {"variant": variant, "request_s": round(request, 2), "peak_rss_growth_mb": round((peak - base) / 2**20, 1)}
    if files is not None:
        result["of_which_files_s"] = round(files, 2)
    if variant == "now":
        started = time.perf_counter()
        removed = sum(services.collection_files_delete(*args) for args in sent)
        result.update(worker_s=round(time.perf_counter() - started, 2), worker_files=removed)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000, help="images in each of the two collections")
    parser.add_argument("--measure", nargs=2, metavar=("VARIANT", "COLLECTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    setup_django()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]))))
        return
    before_id, now_id = load(args.images)
    results = []
    for variant, collection_id in (("before", before_id), ("now", now_id)):
        out = subprocess.run(
            [sys.executable, __file__, "--measure", variant, str(collection_id)], check=True, capture_output=True, text=True, cwd=ROOT
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    before, now = results
    report = {
        **project.report_header(), "images": args.images, "results": results,
        "request_speedup": round(before["request_s"] / max(now["request_s"], 1e-3), 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
