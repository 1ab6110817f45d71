"""What relevance feedback gives a person who marks the results: the search again after they tick
"more like this" on the results they want and "less" on the others, round after round.

    .venv/bin/python bench/feedback.py [--sets openmoji fashion-mnist digits] [--rounds 2]

Each set is loaded as `bench/heldout.py` loads it (deduplicated, the encoder's input size), and
the default encoder is fitted with the product's ``train_encoder_model`` (15 passes, seed 0,
no labels) and embeds every image. Then every image queries all the others, as `evaluate` does,
through the product's own formulas on exact cosine kNN:
- a page is the product's first page of 10 (``search.selectors.vector_list_similar``): the query
  expanded with its 3 nearest images (``expanded_query``), the expanded query's 10 nearest, listed
  by their distance to the query;
- the person is simulated by the labels: on every page they tick "more like this" on each result
  with the query's label and, in the ``liked and disliked`` arm, "less" on each of the others; the
  ``liked only`` arm ticks only the first kind. Marks add up over the rounds;
- the next round searches with the query refined by every mark so far
  (``search.selectors.feedback_query``, Rocchio's weights 1, 0.75 and 0.15), as the pages do.
Round 0 is the search without marks: the baseline, in the same run. Reported per round: P@10 and
mAP@10 of the page (the product's metric code; AP divides by min(10, relevant images)), and
"new": the relevant images on the page that no earlier page had shown, per query.
The ``discovery`` arm asks what a person finds who keeps looking at 10 images they have not seen:
after the first page, either the next page of the plain ranking (the baseline) or the 10 unseen
images nearest the query refined by every mark so far; relevant images found per look. The labels play
the person here; the encoder never sees them. Quality only: nothing here is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import project
from heldout import embed, load
from quality import dataset_tree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cbir_site.settings")

import django  # noqa: E402

django.setup()  # the selectors module reads settings at import

from search.evaluation import average_precision_at_k, precision_at_k  # noqa: E402
from search.selectors import QUERY_EXPANSION_POWER, expanded_query, feedback_query  # noqa: E402
from workers.autoencoder.model import EncoderConfig  # noqa: E402
from workers.autoencoder.training import TrainingConfig, train_encoder_model  # noqa: E402

PAGE = 10
EXPANSION = 3  # CBIR_QUERY_EXPANSION's default
ARMS = {"liked and disliked": True, "liked only": False}


def first_page(x: np.ndarray, vector: np.ndarray, query: int, seen: set[int] = frozenset()) -> np.ndarray:
    """The product's first page for ``vector``: expanded with its EXPANSION nearest images, the
    expanded query's PAGE nearest, ordered by their distance to ``vector``. ``query`` (the image
    searched with) is left out, as evaluate leaves it out; so are the ``seen`` images from the
    page (not from the expansion): the page of a person who skips what they have looked at."""
    similarity = x @ vector
    similarity[query] = -np.inf
    nearest = np.argpartition(-similarity, EXPANSION)[:EXPANSION]
    expanded = expanded_query(vector, [(1.0 - similarity[j], x[j]) for j in nearest])
    ranking = x @ expanded
    ranking[query] = -np.inf
    ranking[list(seen)] = -np.inf
    page = np.argpartition(-ranking, PAGE)[:PAGE]
    page = page[np.lexsort((page, -ranking[page]))]  # the expanded ranking decides the page ...
    return page[np.argsort(-similarity[page], kind="stable")]  # ... and the distance to the query its order


def simulate(x: np.ndarray, labels: np.ndarray, rounds: int, dislikes: bool) -> list[dict]:
    counts = {label: int((labels == label).sum()) for label in set(labels)}
    sums = [{"P@10": 0.0, "mAP@10": 0.0, "new": 0.0} for _ in range(rounds + 1)]
    for i in range(len(x)):
        liked: dict[int, None] = {}
        disliked: dict[int, None] = {}
        seen: set[int] = set()
        vector = x[i]
        for r in range(rounds + 1):
            page = first_page(x, vector, i)
            relevant = list(labels[page] == labels[i])
            sums[r]["P@10"] += precision_at_k(relevant, PAGE)
            sums[r]["mAP@10"] += average_precision_at_k(relevant, PAGE, counts[labels[i]] - 1)
            sums[r]["new"] += sum(1 for j, good in zip(page, relevant) if good and j not in seen)
            seen.update(int(j) for j in page)
            for j, good in zip(page, relevant):
                if good:
                    liked[int(j)] = None
                elif dislikes:
                    disliked[int(j)] = None
            vector = feedback_query(x[i], [x[j] for j in liked], [x[j] for j in disliked])
    return [{key: round(value / len(x), 4) for key, value in row.items()} for row in sums]


def discovery(x: np.ndarray, labels: np.ndarray, rounds: int) -> list[dict]:
    """Relevant images found per look at 10 images the person has not seen yet, after the first
    page: paging on through the plain ranking (the baseline), or the unseen images of the ranking
    refined by every mark so far (liked and disliked); each look is marked in turn."""
    sums = [{"paging on": 0.0, "refined": 0.0} for _ in range(rounds)]
    for i in range(len(x)):
        first = first_page(x, x[i], i)
        plain_seen, seen = set(int(j) for j in first), set(int(j) for j in first)
        liked = [int(j) for j in first if labels[j] == labels[i]]
        disliked = [int(j) for j in first if labels[j] != labels[i]]
        for r in range(rounds):
            page = first_page(x, x[i], i, plain_seen)
            sums[r]["paging on"] += int((labels[page] == labels[i]).sum())
            plain_seen.update(int(j) for j in page)
            page = first_page(x, feedback_query(x[i], x[liked], x[disliked]), i, seen)
            sums[r]["refined"] += int((labels[page] == labels[i]).sum())
            seen.update(int(j) for j in page)
            liked += [int(j) for j in page if labels[j] == labels[i]]
            disliked += [int(j) for j in page if labels[j] != labels[i]]
    return [{key: round(value / len(x), 4) for key, value in row.items()} for row in sums]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["openmoji", "fashion-mnist", "digits"])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of marks after the first page")
    args = parser.parse_args()
    report = {
        **project.report_header(device="cpu"), "expansion": [EXPANSION, QUERY_EXPANSION_POWER], "results": [],
    }
    config = EncoderConfig(arch="patch_kmeans")
    for name in args.sets:
        pixels, labels = load(dataset_tree(name), config.image_size)
        model, _ = train_encoder_model(
            pixels, model_config=config, train_config=TrainingConfig(epochs=15, seed=0, device="cpu"), show_progress=False
        )
        x = embed(model, pixels).astype(np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
        for arm, dislikes in ARMS.items():
            started = time.perf_counter()
            rows = simulate(x, np.array(labels), args.rounds, dislikes)
            row = {"set": name, "queries": len(x), "arm": arm, "rounds": rows, "seconds": round(time.perf_counter() - started, 1)}
            report["results"].append(row)
            print(json.dumps(row), flush=True)
        started = time.perf_counter()
        row = {"set": name, "queries": len(x), "arm": "discovery", "rounds": discovery(x, np.array(labels), args.rounds)}
        row["seconds"] = round(time.perf_counter() - started, 1)
        report["results"].append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
