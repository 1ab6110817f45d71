"""Search at two embedding widths: the product's ranking SQL on the same collection stored at 256
and at 128 dimensions (``CBIR_EMBEDDING_DIM``), side by side in one run.

    .venv/bin/python bench/search_width.py [--vectors 1000000] [--queries 200] [--rounds 5] [--widths 256 128] [--tie-order]

The product's vector column has one width at a time (``resize_vectors`` changes it), so each width
gets a table of its own shaped like ``search_embedding`` (``LIKE search_embedding``, the vector
column at that width) under var/bench-width (embedded PostgreSQL 18 + pgvector), with the
product's HNSW index on it (``m=16, ef_construction=64``, as migration ``search 0001`` builds
it). Both hold the same collection: clustered points in a 32-dimensional latent space (2,000
Gaussian clusters with unequal spreads, as ``bench/search_scale.py`` makes them), mapped into each
width by a fixed random linear map, plus a little isotropic noise. The queries are the same latent
points at each width (stored points plus noise).

For each width, in one run:
- the index build (time, size) and the table's size;
- the ranking SQL that ``search.selectors.similar_queryset`` writes for a search of the whole
  collection (``ORDER BY vector <=> query LIMIT 10`` on one encoder's vectors, sent as the product
  sends it, the table's name aside), at the product's ``hnsw.ef_search``: latency p50 / p95 over
  ``--rounds`` alternating rounds (the widths' order swapped each round, so drift of the machine
  hits both alike), after one unmeasured round that brings each table's pages into memory;
- recall@10 against the exhaustive scan of the same table.
The tables are dropped at the end: each run loads its own.
The ratio of the two widths' latencies is the figure to read; retrieval quality at each width is
``bench/encoder_variants.py --parts widths``'s.

With ``--tie-order``, on the first width only, the product's ranking SQL (ties in distance go by
image id, so pages of one search neither repeat nor skip tied images) against the same SQL ordered
by distance alone (as the product wrote it before), each for the first page and the second
(``OFFSET 10``), in alternating rounds, with a check that all four rank with the HNSW index.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

import project

VAR = project.ROOT / "var" / "bench-width"
LATENT, CLUSTERS, K = 32, 2000, 10
CHUNK = 50_000


def table(width: int) -> str:
    return f"bench_width_{width}"


def latent_points(n: int, rng) -> np.ndarray:
    centres = rng.normal(size=(CLUSTERS, LATENT)).astype(np.float32)
    spreads = rng.uniform(0.2, 0.8, size=CLUSTERS).astype(np.float32)
    cluster = rng.integers(0, CLUSTERS, n)
    return centres[cluster] + spreads[cluster, None] * rng.normal(size=(n, LATENT)).astype(np.float32)


def to_width(points: np.ndarray, width: int) -> np.ndarray:
    """The latent points in ``width`` dimensions: a fixed random map per width, plus noise."""
    rng = np.random.default_rng(width)
    mapping = (rng.normal(size=(LATENT, width)) / np.sqrt(LATENT)).astype(np.float32)
    return points @ mapping + 0.02 * rng.normal(size=(len(points), width)).astype(np.float32)


def load(points: np.ndarray, width: int, encoder_id: int, collection_id: int) -> dict:
    from django.db import connection
    from pgvector.psycopg import register_vector

    name = table(width)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name}")
        cursor.execute(f"CREATE TABLE {name} (LIKE search_embedding INCLUDING DEFAULTS)")
        cursor.execute(f"ALTER TABLE {name} ALTER COLUMN vector TYPE vector({width})")
    connection.ensure_connection()
    raw = connection.connection
    register_vector(raw)
    started = time.perf_counter()
    with raw.cursor() as cursor:
        for start in range(0, len(points), CHUNK):
            vectors = to_width(points[start : start + CHUNK], width)
            with cursor.copy(f"COPY {name} (id, image_id, encoder_id, collection_id, vector) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int8", "int8", "int8", "vector"])
                for i, vector in enumerate(vectors):
                    copy.write_row((start + i + 1, start + i + 1, encoder_id, collection_id, vector))
    raw.commit()
    loaded = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("SET maintenance_work_mem = '4GB'")
        cursor.execute("SET max_parallel_maintenance_workers = 1")  # leader + 1 worker = the 2 cores
        started = time.perf_counter()
        cursor.execute(f"CREATE INDEX {name}_hnsw ON {name} USING hnsw (vector vector_cosine_ops) WITH (m = 16, ef_construction = 64)")
        built = time.perf_counter() - started
        cursor.execute(f"ANALYZE {name}")
        cursor.execute(f"SELECT pg_relation_size('{name}_hnsw'), pg_relation_size('{name}')")
        index_bytes, table_bytes = cursor.fetchone()
    print(f"  {width}-d: loaded in {loaded:.0f} s, index built in {built:.0f} s", flush=True)
    return {"load_s": round(loaded, 1), "index_build_s": round(built, 1), "index_mb": round(index_bytes / 2**20), "table_mb": round(table_bytes / 2**20)}


def ranking_sql(
    width: int, vector: np.ndarray, encoder, *, exact: bool = False, offset: int = 0, distance_only: bool = False
) -> tuple[str, tuple]:
    """The product's ranking SQL for this query, on the width's table: through the HNSW index, or
    with ``exact`` the exhaustive scan that ``?exact=1`` runs (the ground truth). ``offset``: a
    later page; ``distance_only``: ordered by the distance alone, without the product's tie-break."""
    from search.selectors import SearchFilters, similar_queryset

    query = similar_queryset(vector=vector, encoder=encoder, k=K, offset=offset, filters=SearchFilters(exact=exact)).query
    if distance_only:
        query = query.clone()
        query.clear_ordering(force=True)
        query.add_ordering("distance")
    sql, params = query.sql_with_params()
    assert '"search_embedding"' in sql, sql
    return sql.replace('"search_embedding"', f'"{table(width)}"'), params


