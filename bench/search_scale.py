"""Search at scale: HNSW vs exact scan on 1,000,000 vectors in the real table.

    .venv/bin/python bench/search_scale.py [--vectors 1000000] [--queries 200] [--skip-load]
        [--expansion-only | --feedback-only | --pages-only]

Loads into the product's own tables (gallery_image, search_embedding) under var/bench-search
(embedded PostgreSQL 18 + pgvector): clustered synthetic vectors of the encoder's width, made
like real embeddings -- 2,000 Gaussian clusters with unequal spreads in a 32-dimensional latent
space, mapped into 256 dimensions by a fixed random linear map, plus a little isotropic noise
(uniform noise in all 256 dimensions would make every within-cluster neighbour equally far and
recall meaningless) -- 1% of them in a separate small collection (the filtered case), all indexed
(two days back, one a millisecond: the front page's covers read the newest), plus real
embeddings of the 1,768 shared OpenMoji images from a seed autoencoder trained on them.
Then, in one run:
- builds the HNSW index (time, size, maintenance_work_mem);
- for several hnsw.ef_search values: latency p50/p95/p99 of the product's ranking in SQL
  (search.selectors.vector_list_similar: the top-k query and the fetch of the images, measured
  in-process, so without HTTP), unfiltered and filtered to the 1% collection, and recall@10
  against the exact answer;
- times the exact scan (exhaustive, as `?exact=1` runs it) on the same queries, for the speed-up;
- API latency of GET /api/images/{id}/similar/?k=10 through HTTP (gunicorn, 2 workers), with the
  product's query expansion (the default) and with expand=0;
- the product's search with query expansion against without it, in alternating rounds
  (``--expansion-only``: that and the API latencies alone);
- the same API plain against refined by relevance feedback (marks on its first page), request
  by request (``--feedback-only``: that alone);
- with ``--pages-only``, only the gallery pages and list endpoints on the big collection
  (medians through Django's test client, in process), page 8,000 both as its pager links reach
  it (keyset) and counted from the start (OFFSET), and the last page (16,500), counted back from
  the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta

import numpy as np

import project

ROOT = project.ROOT
VAR = ROOT / "var" / "bench-search"
EF_SEARCH = [10, 20, 40, 80, 160]
MAINTENANCE_WORK_MEM = "4GB"


def pct(values, q):
    return round(float(np.percentile(values, q)), 2)


def setup_django() -> None:
    project.setup_django(VAR, DJANGO_DEBUG="0", DJANGO_SECRET_KEY="bench-only")


def load(n: int, dim: int, rng) -> tuple[int, int, np.ndarray]:
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone
    from pgvector.psycopg import register_vector

    from gallery.models import Collection
    from search.models import EncoderVersion

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE search_embedding, gallery_image, gallery_collection, search_encoderversion RESTART IDENTITY CASCADE")
        cursor.execute("DROP INDEX IF EXISTS embedding_vector_hnsw")
    encoder = EncoderVersion.objects.create(name="bench", arch="conv_ae", dim=dim, status="active")
    big = Collection.objects.create(name="big")
    small = Collection.objects.create(name="small-1pct")
    latent = 32
    mapping = (rng.normal(size=(latent, dim)) / np.sqrt(latent)).astype(np.float32)
    centres = rng.normal(size=(2000, latent)).astype(np.float32)
    spreads = rng.uniform(0.2, 0.8, size=2000).astype(np.float32)
    n_small = n // 100
    connection.ensure_connection()
    raw = connection.connection
    register_vector(raw)
    # indexed one a millisecond, in id order, days ago: outside the indexing rate's last minute,
    # and read back from the newest by the front page's covers (gallery.selectors.collection_covers)
    indexed_since = timezone.now() - timedelta(days=2)
    started = time.perf_counter()
    chunk = 50_000
    with raw.cursor() as cursor:
        for start in range(0, n, chunk):
            count = min(chunk, n - start)
            cluster = rng.integers(0, 2000, count)
            points = centres[cluster] + spreads[cluster, None] * rng.normal(size=(count, latent)).astype(np.float32)
            vectors = points @ mapping + 0.02 * rng.normal(size=(count, dim)).astype(np.float32)
            collection_id = [small.pk if start + i < n_small else big.pk for i in range(count)]
            with cursor.copy(
                "COPY gallery_image (id, collection_id, file, thumbnail, original_name, label, sha256, status, error, created_at, updated_at, indexed_at) FROM STDIN"
            ) as copy:
                for i in range(count):
                    image_id = start + i + 1
                    copy.write_row((
                        image_id, collection_id[i], "", "", f"s{image_id}", f"c{cluster[i]}", "", "indexed", "", "now", "now",
                        indexed_since + timedelta(milliseconds=image_id),
                    ))
            with cursor.copy("COPY search_embedding (image_id, encoder_id, collection_id, vector) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "int8", "vector"])
                for i in range(count):
                    copy.write_row((start + i + 1, encoder.pk, collection_id[i], vectors[i]))
            print(f"  loaded {start + count:,} vectors", flush=True)
        cursor.execute("SELECT setval('gallery_image_id_seq', %s)", [n + 1])
    raw.commit()
    print(f"load: {time.perf_counter() - started:.0f} s", flush=True)
    return encoder.pk, small.pk, centres


def add_real_embeddings(encoder_id: int) -> int:
    """Embed the shared OpenMoji images with a seed autoencoder trained on them (1 epoch, CPU)."""
    from django.db import connection

    from gallery.models import Collection, Image
    from gallery.services import collection_import
    from search.models import EncoderVersion, Embedding
    from workers.autoencoder.model import EncoderConfig
    from workers.autoencoder.training import TrainingConfig
    from workers.services import encoder_plan, encoder_train, images_index

    collection = Collection.objects.create(name="openmoji")
    collection_import(collection=collection, path=ROOT.parent / "shared" / "datasets" / "openmoji", labels_from_dirs=True)
    seed = encoder_train(
        encoder=encoder_plan(
            collection=collection,
            model_config=EncoderConfig(dim=EncoderVersion.objects.get(pk=encoder_id).dim),
            train_config=TrainingConfig(epochs=1),
        ),
        show_progress=False,
    )
    EncoderVersion.objects.filter(pk=encoder_id).update(checkpoint=seed.checkpoint.name)
    EncoderVersion.objects.filter(pk=seed.pk).update(status="retired")
    ids = list(Image.objects.filter(collection=collection).values_list("id", flat=True))
    for start in range(0, len(ids), 256):
        images_index(image_ids=ids[start : start + 256])  # active encoder = the bench one, now with weights
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return Embedding.objects.filter(collection=collection).count()


def build_index() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SET maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
        cursor.execute("SET max_parallel_maintenance_workers = 1")  # leader + 1 worker = the 2 cores
        started = time.perf_counter()
        cursor.execute(
            "CREATE INDEX embedding_vector_hnsw ON search_embedding USING hnsw (vector vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        )
        seconds = time.perf_counter() - started
        cursor.execute("SELECT pg_relation_size('embedding_vector_hnsw'), pg_relation_size('search_embedding')")
        index_bytes, table_bytes = cursor.fetchone()
        cursor.execute("ANALYZE search_embedding")
    return {"seconds": round(seconds, 1), "index_mb": round(index_bytes / 2**20), "table_mb": round(table_bytes / 2**20), "maintenance_work_mem": MAINTENANCE_WORK_MEM}


def run_queries(queries, encoder, k, collection_ids, ef, exact=False, expand=0):
    """Time the product's own ranking (search.selectors.vector_list_similar: ranking + image fetch),
    with hnsw.ef_search = ef; ``exact`` forces the exhaustive scan (the ground truth). ``expand``:
    the query expansion, 0 (none) unless asked, so the figures are the ranking's own."""
    from django.conf import settings

    from search.selectors import SearchFilters, vector_list_similar

    from django.db import connection

    if ef:
        settings.CBIR_HNSW_EF_SEARCH = ef
        with connection.cursor() as cursor:  # what DATABASES OPTIONS does for the service
            cursor.execute("SELECT set_config('hnsw.ef_search', %s, false)", [str(ef)])
    filters = SearchFilters(collection_ids=tuple(collection_ids or ()), exact=True if exact else None)
    latencies, answers = [], []
    for vector in queries:
        started = time.perf_counter()
        hits = vector_list_similar(vector=vector, encoder=encoder, k=k, filters=filters, expand=expand)
        latencies.append((time.perf_counter() - started) * 1000)
        answers.append([hit.image.pk for hit in hits])
    return latencies, answers


