"""Ingestion benchmark: end-to-end images/s from `import_images` to all indexed, against the
upper bound of decode + resize (to the encoder's input side) alone with the same library
(Pillow, same JPEG draft decoding) on the same cores, measured before and after the run.

    .venv/bin/python bench/ingest.py [--images 10000] [--workers 2] [--sweep-after S] [--no-gradient-words] [--debug]
    .venv/bin/python bench/ingest.py --import-only [CHECKOUT ...] [--rounds 2]   # the import command alone

Photos: 1024x768 JPEGs (quality 90) made from the shared OpenMoji set: each emoji enlarged onto
a random gradient background with sensor-like noise, so files are photo-sized (~150-250 KB).
They are generated once into var/bench/photos. The service runs against its own embedded
PostgreSQL and Redis under var/bench (CBIR_VAR_DIR), with a real Celery worker subprocess
(prefork, `--workers` processes, as `make run` starts it); an encoder is trained first if none
is active (not timed). Peak memory is the largest summed RSS of the worker's process tree; the
CPU seconds of the worker tree, the import command, PostgreSQL and redis during the run say
where the machine's time went.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
from PIL import Image as PILImage

import project
from quality import wait_active

if TYPE_CHECKING:  # the project's modules load once main() has set Django up
    from workers.autoencoder.model import EncoderConfig

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets" / "openmoji"
BENCH_VAR = ROOT / "var" / "bench"
PHOTOS = BENCH_VAR / "photos"
SIZE = (1024, 768)


def _make_photo(job: tuple[int, str, str]) -> None:
    index, source, target = job
    rng = np.random.default_rng(index)
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, SIZE[1])[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).repeat(SIZE[0], axis=1)
    background += rng.normal(0, 12, background.shape)
    photo = PILImage.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    emoji = PILImage.open(source).convert("RGBA")
    side = int(rng.integers(400, 700))
    emoji = emoji.resize((side, side), PILImage.Resampling.BICUBIC).rotate(float(rng.uniform(-20, 20)), expand=True)
    photo.paste(emoji, (int(rng.integers(0, SIZE[0] - emoji.width)), int(rng.integers(0, max(1, SIZE[1] - emoji.height)))), emoji)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: a run stopped mid-way leaves no truncated photo behind.
    photo.save(target + ".part", format="JPEG", quality=90)
    os.replace(target + ".part", target)


def generate(n: int, processes: int) -> list[Path]:
    sources = sorted(SHARED.glob("*/*.png"))
    jobs = []
    for i in range(n):
        source = sources[i % len(sources)]
        jobs.append((i, str(source), str(PHOTOS / source.parent.name / f"{i:05d}.jpg")))
    missing = [job for job in jobs if not Path(job[2]).exists()]
    if missing:
        print(f"generating {len(missing)} photos of {SIZE[0]}x{SIZE[1]} ...", flush=True)
        with Pool(processes) as pool:
            pool.map(_make_photo, missing, chunksize=32)
    return [Path(job[2]) for job in jobs]


def _decode_resize(job: tuple[str, int]) -> int:
    from gallery import imaging
    from workers.autoencoder.preprocessing import Preprocess

    path, side = job
    picture = imaging.decode_for_encoder(Path(path).read_bytes())
    return int(Preprocess(side).to_uint8(picture).sum() > 0)


def _django_init() -> None:
    import django

    django.setup()


def _busy_since(start) -> float:
    """The share of all cores' time, since the ``psutil.cpu_times()`` sample ``start``, that was
    neither idle nor waiting for I/O: below 1, the phase left cores unused."""
    end = psutil.cpu_times()
    total = sum(end) - sum(start)
    idle = sum(getattr(end, key, 0) - getattr(start, key, 0) for key in ("idle", "iowait"))
    return round(1 - idle / total, 3) if total else 0.0


def bound(paths: list[Path], processes: int, side: int) -> tuple[float, float]:
    """Decode (as the workers do) and resize to the encoder's input side, nothing else.
    Returns images/s and the share of the cores kept busy."""
    cpu = psutil.cpu_times()
    started = time.perf_counter()
    with Pool(processes, initializer=_django_init) as pool:
        pool.map(_decode_resize, [(str(p), side) for p in paths], chunksize=16)
    return len(paths) / (time.perf_counter() - started), _busy_since(cpu)


def stage_costs(paths: list[Path], n: int = 200) -> dict:
    """Where one worker's time goes, per image, on one process: decode (as the bound does it),
    WebP thumbnail at the product's setting and at the slower method=4 and a JPEG one for
    comparison (time and mean size each), recording thumbnails in the database
    (``thumbnail_record_costs``) and storing vectors (``vector_store_costs``), and the encoder's
    forward pass at several batch sizes and torch thread counts (medians of 3 passes), then split
    (``encoder_split``). Needs an active encoder."""
    import io

    import torch

    from gallery import imaging
    from search.models import EncoderVersion
    from workers.autoencoder import inference

    datas = [p.read_bytes() for p in paths[:n]]

    def per_image_ms(fn) -> float:
        started = time.perf_counter()
        fn()
        return round((time.perf_counter() - started) / len(datas) * 1000, 2)

    pictures = []
    result = {"images": len(datas)}
    result["decode_draft_ms"] = per_image_ms(
        lambda: pictures.extend(imaging.decode_for_encoder(d) for d in datas)
    )

    def thumbnail(picture, **save) -> bytes:  # as imaging.thumbnail_webp does it, with other encoder settings
        buffer = io.BytesIO()
        thumb = picture.copy()
        thumb.thumbnail((256, 256))
        thumb.save(buffer, **save)
        return buffer.getvalue()

    variants = {
        "webp_method0": lambda picture: imaging.thumbnail_webp(picture, size=256),  # the product's
        "webp_method4": lambda picture: thumbnail(picture, format="WEBP", quality=80, method=4),
        "jpeg_q85": lambda picture: thumbnail(picture, format="JPEG", quality=85),  # cheaper, not used: bigger files
    }
    for name, make in variants.items():
        sizes = []
        result[f"thumbnail_{name}_ms"] = per_image_ms(lambda make=make, sizes=sizes: sizes.extend(len(make(p)) for p in pictures))
        result[f"thumbnail_{name}_kib"] = round(sum(sizes) / len(sizes) / 1024, 1)
    result.update(thumbnail_record_costs())
    result.update(vector_store_costs())
    encoder = EncoderVersion.objects.filter(status="active").first()
    embedder = inference.load_embedder(encoder.checkpoint.path, device="cpu")
    default_batch = inference.EMBEDDING_BATCH_SIZE
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for batch in (16, 32, 64, 128, 256):
                inference.EMBEDDING_BATCH_SIZE = batch
                embedder.embed(pictures[:batch])  # warm-up
                passes = [per_image_ms(lambda: embedder.embed(pictures)) for _ in range(3)]  # one pass is ~1 s: noisy
                result[f"encoder_{threads}thread_batch{batch}_ms"] = sorted(passes)[1]
    finally:
        inference.EMBEDDING_BATCH_SIZE = default_batch
    result.update(encoder_split(embedder, pictures))
    return result


def encoder_split(embedder, pictures: list, rounds: int = 5) -> dict:
    """The ``Embedder``'s time on the photos split into its preprocessing (reduce, pad to a square,
    resize to the input side, as uint8) and the forward pass, at the workers' batch size; and the
    same forward pass on OpenMoji's pictures at the input side (what ``bench/encoder_speed.py``
    times), alternated with the photos' in each round on 1 and 2 torch threads: medians of
    ``rounds``, ms per image."""
    import statistics

    import torch

    from heldout import load
    from workers.autoencoder import inference

    batch, side = inference.EMBEDDING_BATCH_SIZE, embedder.config.input_size
    started = time.perf_counter()
    arrays = [embedder.preprocess.to_uint8(picture) for picture in pictures]
    result = {"encoder_preprocess_ms": round((time.perf_counter() - started) / len(pictures) * 1000, 2)}
    count = len(arrays) // batch * batch
    photos = [torch.from_numpy(np.stack(arrays[i : i + batch])).float().div_(255) for i in range(0, count, batch)]
    moji_pixels, _ = load(SHARED, side)
    moji = [moji_pixels[i : i + batch].float().div_(255) for i in range(0, count, batch)]

    def forward_ms(inputs: list) -> float:
        started = time.perf_counter()
        for x in inputs:
            embedder.model.encode(x)
        return (time.perf_counter() - started) / count * 1000

    with torch.inference_mode():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            forward_ms(photos[:1]), forward_ms(moji[:1])  # warm-up
            timings = {"photos": [], "openmoji": []}
            for _ in range(rounds):
                timings["photos"].append(forward_ms(photos))
                timings["openmoji"].append(forward_ms(moji))
            for name, values in timings.items():
                result[f"forward_{name}_{threads}thread_batch{batch}_ms"] = round(statistics.median(values), 2)
    return result


def thumbnail_record_costs(rows: int = 3200, rounds: int = 3) -> dict:
    """Recording a batch's thumbnails in the database, per image, as the worker does it
    (``images_record_thumbnails``: one UPDATE from arrays) against Django's ``bulk_update``, which
    it replaced, in alternating rounds on the last run's rows, batches of EMBEDDING_BATCH_SIZE.
    Both write each row's own values back. Process CPU (what the worker pays; the database's
    share is not in it) and wall time, medians of the rounds."""
    from gallery.models import Image
    from gallery.services import images_record_thumbnails
    from workers.autoencoder.inference import EMBEDDING_BATCH_SIZE

    images = list(Image.objects.exclude(thumbnail="").order_by("id")[:rows])
    if not images:
        return {}
    ways = {
        "bulk_update": lambda batch: Image.objects.bulk_update(batch, ["thumbnail", "width", "height"]),
        "unnest": lambda batch: images_record_thumbnails(images=batch),
    }
    times = {f"record_thumbnails_{name}_{kind}_ms": [] for name in ways for kind in ("cpu", "wall")}
    for _ in range(rounds):
        for name, record in ways.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for start in range(0, len(images), EMBEDDING_BATCH_SIZE):
                record(images[start : start + EMBEDDING_BATCH_SIZE])
            times[f"record_thumbnails_{name}_cpu_ms"].append((time.process_time() - cpu) / len(images) * 1000)
            times[f"record_thumbnails_{name}_wall_ms"].append((time.perf_counter() - wall) / len(images) * 1000)
    return {"record_thumbnails_rows": len(images), **{key: round(float(np.median(values)), 3) for key, values in times.items()}}


def vector_store_costs(rows: int = 3200, rounds: int = 3) -> dict:
    """Storing a batch's vectors, per image, as the worker does it (``embeddings_store``: each
    image's collection read under a share lock in the same transaction, so that a move cannot
    leave a vector under the collection its image left) against a plain ``bulk_create`` under
    the collection the worker loaded, as it was before that lock. Alternating rounds on the last
    run's rows, batches of EMBEDDING_BATCH_SIZE, for a throwaway encoder (never active) whose
    vectors are deleted after each round and which goes at the end. Process CPU and wall time,
    medians of the rounds."""
    from django.conf import settings
    from django.db import transaction

    from gallery.models import Image
    from search.models import Embedding, EncoderVersion
    from search.services import embeddings_store
    from workers.autoencoder.inference import EMBEDDING_BATCH_SIZE

    images = list(Image.objects.order_by("id")[:rows])
    if not images:
        return {}
    vectors = np.random.default_rng(0).standard_normal((len(images), settings.CBIR_EMBEDDING_DIM)).astype(np.float32)
    encoder = EncoderVersion.objects.create(name="bench: storing vectors", arch="bench", dim=settings.CBIR_EMBEDDING_DIM, status="trained")

    @transaction.atomic
    def plain(batch, batch_vectors):
        Embedding.objects.bulk_create(
            [Embedding(image_id=image.id, collection_id=image.collection_id, encoder=encoder, vector=vector) for image, vector in zip(batch, batch_vectors)],
            ignore_conflicts=True,
        )

    ways = {"plain": plain, "locked": lambda batch, batch_vectors: embeddings_store(encoder=encoder, images=batch, vectors=batch_vectors)}
    times = {f"store_vectors_{name}_{kind}_ms": [] for name in ways for kind in ("cpu", "wall")}
    try:
        for _ in range(rounds):
            for name, store in ways.items():
                cpu, wall = time.process_time(), time.perf_counter()
                for start in range(0, len(images), EMBEDDING_BATCH_SIZE):
                    store(images[start : start + EMBEDDING_BATCH_SIZE], vectors[start : start + EMBEDDING_BATCH_SIZE])
                times[f"store_vectors_{name}_cpu_ms"].append((time.process_time() - cpu) / len(images) * 1000)
                times[f"store_vectors_{name}_wall_ms"].append((time.perf_counter() - wall) / len(images) * 1000)
                if Embedding.objects.filter(encoder=encoder).count() != len(images):
                    raise RuntimeError(f"{name}: not one vector per image")
                Embedding.objects.filter(encoder=encoder).delete()
    finally:
        encoder.delete()
    medians = {key: round(float(np.median(values)), 3) for key, values in times.items()}
    return {
        "store_vectors_rows": len(images),
        **medians,
        "store_vectors_locked_to_plain_wall": round(medians["store_vectors_locked_wall_ms"] / medians["store_vectors_plain_wall_ms"], 2),
    }


def _manage(*args: str, env: dict, capture: bool = False) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, text=True,
        stdout=subprocess.PIPE if capture else None,
    )
    return result.stdout or ""


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class _CpuMeter:
    """CPU seconds per group of processes over a run, sampled: processes that come and go (pool
    children replaced, database backends per connection) count up to their last sample."""

    def __init__(self, groups) -> None:
        self.groups = groups  # () -> {name: [processes]}
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.sample(first=True)

    def sample(self, first: bool = False) -> None:
        for name, processes in self.groups().items():
            for proc in processes:
                try:
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                if first:
                    self.first[proc.pid] = times.user + times.system
                self.last[proc.pid] = (name, times.user + times.system)

    def totals(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for pid, (name, seconds) in self.last.items():
            totals[name] = totals.get(name, 0.0) + seconds - self.first.get(pid, 0.0)
        return {name: round(seconds, 1) for name, seconds in totals.items()}


def _servers(name: str) -> list[psutil.Process]:
    return [proc for proc in psutil.process_iter(["name"]) if (proc.info["name"] or "").startswith(name)]


# With --sweep-after, how often the bench sends the sweep during the import (beat: every 60 s).
SWEEP_EVERY_S = 10


def _reset(env: dict) -> str:
    """Delete the last run's ``bench-`` collections (rows and files), vacuum, and empty the queue,
    so that no run pays for the one before it. Returns the active encoder's config as JSON."""
    _manage("migrate", "--noinput", env=env)
    script = (
        "import django; django.setup();"
        "from search.models import EncoderVersion as E; from gallery.models import Collection as C;"
        # Through the product's service. It leaves a large collection's files to a worker, but
        # the queue is purged below, so they are removed here, before the timed run.
        "from gallery.services import collection_delete, collection_files_delete;"
        "old = list(C.objects.filter(name__startswith='bench-'));"
        "[collection_delete(collection=c) for c in old];"
        "[collection_files_delete(c.pk) for c in old];"
        # Vacuumed now, so that cleaning up the last run's 10,000 rows and their HNSW entries is
        # not autovacuum's work in the middle of the timed run (it doubled PostgreSQL's CPU).
        "from django.db import connection; c = connection.cursor();"
        "[c.execute(f'VACUUM ANALYZE {t}') for t in ('search_embedding', 'gallery_image')];"
        "import json; print(json.dumps(E.objects.filter(status='active').values_list('config', flat=True).first()))"
    )
    active = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, text=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "celery", "-A", "workers", "purge", "-f"], cwd=ROOT, env=env, check=True, capture_output=True)
    return active.stdout