def timed(statements: list[tuple[str, tuple]], ef: int | None = None) -> tuple[list[float], list[list[int]]]:
    """Each statement's latency (ms) and the image ids it answers, at ``hnsw.ef_search`` = ``ef``."""
    from django.db import connection

    latencies, answers = [], []
    with connection.cursor() as cursor:
        if ef:
            cursor.execute("SELECT set_config('hnsw.ef_search', %s, false)", [str(ef)])
        for sql, params in statements:
            started = time.perf_counter()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            latencies.append((time.perf_counter() - started) * 1000)
            answers.append([row[0] for row in rows])
    return latencies, answers


def tie_order(width: int, queries: np.ndarray, encoder, rounds: int, ef: int) -> dict:
    """``--tie-order``: the product's ranking SQL against the same ordered by distance alone, on the
    first page and the second, in alternating rounds (the variants' order swapped each round)."""
    variants = {
        f"{name}_page_{page}": [ranking_sql(width, vector, encoder, offset=(page - 1) * K, distance_only=alone) for vector in queries]
        for name, alone in (("product", False), ("distance_only", True))
        for page in (1, 2)
    }
    result = {name: {"ranked_by_the_hnsw_index": plan_uses_index(width, statements[0])} for name, statements in variants.items()}
    latencies = {name: [] for name in variants}
    for statements in variants.values():
        timed(statements, ef)  # warm-up, not measured
    for round_ in range(rounds):
        for name in list(variants) if round_ % 2 == 0 else list(variants)[::-1]:
            latencies[name] += timed(variants[name], ef)[0]
    for name in variants:
        result[name].update(p50_ms=round(float(np.percentile(latencies[name], 50)), 2), p95_ms=round(float(np.percentile(latencies[name], 95)), 2))
    for page in (1, 2):
        product, alone = result[f"product_page_{page}"], result[f"distance_only_page_{page}"]
        product.update(p50_ratio_to_distance_only=round(product["p50_ms"] / alone["p50_ms"], 3), p95_ratio_to_distance_only=round(product["p95_ms"] / alone["p95_ms"], 3))
    return result


