"""What finding a collection's copies costs, and what it misses: the product's
``collection_list_copy_groups``, walked page by page over a collection as the copies page and API
do, against an exhaustive comparison of every pair (the ground truth) and against looking up each
image's copies one query at a time (``image_list_copies``, what the image page does), in one run.

    .venv/bin/python bench/copy_groups.py [--sets openmoji fashion-mnist] [--filler N]

Loads into the product's own tables under var/bench-copies (its own embedded PostgreSQL), after
emptying them. For each set: every picture (deduplicated by bytes, decoded as the workers decode)
and one copy of it (``copies.make_copy``'s rescaled JPEG, seeded), their signatures as the workers
record them, in one collection, in a seeded random order. ``--filler`` adds that many random
signatures in another collection first, so that the signature index is that much larger (random
signatures are far apart: none is a copy of anything). The HNSW index is built after loading, as
``manage.py migrate`` defines it.

Reported per set:
- ``walk``: seconds to walk the collection's pages (median of 3 walks), pages, images checked per
  second, and groups listed;
- ``planted_found``: the share of pictures listed in one group with their planted copy;
- ``pairs``: pairs of the collection at least ``COPY_MIN_SIMILARITY`` alike by the exhaustive
  comparison (on the signatures as stored, at half precision) that a group lists together,
  against all of them (a chain A~B~C lists C with neither A nor B when A and C are less alike);
- ``one_query_per_image``: milliseconds per image for ``image_list_copies`` over the first 1,000
  images (median of 3 rounds), and the walk's milliseconds per image as a ratio of it;
- ``dry_run``: ``collection_remove_copies(dry_run=True)`` followed round by round, as
  ``manage.py remove_copies --dry-run`` does: its seconds, as a ratio of the walk's, its rounds,
  and how the images it names compare with those the removal then deletes (named and deleted,
  named only, deleted only);
- ``removal``, last, as it deletes: every copy removed as a recorded run (``copy_removal_record``,
  then ``copy_removal_advance`` stretch by stretch and round by round, as the workers' task and
  the command do), keep=largest. Its seconds,
  and as a ratio of the walk's (the baseline: reading every group without deleting); images
  deleted, in all and in each round; images checked in each round (a later round checks only
  those the round before left with a copy of a higher rank), beside the images the collection held
  at the start of each round (what a round checking every image would read); the images its last round left although their signatures
  match a picture of a higher rank (not alike region by region); the share of them
  with an image at least ``COPY_MIN_SIMILARITY`` alike left (exhaustive, on the stored signatures);
  planted pairs with one picture left, with both left, with none; of the pairs of unequal sizes,
  the share whose larger picture is the one left; and the groups a walk still lists afterwards.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

import project

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "bench-copies"
SEED = 0
WALKS = 3
PER_IMAGE_SAMPLE = 1000


def load_set(name: str) -> list[tuple[str, np.ndarray, tuple[int, int], bytes]]:
    """(name, signature, size, thumbnail) of every picture of the set and of its rescaled JPEG
    copy, as the workers make them; pictures with no signature (one flat grey) left out."""
    from copies import load, make_copy
    from django.conf import settings

    from gallery import imaging
    from quality import dataset_tree

    files, names = load(dataset_tree(name), None)
    rng = np.random.default_rng(SEED)
    rows = []
    for data, picture_name in zip(files, names):
        picture = imaging.fit_within(imaging.decode_for_encoder(data), imaging.WORKING_SIDE)
        copy = imaging.decode_for_encoder(make_copy(picture, "rescaled JPEG", rng))
        for label, pixels in ((picture_name, picture), (f"{picture_name} (copy)", copy)):
            signature = imaging.copy_signature(pixels)
            if signature is not None:
                thumbnail = imaging.thumbnail_webp(pixels, size=settings.CBIR_THUMBNAIL_SIZE)
                rows.append((label, np.asarray(signature, dtype=np.float32), pixels.size, thumbnail))
    return rows


def reset_tables(filler: int) -> tuple[int, str]:
    """Empty tables, ``filler`` random signatures in a collection of their own, and the signature
    index dropped for the load. Returns the filler collection's id and the index's definition."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from gallery.models import Collection, Image

    call_command("migrate", verbosity=0)
    with connection.schema_editor() as editor:  # the index as the model defines it
        index = str(next(i for i in Image._meta.indexes if i.name == "image_signature_hnsw").create_sql(Image, editor))
    shutil.rmtree(Path(settings.MEDIA_ROOT) / "thumbnails", ignore_errors=True)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE search_embedding, gallery_image, gallery_collection RESTART IDENTITY CASCADE")
        cursor.execute("DROP INDEX IF EXISTS image_signature_hnsw")
    others = Collection.objects.create(name="filler")
    rng = np.random.default_rng(SEED + 1)
    for start in range(0, filler, 50_000):
        block = rng.normal(size=(min(50_000, filler - start), 384)).astype(np.float32)
        insert(others.pk, [(f"filler {start + i}", row / np.linalg.norm(row), (0, 0), b"") for i, row in enumerate(block)])
    return others.pk, index