def import_only(photo_root: Path, n: int, env: dict, checkout: Path) -> dict:
    """``import_images`` alone, no worker running (the tasks it queues wait in redis and are
    purged by the next reset): hashing, checks, copies into media storage, rows and queueing.
    Run from ``checkout``'s ``manage.py`` (another git worktree, same venv and database) for an
    A/B of the command's code. Its CPU comes from the kernel's accounting of the finished child."""
    _reset(env)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "manage.py", "import_images", str(photo_root), "--collection", f"bench-{int(time.time())}", "--labels-from-dirs"],
        cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {
        "checkout": str(checkout), "images": n, "seconds": round(elapsed, 1), "images_per_second": round(n / elapsed, 1),
        "cpu_ms_per_image": {"user": round(user / n * 1000, 2), "system": round(system / n * 1000, 2), "total": round((user + system) / n * 1000, 2)},
    }


def end_to_end(photo_root: Path, n: int, workers: int, env: dict, encoder: EncoderConfig, sweep_after: int | None = None) -> dict:
    from django.conf import settings  # noqa: F401  (settings already bootstrapped the servers)

    active_stdout = _reset(env)
    worker_env = env if sweep_after is None else {**env, "CBIR_SWEEP_AFTER_S": str(sweep_after)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel", "WARNING", "--concurrency", str(workers)],
        cwd=ROOT, env=worker_env,
    )
    try:
        # Retrained when the active encoder is not what train_encoder makes today (another
        # architecture, or one from before a change to its defaults), so the run times the current one.
        active_config = json.loads(active_stdout.strip().splitlines()[-1]) or {}
        if active_config.get("model") != json.loads(json.dumps(encoder.to_dict())):
            print(f"training a {_described(encoder)} encoder with today's defaults first (not timed) ...", flush=True)
            _manage("import_images", str(ROOT / "demo" / "openmoji"), "--collection", "encoder-seed", "--labels-from-dirs", env=env)
            flags = () if encoder.gradient_words else ("--no-gradient-words",)
            _manage("train_encoder", "--collection", "encoder-seed", "--arch", encoder.arch, "--epochs", "1", "--activate", *flags, env=env)
            wait_active(env)  # until the switch, so the timed run embeds with one encoder only
        monitor = psutil.Process(worker.pid)
        peak = 0
        cpu = psutil.cpu_times()
        started = time.perf_counter()
        importer = subprocess.Popen(
            [sys.executable, "manage.py", "import_images", str(photo_root), "--collection", f"bench-{int(time.time())}", "--labels-from-dirs", "--wait"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        )
        importer_process = psutil.Process(importer.pid)
        # Who spends the CPU: the worker tree, the import command, the database server, redis.
        meter = _CpuMeter(lambda: {
            "worker": [monitor, *monitor.children(recursive=True)], "importer": [importer_process],
            "postgres": _servers("postgres"), "redis": _servers("redis"),
        })
        swept = started
        while importer.poll() is None:
            peak = max(peak, _tree_rss(monitor))
            meter.sample()
            time.sleep(0.5)
            if sweep_after is not None and time.perf_counter() - swept >= SWEEP_EVERY_S:
                from workers.tasks import sweep_pending

                sweep_pending.delay()  # as beat sends it, here more often (see --sweep-after)
                swept = time.perf_counter()
        elapsed = time.perf_counter() - started
        busy = _busy_since(cpu)
        if importer.returncode:
            raise SystemExit(f"import_images failed with {importer.returncode}")
    finally:
        worker.terminate()
        worker.wait(60)
    return {
        "images_per_second": n / elapsed, "seconds": elapsed, "peak_worker_rss_mb": peak / 2**20,
        "cpu_seconds": meter.totals(), "cpu_busy": busy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes, and processes for the bound")
    parser.add_argument("--arch", default="patch_kmeans", help="the active encoder's architecture (trained first unless one with today's defaults is active)")
    parser.add_argument(
        "--no-gradient-words", action="store_true",
        help="with the encoder train_encoder --no-gradient-words makes (patch_kmeans on 32 px pictures, without its words)",
    )
    parser.add_argument(
        "--debug", action="store_true",
        help="run the worker and the import with DJANGO_DEBUG=1, as every run before session 36 did (each query kept "
        "in memory with its SQL); by default they run as in production, DJANGO_DEBUG=0",
    )
    parser.add_argument("--stages", action="store_true", help="only measure the per-image cost of each stage (needs an encoder)")
    parser.add_argument(
        "--sweep-after", type=int, metavar="S",
        help="run the pending sweep during the import, every 10 s, with CBIR_SWEEP_AFTER_S=S: an import longer than the "
        "sweep's age (300 s in production, where beat sends it every minute), scaled down to this run's length",
    )
    parser.add_argument(
        "--import-only", type=Path, nargs="*", metavar="CHECKOUT",
        help="only time import_images, no worker, once from each CHECKOUT in turn (default: this one): "
        "another git worktree, same venv and database, for an A/B of the command",
    )
    parser.add_argument("--rounds", type=int, default=2, help="with --import-only: how many times each checkout runs, alternating")
    args = parser.parse_args()

    BENCH_VAR.mkdir(parents=True, exist_ok=True)
    os.environ["CBIR_VAR_DIR"] = str(BENCH_VAR)
    project.servers_stopped_at_exit(BENCH_VAR)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cbir_site.settings")
    os.environ["DJANGO_DEBUG"] = "1" if args.debug else "0"  # inherited by the worker and the import
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only")
    sys.path.insert(0, str(ROOT))
    paths = generate(args.images, args.workers)
    photo_root = BENCH_VAR / f"photos-{args.images}"
    if not photo_root.exists():  # a folder holding exactly these N photos (symlinks are not followed by import, so hard links)
        for path in paths:
            target = photo_root / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)

    _django_init()
    from django.conf import settings

    from workers.autoencoder.model import EncoderConfig

    if args.stages:
        print(json.dumps(stage_costs(paths), indent=2))
        return

    env = {**os.environ, "DATABASE_URL": settings.DATABASES["default"]["NAME"] and _database_url(settings), "REDIS_URL": settings.CELERY_BROKER_URL}
    if args.import_only is not None:
        runs = [import_only(photo_root, args.images, env, checkout.resolve()) for _ in range(args.rounds) for checkout in args.import_only or [ROOT]]
        print(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": _machine(), "runs": runs}, indent=2))
        return
    # The bound is measured before and after the end-to-end run and averaged: on this shared
    # machine it drifted by up to 40% between runs, and a drift during the run moves both alike.
    encoder = EncoderConfig(arch=args.arch, **({"gradient_words": 0} if args.no_gradient_words else {}))
    side = encoder.input_size  # what the workers resize to for the encoder
    before, busy_before = bound(paths, args.workers, side)
    print(f"bound (decode + resize to {side}px, {args.workers} processes): {before:.1f} images/s", flush=True)
    result = end_to_end(photo_root, args.images, args.workers, env, encoder, args.sweep_after)
    after, busy_after = bound(paths, args.workers, side)
    print(f"bound again: {after:.1f} images/s", flush=True)
    bounds = [before, after]
    upper = sum(bounds) / 2
    ratio = result["images_per_second"] / upper
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": _machine(),
        "images": args.images,
        "workers": args.workers,
        "sweep_after_s": args.sweep_after,
        "django_debug": args.debug,
        "encoder": f"{_described(encoder)}, input {side} px",
        "bound_images_per_second": round(upper, 1),
        "bound_before_after": [round(b, 1) for b in bounds],
        "end_to_end_images_per_second": round(result["images_per_second"], 1),
        "end_to_end_seconds": round(result["seconds"], 1),
        "ratio_to_bound": round(ratio, 3),
        "peak_worker_rss_mb": round(result["peak_worker_rss_mb"]),
        "cpu_seconds": result["cpu_seconds"],
        "cpu_ms_per_image": {name: round(seconds / args.images * 1000, 2) for name, seconds in result["cpu_seconds"].items()},
        # the share of the machine's cores busy in each phase: bound before, end to end, bound after
        "cpu_busy": {"bound_before": busy_before, "end_to_end": result["cpu_busy"], "bound_after": busy_after},
    }
    print(json.dumps(summary, indent=2))


def _described(encoder: EncoderConfig) -> str:
    return encoder.arch if encoder.gradient_words else f"{encoder.arch} without gradient words"


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB"


def _database_url(settings) -> str:
    db = settings.DATABASES["default"]
    host = db["HOST"] or db["OPTIONS"].get("host", "")
    return f"postgres://{db['USER']}:{db['PASSWORD']}@/{db['NAME']}?host={host}"


if __name__ == "__main__":
    main()