def sql_only(queries, encoder, k, ef, collection_ids=()):
    """The ranking query alone (ORDER BY vector <=> q LIMIT k on the embedding table), as the
    service sends it, without the fetch of the images or any Python around it."""
    from django.db import connection

    from search.selectors import SearchFilters, similar_queryset

    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('hnsw.ef_search', %s, false)", [str(ef)])
    latencies = []
    filters = SearchFilters(collection_ids=tuple(collection_ids))
    for vector in queries:
        sql, params = similar_queryset(vector=vector, encoder=encoder, k=k, filters=filters).query.sql_with_params()
        with connection.cursor() as cursor:
            started = time.perf_counter()
            cursor.execute(sql, params)
            cursor.fetchall()
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def expansion_cost(queries, encoder, k, ef, expand, rounds=3) -> dict:
    """The product's search with query expansion against without it, at hnsw.ef_search = ef, in
    alternating rounds over the same queries (so drift of the machine hits both alike)."""
    with_expansion, without = [], []
    for _ in range(rounds):
        without += run_queries(queries, encoder, k, None, ef, expand=0)[0]
        with_expansion += run_queries(queries, encoder, k, None, ef, expand=expand)[0]
    return {
        "ef_search": ef, "expand": expand,
        "expand_p50_ms": pct(with_expansion, 50), "expand_p95_ms": pct(with_expansion, 95),
        "plain_p50_ms": pct(without, 50), "plain_p95_ms": pct(without, 95),
        "ratio_p50": round(pct(with_expansion, 50) / pct(without, 50), 2),
    }