def insert(collection_id: int, rows: list[tuple[str, np.ndarray, tuple[int, int], bytes]]) -> list[int]:
    """COPY ``rows`` (name, signature, size, thumbnail) into gallery_image as indexed images of the
    collection, their thumbnails into media storage; returns their ids in order."""
    from django.conf import settings
    from django.db import connection
    from pgvector import HalfVector

    folder = Path(settings.MEDIA_ROOT) / "thumbnails" / str(collection_id)
    folder.mkdir(parents=True, exist_ok=True)

    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        cursor.execute("SELECT nextval('gallery_image_id_seq') FROM generate_series(1, %s)", [len(rows)])
        ids = [row[0] for row in cursor.fetchall()]
        with cursor.copy(
            "COPY gallery_image (id, collection_id, file, thumbnail, original_name, label, sha256, status, error, created_at, updated_at, signature, width, height) FROM STDIN"
        ) as copy:
            for image_id, (name, signature, (width, height), thumbnail) in zip(ids, rows):
                digest = hashlib.sha256(name.encode()).hexdigest()
                thumbnail_name = f"thumbnails/{collection_id}/{image_id}.webp" if thumbnail else ""
                if thumbnail:
                    (folder / f"{image_id}.webp").write_bytes(thumbnail)
                copy.write_row((
                    image_id, collection_id, "", thumbnail_name, name, "", digest, "indexed", "", "now", "now", HalfVector(signature).to_text(),
                    width or None, height or None,
                ))
    connection.commit()
    return ids