def plan_uses_index(width: int, statement: tuple[str, tuple]) -> bool:
    """Whether PostgreSQL answers the ranking with the width's HNSW index, as it does the product's."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + statement[0], statement[1])
        return any(f"{table(width)}_hnsw" in row[0] for row in cursor.fetchall())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--tie-order", action="store_true", help="only the first width: the product's tie-break against ordering by distance alone")
    args = parser.parse_args()
    if args.tie_order:
        args.widths = args.widths[:1]
    project.setup_django(VAR, DJANGO_DEBUG="0", DJANGO_SECRET_KEY="bench-only")
    from django.conf import settings
    from django.core.management import call_command

    from gallery.models import Collection
    from search.models import EncoderVersion

    call_command("migrate", verbosity=0)
    encoder = EncoderVersion.objects.filter(name="bench-width").first() or EncoderVersion.objects.create(
        name="bench-width", arch="patch_kmeans", dim=settings.CBIR_EMBEDDING_DIM, status="retired"
    )
    collection, _ = Collection.objects.get_or_create(name="bench-width")
    rng = np.random.default_rng(0)
    points = latent_points(args.vectors, rng)
    chosen = np.random.default_rng(1).choice(args.vectors, size=args.queries, replace=False)
    query_points = points[chosen] + rng.normal(0, 0.05, size=(args.queries, LATENT)).astype(np.float32)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "vectors": args.vectors, "queries": args.queries, "rounds": args.rounds, "k": K,
        "ef_search": settings.CBIR_HNSW_EF_SEARCH, "widths": {},
    }
    statements = {}
    if args.tie_order:
        width = args.widths[0]
        report["widths"][width] = load(points, width, encoder.pk, collection.pk)
        del points
        report["widths"][width]["tie_order"] = tie_order(width, to_width(query_points, width), encoder, args.rounds, settings.CBIR_HNSW_EF_SEARCH)
        print(json.dumps(report, indent=2))
        drop_tables(args.widths)
        return
    for width in args.widths:
        report["widths"][width] = load(points, width, encoder.pk, collection.pk)
        queries = to_width(query_points, width)
        statements[width] = [ranking_sql(width, vector, encoder) for vector in queries]
        report["widths"][width]["exact"] = timed([ranking_sql(width, vector, encoder, exact=True) for vector in queries])[1]
        report["widths"][width]["ranked_by_the_hnsw_index"] = plan_uses_index(width, statements[width][0])
    del points
    ef = settings.CBIR_HNSW_EF_SEARCH
    latencies = {width: [] for width in args.widths}
    answers = {}
    for width in args.widths:
        timed(statements[width], ef)  # warm-up, not measured
    for round_ in range(args.rounds):
        for width in args.widths if round_ % 2 == 0 else args.widths[::-1]:
            lat, answers[width] = timed(statements[width], ef)
            latencies[width] += lat
    for width in args.widths:
        exact = report["widths"][width].pop("exact")
        recall = np.mean([len(set(got) & set(truth)) / len(truth) for got, truth in zip(answers[width], exact)])
        report["widths"][width].update(
            recall_at_10=round(float(recall), 3),
            p50_ms=round(float(np.percentile(latencies[width], 50)), 2),
            p95_ms=round(float(np.percentile(latencies[width], 95)), 2),
        )
    base, *others = args.widths
    for width in others:
        report["widths"][width]["p50_ratio_to_" + str(base)] = round(report["widths"][width]["p50_ms"] / report["widths"][base]["p50_ms"], 3)
        report["widths"][width]["p95_ratio_to_" + str(base)] = round(report["widths"][width]["p95_ms"] / report["widths"][base]["p95_ms"], 3)
    print(json.dumps(report, indent=2))
    drop_tables(args.widths)


def drop_tables(widths: list[int]) -> None:
    from django.db import connection

    with connection.cursor() as cursor:  # 4.8 GB at a million vectors; each run loads its own
        for width in widths:
            cursor.execute(f"DROP TABLE {table(width)}")


if __name__ == "__main__":
    main()