def recall(approx, exact, k):
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact)]))


def _http_latencies(paths: dict[str, list[str]], ef: int, port=8765) -> dict[str, dict]:
    """Each list of ``paths`` (GETs on the site, each answering 10 results) timed over HTTP
    (gunicorn, 2 workers, hnsw.ef_search = ef), the lists taken in turn request by request, so
    drift of the machine hits them alike, each first in turn: p50/p95/p99 in ms by name, after
    a warm-up."""
    env = {**os.environ, "CBIR_HNSW_EF_SEARCH": str(ef)}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "cbir_site.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        first = next(iter(paths.values()))[0]
        for _ in range(100):
            try:
                urllib.request.urlopen(base + first, timeout=5).read()
                break
            except OSError:
                time.sleep(0.3)
        for listed in paths.values():
            for path in listed[:20]:  # warm both workers
                urllib.request.urlopen(base + path).read()
        latencies = {name: [] for name in paths}
        for turn, requests in enumerate(zip(*paths.values())):
            # each list goes first in turn: the first request of a query warms the pages of the
            # graph and the table that the others then find in memory
            shift = turn % len(paths)
            for name, path in (list(zip(paths, requests)) * 2)[shift : shift + len(paths)]:
                started = time.perf_counter()
                body = urllib.request.urlopen(base + path).read()
                latencies[name].append((time.perf_counter() - started) * 1000)
                assert json.loads(body)["count"] == 10, path
        return {name: {"p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "p99_ms": pct(ms, 99)} for name, ms in latencies.items()}
    finally:
        server.terminate()
        server.wait(30)


def api_latency(ids, ef: int, port=8765, query: str = "k=10") -> dict:
    return _http_latencies({"similar": [f"/api/images/{image_id}/similar/?{query}" for image_id in ids]}, ef, port)["similar"]


def api_latencies(embedding_ids, ef) -> dict:
    """GET /api/images/{id}/similar/?k=10 over HTTP for the images of these embeddings, with the
    product's query expansion (the default) and with expand=0."""
    from search.models import Embedding

    ids = list(Embedding.objects.filter(id__in=embedding_ids).order_by("id").values_list("image_id", flat=True))
    return {
        "api_similar_ef_search": ef,
        "api_similar": api_latency(ids, ef),
        "api_similar_expand_0": api_latency(ids, ef, query="k=10&expand=0"),
    }


def feedback_latencies(embedding_ids, ef) -> dict:
    """What relevance feedback costs a search: GET /api/images/{id}/similar/?k=10 for the images
    of these embeddings, plain, against the same refined by marks on its first page as a person
    would make them (the 3 nearest "more like this", the 2 farthest "less"), request by request
    over HTTP. The refined one reads the 5 marked images' vectors and moves the query first."""
    from gallery.models import Image
    from search.models import Embedding
    from search.selectors import image_list_similar

    image_ids = list(Embedding.objects.filter(id__in=embedding_ids).order_by("id").values_list("image_id", flat=True))
    plain, refined = [], []
    for image_id in image_ids:
        first = image_list_similar(image=Image.objects.get(pk=image_id), k=10)
        marks = f"&like={','.join(str(hit.image.pk) for hit in first[:3])}&unlike={','.join(str(hit.image.pk) for hit in first[-2:])}"
        plain.append(f"/api/images/{image_id}/similar/?k=10")
        refined.append(plain[-1] + marks)
    timed = _http_latencies({"plain": plain, "refined": refined}, ef)
    return {
        "api_similar_ef_search": ef, **timed,
        "ratio_p50": round(timed["refined"]["p50_ms"] / timed["plain"]["p50_ms"], 2),
        "ratio_p95": round(timed["refined"]["p95_ms"] / timed["plain"]["p95_ms"], 2),
    }


def page_latencies(rounds: int = 7) -> dict:
    """Median time of the browsing pages and list endpoints on the 990,000-image collection,
    through Django's test client in this process (no HTTP, no gunicorn): what counting and paging
    a big collection costs the web process and the database."""
    from django.test import Client

    from gallery.models import Collection, Image

    big = Collection.objects.get(name="big").pk
    client = Client()
    # page 8,000 as its neighbours' pager links reach it: seeking to the last image of page 7,999,
    # or to the first of page 8,001 (keyset), against the same page counted from the start (OFFSET)
    ids = Image.objects.filter(collection_id=big).order_by("id").values_list("id", flat=True)
    after, before = ids[7999 * 60 - 1], ids[8000 * 60]
    urls = [
        "/", f"/collections/{big}/", f"/collections/{big}/?page=8000", f"/collections/{big}/?page=16500",
        f"/collections/{big}/?page=8000&after={after}", f"/collections/{big}/?page=8000&before={before}",
        f"/collections/{big}/?status=indexed&page=8000", f"/collections/{big}/?status=indexed&page=8000&after={after}",
        f"/collections/{big}/?status=failed",
        "/api/collections/", f"/api/collections/{big}/",
        f"/api/collections/{big}/images/", f"/api/collections/{big}/images/?status=indexed&after=900000",
    ]
    result, pages = {}, {}
    for url in urls:
        client.get(url)  # warm-up
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        name = url.replace(f"={after}", "={last of page 7999}").replace(f"={before}", "={first of page 8001}")
        result[name.replace(f"/{big}/", "/{big}/")] = round(float(np.median(times)), 1)
        if "page=8000" in url:  # each way to page 8,000 shows the same images (all of them are indexed)
            tiles = re.findall(r'<a class="tile[^"]*" href="([^"]+)"', response.content.decode())
            assert len(tiles) == 60 and tiles == pages.setdefault("page 8000", tiles), url
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-load", action="store_true", help="reuse the table and index of the last run")
    parser.add_argument(
        "--expansion-only", action="store_true",
        help="only time search with the product's query expansion against without it, at the default ef_search",
    )
    parser.add_argument(
        "--feedback-only", action="store_true",
        help="only time the similar API plain against refined by marks (feedback_latencies), at the default ef_search",
    )
    parser.add_argument(
        "--pages-only", action="store_true",
        help="only time the gallery pages and list endpoints on the big collection (page_latencies)",
    )
    args = parser.parse_args()
    setup_django()
    from django.conf import settings

    from search.models import EncoderVersion, Embedding

    rng = np.random.default_rng(0)
    dim = settings.CBIR_EMBEDDING_DIM
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores", "vectors": args.vectors, "dim": dim}
    if not args.skip_load:
        encoder_id, small_id, centres = load(args.vectors, dim, rng)
        report["real_embeddings"] = add_real_embeddings(encoder_id)
        report["index_build"] = build_index()
        print(json.dumps(report["index_build"]), flush=True)
    encoder = EncoderVersion.objects.get(name="bench")
    from django.db import connection

    from gallery.models import Collection

    with connection.cursor() as cursor:  # the steady state autovacuum keeps: visibility map set, stats fresh
        cursor.execute("VACUUM (ANALYZE) search_embedding")
        cursor.execute("VACUUM (ANALYZE) gallery_image")

    if args.pages_only:
        report["page_ms"] = page_latencies()
        print(json.dumps(report, indent=2))
        return
    small_id = Collection.objects.get(name="small-1pct").pk
    # A fixed sample (seeded), so runs compare like with like.
    # Ordered: an unordered scan of a big table may start anywhere (synchronised seq scans).
    all_ids = np.array(Embedding.objects.filter(encoder=encoder).order_by("id").values_list("id", flat=True))
    chosen = np.random.default_rng(1).choice(all_ids, size=args.queries, replace=False).tolist()
    sample = list(Embedding.objects.filter(id__in=chosen).order_by("id").values_list("vector", flat=True))
    queries = [np.asarray(v) + rng.normal(0, 0.05, size=dim).astype(np.float32) for v in sample]
    k = 10
    run_queries(queries, encoder, k, None, 40)  # warm-up, not measured: index and table pages into memory
    run_queries(queries, encoder, k, [small_id], 40)
    api_ef = int(os.environ.get("CBIR_HNSW_EF_SEARCH", 80))
    report["query_expansion"] = expansion_cost(queries, encoder, k, api_ef, settings.CBIR_QUERY_EXPANSION)
    print(json.dumps({"query_expansion": report["query_expansion"]}), flush=True)
    if args.feedback_only:
        report["feedback"] = feedback_latencies(chosen, api_ef)
        print(json.dumps(report, indent=2))
        return
    if args.expansion_only:
        report |= api_latencies(chosen, api_ef)
        print(json.dumps(report, indent=2))
        return
    exact_lat, exact_ans = run_queries(queries, encoder, k, None, 0, exact=True)
    exact_small_lat, exact_small_ans = run_queries(queries, encoder, k, [small_id], 0, exact=True)
    report["exact_scan_ms"] = {"p50": pct(exact_lat, 50), "p95": pct(exact_lat, 95)}
    report["exact_scan_filtered_ms"] = {"p50": pct(exact_small_lat, 50), "p95": pct(exact_small_lat, 95)}
    # The 1% collection is under EXACT_SCAN_MAX_CANDIDATES: its ranking SQL is the exhaustive scan
    # of its rows whatever ef_search is, so it is timed once.
    filtered_pure = sql_only(queries, encoder, k, 40, [small_id])
    report["filtered_sql_only_ms"] = {q: pct(filtered_pure, int(q[1:])) for q in ("p50", "p95", "p99")}
    print(json.dumps({"exact_scan_ms": report["exact_scan_ms"], "exact_scan_filtered_ms": report["exact_scan_filtered_ms"], "filtered_sql_only_ms": report["filtered_sql_only_ms"]}), flush=True)
    rows = []
    for ef in EF_SEARCH:
        lat, ans = run_queries(queries, encoder, k, None, ef)
        flat, fans = run_queries(queries, encoder, k, [small_id], ef)
        pure = sql_only(queries, encoder, k, ef)
        rows.append(
            {
                "ef_search": ef,
                "ranking_sql_only_p50_ms": pct(pure, 50), "ranking_sql_only_p95_ms": pct(pure, 95),
                "ranking_sql_only_p99_ms": pct(pure, 99),
                "sql_p50_ms": pct(lat, 50), "sql_p95_ms": pct(lat, 95), "sql_p99_ms": pct(lat, 99),
                "recall@10": round(recall(ans, exact_ans, k), 4),
                "filtered_p50_ms": pct(flat, 50), "filtered_p95_ms": pct(flat, 95), "filtered_p99_ms": pct(flat, 99),
                "filtered_recall@10": round(recall(fans, exact_small_ans, k), 4),
                "filtered_short_answers": sum(len(a) < k for a in fans),
                "speedup_vs_exact_p50": round(pct(exact_lat, 50) / pct(lat, 50), 1),
                "speedup_sql_only_vs_exact_p50": round(pct(exact_lat, 50) / pct(pure, 50), 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report["by_ef_search"] = rows
    report |= api_latencies(chosen, api_ef)
    report["feedback"] = feedback_latencies(chosen, api_ef)
    print(json.dumps(report, indent=2))
    (VAR / "last-report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