def exhaustive_pairs(signatures: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """(i, j), i < j, of every pair at least ``threshold`` alike, in blocks."""
    found = set()
    for start in range(0, len(signatures), 2048):
        block = signatures[start : start + 2048] @ signatures.T
        for i, j in zip(*np.nonzero(block >= threshold)):
            if start + i < j:
                found.add((start + int(i), int(j)))
    return found


def walk(collection) -> tuple[float, int, list]:
    from gallery.selectors import collection_list_copy_groups

    started, after, pages, groups = time.perf_counter(), 0, 0, []
    while True:
        found = collection_list_copy_groups(collection=collection, after=after)
        pages, groups, after = pages + 1, groups + found.groups, found.checked_to
        if found.done:
            return time.perf_counter() - started, pages, groups


def run_set(name: str, filler: int) -> dict:
    from django.db import connection

    from gallery.models import Collection, Image
    from gallery.selectors import COPY_MIN_SIMILARITY, image_list_copies

    rows = load_set(name)
    order = np.random.default_rng(SEED).permutation(len(rows))
    rows = [rows[i] for i in order]
    _, index = reset_tables(filler)
    collection = Collection.objects.create(name=name)
    ids = insert(collection.pk, rows)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(index)
        cursor.execute("ANALYZE gallery_image")
    index_seconds = time.perf_counter() - started
    position = {image_id: i for i, image_id in enumerate(ids)}

    walks = [walk(collection) for _ in range(WALKS)]
    seconds = float(np.median([w[0] for w in walks]))
    _, pages, groups = walks[0]
    listed = {
        tuple(sorted((position[group.image.pk], position[copy.image.pk]))) for group in groups for copy in group.copies
    }
    listed |= {  # copies listed together in a group are alike too, when the exhaustive comparison says so
        tuple(sorted((position[a.image.pk], position[b.image.pk]))) for group in groups for a in group.copies for b in group.copies if a is not b
    }
    halves = np.stack([signature.astype(np.float16).astype(np.float32) for _, signature, _, _ in rows])
    halves /= np.linalg.norm(halves, axis=1, keepdims=True)
    truth = exhaustive_pairs(halves, COPY_MIN_SIMILARITY)
    names = {row[0]: i for i, row in enumerate(rows)}
    planted = [(names[label], names[f"{label} (copy)"]) for label, _, _, _ in rows if not label.endswith(" (copy)") and f"{label} (copy)" in names]
    planted_found = sum(tuple(sorted(pair)) in listed for pair in planted) / len(planted)

    sample = list(Image.objects.filter(collection=collection).order_by("id")[:PER_IMAGE_SAMPLE])
    rounds = []
    for _ in range(3):
        started = time.perf_counter()
        for image in sample:
            image_list_copies(image=image)
        rounds.append((time.perf_counter() - started) / len(sample) * 1000)
    per_image_ms = float(np.median(rounds))
    walk_ms = seconds / len(rows) * 1000
    removal = remove_all(collection, rows, ids, halves, planted, walk_seconds=seconds)
    return {
        "set": name, "images": len(rows), "table_images": len(rows) + filler, "index_build_s": round(index_seconds, 1),
        "walk": {"seconds": round(seconds, 2), "pages": pages, "checked_per_s": round(len(rows) / seconds), "groups": len(groups), "ms_per_image": round(walk_ms, 4)},
        "planted_found": round(planted_found, 4),
        "pairs": {"exhaustive": len(truth), "listed_together": len(truth & listed), "share": round(len(truth & listed) / max(len(truth), 1), 4)},
        "one_query_per_image": {"ms_per_image": round(per_image_ms, 4), "walk_ratio": round(walk_ms / per_image_ms, 3)},
        "removal": removal,
    }


def remove_all(collection, rows, ids: list[int], halves: np.ndarray, planted: list[tuple[int, int]], *, walk_seconds: float) -> dict:
    """Every copy of the collection removed (keep=largest), as the module's docstring says."""
    from gallery.models import CopyRemovalRun, Image
    from gallery.selectors import COPY_MIN_SIMILARITY
    from gallery.services import CopyRemovalStep, collection_remove_copies, copy_removal_advance, copy_removal_record

    started, step, named, dry_rounds = time.perf_counter(), CopyRemovalStep(), set(), 0
    while step is not None:
        removal = collection_remove_copies(collection=collection, keep="largest", step=step, dry_run=True)
        named |= removal.plan.doomed.keys()
        dry_rounds, step = step.round, removal.next
    dry_seconds = time.perf_counter() - started

    started, stretches, by_round, unlike, checked, there = time.perf_counter(), 0, {}, {}, {}, {}
    run = copy_removal_record(collection=collection, keep="largest")
    while run.status == CopyRemovalRun.Status.RUNNING:
        round_number = run.round
        if round_number not in there:  # what a round that checked every image would read (not timed apart)
            there[round_number] = Image.objects.filter(collection=collection, signature__isnull=False).count()
        removal = copy_removal_advance(run_id=run.pk, round_number=round_number, after=run.after)
        stretches, by_round[round_number] = stretches + 1, by_round.get(round_number, 0) + removal.deleted
        unlike[round_number] = unlike.get(round_number, 0) + removal.plan.unlike
        checked[round_number] = checked.get(round_number, 0) + removal.plan.checked
        run.refresh_from_db()
    seconds = time.perf_counter() - started
    deleted = sum(by_round.values())
    left_ids = set(Image.objects.filter(collection=collection).values_list("id", flat=True))
    gone_ids = set(ids) - left_ids
    left = np.array([image_id in left_ids for image_id in ids])
    removed = np.flatnonzero(~left)
    kept_signatures = halves[left]
    with_copy_left = sum(
        int(((halves[removed[start : start + 2048]] @ kept_signatures.T) >= COPY_MIN_SIMILARITY).any(axis=1).sum())
        for start in range(0, len(removed), 2048)
    )
    one_left = sum(left[a] != left[b] for a, b in planted)
    both_left = sum(left[a] and left[b] for a, b in planted)
    sizes = [rows[i][2][0] * rows[i][2][1] for i in range(len(rows))]
    unequal = [(a, b) for a, b in planted if sizes[a] != sizes[b] and left[a] != left[b]]
    larger_left = sum(left[a if sizes[a] > sizes[b] else b] for a, b in unequal)
    _, _, groups_after = walk(collection)
    return {
        "dry_run": {
            "seconds": round(dry_seconds, 2), "ratio_to_walk": round(dry_seconds / walk_seconds, 3), "rounds": dry_rounds,
            "named": len(named), "named_and_deleted": len(named & gone_ids), "named_only": len(named - gone_ids), "deleted_only": len(gone_ids - named),
        },
        "seconds": round(seconds, 2), "stretches": stretches, "ratio_to_walk": round(seconds / walk_seconds, 3),
        "deleted": deleted, "deleted_by_round": list(by_round.values()),
        "checked_by_round": list(checked.values()), "images_at_each_round": list(there.values()), "left_as_unlike": unlike[max(unlike)], "deleted_with_a_copy_left": round(with_copy_left / max(len(removed), 1), 4),
        "planted": {"one_left": round(one_left / len(planted), 4), "both_left": round(both_left / len(planted), 4), "none_left": round((len(planted) - one_left - both_left) / len(planted), 4)},
        "larger_of_unequal_left": round(larger_left / max(len(unequal), 1), 4),
        "groups_after": len(groups_after),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["openmoji", "fashion-mnist"])
    parser.add_argument("--filler", type=int, default=0, help="random signatures in another collection, to make the index this much larger")
    args = parser.parse_args()
    project.setup_django(VAR, DJANGO_DEBUG="0", DJANGO_SECRET_KEY="bench-only")
    report = {
        **project.report_header(), "results": [run_set(name, args.filler) for name in args.sets],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
