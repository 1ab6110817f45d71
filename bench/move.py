"""Moving a large selection of images to another collection: how long ``images_move`` holds the
request that asks for it (the admin's action, ``POST /api/images/move/``), against the two
UPDATE statements it ends with run alone, in the same run.

    .venv/bin/python bench/move.py [--images 20000] [--rounds 3]

Two collections of ``--images`` rows each are loaded as ``bench/delete.py`` loads them (files,
random vectors, the HNSW index), into their own embedded PostgreSQL under var/bench-move. Each
round moves every image of the first collection into the second with the baseline, then back
with the product (or the other way round, alternating from round to round), so both move the
same rows by their ids:
- baseline: the ids read, then ``UPDATE gallery_image`` and ``UPDATE
  search_embedding`` by those ids, in one transaction: no lock taken first and no file compared;
- product: ``gallery.services.images_move``, which also locks both collections and the images
  and compares each file's SHA-256 with those the target holds.
Wall time per call and per image, medians of the rounds, and their ratio.

    .venv/bin/python bench/move.py --runs [--images 20000] [--rounds 3]

compares instead what the workers do with a selection larger than a request moves: a recorded
``MoveRun`` advanced a stretch of ``MOVE_IMAGES_MAX`` at a time (``move_run_advance``, each
stretch its own transaction with the run's bookkeeping; run here in this process, so the queue's
hop between stretches is not in it), against ``images_move`` moving them all in one call (the
baseline), on the same rows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import project
from delete import load

VAR = project.ROOT / "var" / "bench-move"


def move_plain(selection, target: int) -> None:
    from django.db import connection, transaction

    from gallery.services import _MOVE_IMAGES_SQL

    with transaction.atomic():
        ids = list(selection.order_by("pk").values_list("pk", flat=True))
        with connection.cursor() as cursor:
            for sql in _MOVE_IMAGES_SQL:
                cursor.execute(sql, {"to": target, "ids": ids})


def move_product(selection, target: int) -> None:
    from gallery.models import Collection
    from gallery.services import images_move

    moved = images_move(images=selection, to=Collection.objects.get(pk=target))
    if moved.duplicates or moved.already:
        raise RuntimeError("the bench's collections share no file: every image should move")


def move_in_stretches(selection, target: int) -> None:
    from gallery.models import Collection, MoveRun
    from gallery.services import move_run_advance

    ids = list(selection.order_by("pk").values_list("pk", flat=True))
    run = MoveRun.objects.create(to=Collection.objects.get(pk=target), image_ids=ids, total=len(ids))
    position = 0
    while position is not None:
        position = move_run_advance(run_id=run.pk, position=position)
    run.refresh_from_db()
    if run.status != MoveRun.Status.DONE or run.moved != run.total:
        raise RuntimeError(f"the run ended {run.status} with {run.moved} of {run.total} moved: {run.error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000, help="images in each of the two collections")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", action="store_true", help="a MoveRun in stretches against one images_move call")
    args = parser.parse_args()
    project.setup_django(VAR)
    from gallery.models import Image
    from search.models import Embedding

    first, second = load(args.images)
    moving = list(Image.objects.filter(collection_id=first).values_list("pk", flat=True))  # out and back each round
    baseline, product = ("plain", move_plain), ("product", move_product)
    if args.runs:
        baseline, product = ("one_call", move_product), ("stretches", move_in_stretches)
    times: dict[str, list[float]] = {baseline[0]: [], product[0]: []}
    for round_number in range(args.rounds):
        # each pair moves the first collection's images out and back, the baseline first in even rounds
        ways = [baseline, product]
        if round_number % 2:
            ways.reverse()
        for (name, move), (source, target) in zip(ways, ((first, second), (second, first))):
            selection = Image.objects.filter(pk__in=moving)
            if selection.filter(collection_id=source).count() != args.images:
                raise RuntimeError("the images to move are not where the round expects them")
            started = time.perf_counter()
            move(selection, target)
            times[name].append(time.perf_counter() - started)
            if Embedding.objects.filter(collection_id=target).count() != (2 if target == second else 1) * args.images:
                raise RuntimeError(f"{name}: the vectors did not follow their images")
        print(json.dumps({"round": round_number + 1, **{name: round(values[-1], 3) for name, values in times.items()}}), flush=True)
    medians = {name: statistics.median(values) for name, values in times.items()}
    report = {
        **project.report_header(),
        "images_moved": args.images,
        "rounds": args.rounds,
        **{f"{name}_s": round(value, 3) for name, value in medians.items()},
        **{f"{name}_ms_per_image": round(value / args.images * 1000, 4) for name, value in medians.items()},
        f"{product[0]}_to_{baseline[0]}": round(medians[product[0]] / medians[baseline[0]], 2),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
