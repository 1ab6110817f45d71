"""The variants weighed against the default encoder and search, scored on the shared sets: the
figures behind the "tried and not adopted" lists of docs/benchmarks.md ("Query expansion",
"Max-pooled dictionary codes", "A pyramid of gradient histograms").

    .venv/bin/python bench/encoder_variants.py [--sets fashion-mnist openmoji digits] [--parts pooling expansion sizes pyramid settings hubness widths]
                                               [--size-sets openmoji]

Each set is loaded as `bench/heldout.py` loads it (deduplicated, the encoder's input size) and
``patch_kmeans`` is fitted with the product's ``train_encoder_model`` (15 passes, seed 0), without
the max-pooled block, the gradient pyramid and the gradient words (and with the block, for ``pyramid``). Then, scored with exact cosine kNN and the product's metric code
(``quality.exact_knn_scores``), each embedding plain and with the product's query expansion
(3 neighbours, similarity cubed, ``search.selectors.expanded_query``'s formula on exact kNN):
- ``pooling``: the dictionary codes pooled in other ways (max on a 1x1 = the product's block, 2x2
  or 4x4 grid; max instead of the averages; a pyramid of averages; the block at half weight;
  a VLAD block of 64 or 128 atoms beside the product's blocks). Every variant goes through the
  product's steps after pooling: square root, each block centred and unit-length, the partially
  whitened PCA and the neighbour whitening (``_partial_whitening``, ``neighbour_whitening``).
- ``expansion``: on the encoder without and with the block, alpha-QE with 2, 3, 5, 10
  neighbours and alpha 3, 5; database-side augmentation (DBA) with the same settings; and on
  sets of at most 5,000 images, k-reciprocal re-ranking (Zhong et al. 2017).
- ``pyramid``: on the encoder with the block, gradient histograms on 4x4 and 2x2 cells beside
  its 8x8 ones: each level alone, both as blocks of their own (the product's ``hog_pyramid``),
  both as one block, and the three levels as one block in place of the 8x8 one.
- ``sizes`` (on ``--size-sets``): the encoder fitted at 32, 48 and 64 px, without and with the block;
  with ``pooling`` too, the pooling variants again at 64 px (the larger input and the VLAD block
  together: the best that the variants here reach on OpenMoji).
- ``settings``: today's default encoder (``DEFAULT``), and one of its settings changed at a time
  (input size, patch size, atoms, pooling grid, colour, whitening power), or a step left out
  (``SETTINGS``), each fitted and scored in its place.
- ``hubness``: CSLS hubness reduction on the default's embedding, as a full distance matrix.
- ``words``: the default's gradient words (dense gradient descriptors aggregated as a VLAD):
  the default, without them (the default before them), at weight 1.5 and 2 instead of 3, with
  64 words instead of 128, with one cell size (4 px) instead of two, and at 64 px instead of 128.
- ``widths``: the default fitted to other embedding widths (``--dim``: 64, 128, 384, 512; the
  vector column and the HNSW index follow ``CBIR_EMBEDDING_DIM``), its other settings kept.
Quality only: nothing here is timed. ``digits`` needs scikit-learn, as in `bench/quality.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from heldout import embed, load
from project import report_header
from quality import dataset_tree, exact_knn_scores

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.autoencoder.model import EncoderConfig  # noqa: E402
from workers.autoencoder.patch_dictionary import (  # noqa: E402
    _kmeans_step,
    _partial_whitening,
    colour_histograms,
    gradient_histogram_levels,
    gradient_histograms,
    neighbour_whitening,
)
from workers.autoencoder.training import TrainingConfig, train_encoder_model  # noqa: E402

SEED = 0
SIZES = (32, 48, 64)
# today's default encoder, which ``settings`` and ``hubness`` start from
DEFAULT = EncoderConfig(arch="patch_kmeans")
# one setting of the default changed at a time (``settings``), then two of its steps left out
SETTINGS = {
    "the default": {},
    "48 px input (words at 144 px)": {"image_size": 48, "word_side": 144},
    "64 px input": {"image_size": 64},
    "7 px patches": {"patch_size": 7},
    "512 atoms": {"dictionary_size": 512},
    "2x2 pooling grid": {"pool_grid": 2},
    "colour on a 2x2 grid": {"colour_grid": 2},
    "colour weight 0.5": {"colour_weight": 0.5},
    "colour weight 1.0": {"colour_weight": 1.0},
    "whitening power 0 (plain PCA)": {"whitening_power": 0.0},
    "whitening power 0.5 (full whitening)": {"whitening_power": 0.5},
    "without the neighbour whitening": {"neighbour_pairs": 0},
    "without the max-pooled block and the gradient pyramid": {"max_pooled_codes": False, "hog_pyramid": ()},
}
# the embedding width (``--dim``, CBIR_EMBEDDING_DIM), the default's other settings kept (``widths``)
WIDTHS = {"the default": {}, **{f"{dim}-d": {"dim": dim} for dim in (64, 128, 384, 512)}}
# the gradient words (``words``): the default, without them (the default before them), and one of
# their settings changed at a time
WORDS = {
    "the default": {},
    "without the gradient words": {"gradient_words": 0},
    "word weight 1.5": {"word_weight": 1.5},
    "word weight 2": {"word_weight": 2.0},
    "64 words": {"gradient_words": 64},
    "one cell size (4 px)": {"word_cells": (4,)},
    "words at 64 px": {"word_side": 64},
}
# the encoder before the max-pooled block, the gradient pyramid and the gradient words, which the
# variants of ``pooling``, ``expansion``, ``sizes`` and ``pyramid`` started from
BASELINE = EncoderConfig(arch="patch_kmeans", max_pooled_codes=False, hog_pyramid=(), gradient_words=0)


def nearest(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each unit row's k nearest other rows and their cosine similarities, nearest first."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    ids, sims = np.zeros((len(x), k), int), np.zeros((len(x), k))
    for start in range(0, len(x), 2000):
        block = x[start : start + 2000] @ x.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        top = np.argpartition(-block, k, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(block, top, 1), 1), 1)
        ids[start : start + 2000], sims[start : start + 2000] = top, np.take_along_axis(block, top, 1)
    return ids, sims


def scores(x: np.ndarray, labels, queries: np.ndarray | None = None) -> dict:
    found = exact_knn_scores(x, labels, ks=(1, 10), queries=queries)
    return {key: found[key] for key in ("P@1", "P@10", "mAP@10")}


def expanded(x: np.ndarray, neighbours: int, alpha: float) -> np.ndarray:
    """alpha-QE of every row: itself plus its nearest rows weighted by max(0, similarity) ** alpha."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    ids, sims = nearest(x, neighbours)
    return x + (x[ids] * (np.clip(sims, 0, None) ** alpha)[..., None]).sum(1)


def plain_and_expanded(x: np.ndarray, labels) -> dict:
    return {"plain": scores(x, labels), "expand_3": scores(x, labels, queries=expanded(x, 3, 3))}


def project(blocks: list[torch.Tensor], weights: list[float], roots: list[bool]) -> np.ndarray:
    """The product's steps after pooling (PatchDictionaryEncoder.features, fit_patch_dictionary):
    blocks square-rooted (signed, for VLAD), centred, unit-length and weighted; the partially
    whitened PCA; the neighbour whitening."""
    parts = []
    for block, weight, root in zip(blocks, weights, roots):
        block = block.sqrt() if root else block
        parts.append(F.normalize(block - block.mean(0), dim=1) * weight)
    features = torch.cat(parts, 1)
    centred = features - features.mean(0)
    projection = _partial_whitening(centred, dim=BASELINE.dim, power=BASELINE.whitening_power, seed=SEED)
    projection, _ = neighbour_whitening(centred, start=projection, neighbours=BASELINE.neighbour_pairs, seed=SEED)
    return F.normalize(centred @ projection, dim=1).numpy()


@torch.inference_mode()
def pooling_variants(model, pixels: torch.Tensor, labels) -> dict:
    config = model.config
    side = config.image_size - config.patch_size + 1
    generator = torch.Generator().manual_seed(SEED)
    sample = torch.cat([model.whitened_patches(pixels[i : i + 1].float() / 255) for i in torch.randperm(len(pixels), generator=generator)[:640]])
    sample = sample[torch.randperm(len(sample), generator=generator)[:100_000]]
    vlad_atoms = {}
    for count in (64, 128):
        atoms = sample[torch.randperm(len(sample), generator=generator)[:count]].clone()
        for _ in range(15):
            atoms, _ = _kmeans_step(sample, atoms, generator)
        vlad_atoms[count] = atoms
    pooled = {name: [] for name in ("avg1", "avg2", "avg4", "max1", "max2", "max4", "vlad64", "vlad128", "hog", "colour")}
    for start in range(0, len(pixels), 128):
        x = pixels[start : start + 128].float() / 255
        z = model.whitened_patches(x)
        codes = model.patch_codes(x).view(len(x), side, side, -1).permute(0, 3, 1, 2)
        for grid in (1, 2, 4):
            pooled[f"avg{grid}"].append(F.adaptive_avg_pool2d(codes, grid).flatten(1))
            pooled[f"max{grid}"].append(F.adaptive_max_pool2d(codes, grid).flatten(1))
        image = torch.arange(len(x)).repeat_interleave(side * side)
        for count, atoms in vlad_atoms.items():
            assigned = torch.cdist(z, atoms).argmin(1)
            vlad = torch.zeros(len(x) * count, z.shape[1]).index_add_(0, image * count + assigned, z - atoms[assigned])
            vlad = vlad.view(len(x), count, -1)
            pooled[f"vlad{count}"].append(F.normalize(vlad.sign() * vlad.abs().sqrt(), dim=2).flatten(1))
        pooled["hog"].append(gradient_histograms(x, cells=config.hog_cells))
        pooled["colour"].append(colour_histograms(x, grid=config.colour_grid))
    b = {name: torch.cat(parts) for name, parts in pooled.items()}
    tail, tail_weights = [b["hog"], b["colour"]], [1.0, config.colour_weight]
    variants = {
        "grid averages (before the block)": ([b["avg4"]], [1.0]),
        "+ max over the image (the product)": ([b["avg4"], b["max1"]], [1.0, 1.0]),
        "+ max on a 2x2 grid": ([b["avg4"], b["max2"]], [1.0, 1.0]),
        "+ max on the 4x4 grid": ([b["avg4"], b["max4"]], [1.0, 1.0]),
        "max on the 4x4 grid instead of averages": ([b["max4"]], [1.0]),
        "pyramid of averages 1x1 + 2x2 + 4x4": ([b["avg1"], b["avg2"], b["avg4"]], [1.0, 1.0, 1.0]),
        "+ max over the image at half weight": ([b["avg4"], b["max1"]], [1.0, 0.5]),
    }
    results = {}
    for name, (blocks, weights) in variants.items():
        x = project(blocks + tail, weights + tail_weights, [True] * (len(blocks) + 2))
        results[name] = plain_and_expanded(x, labels)
    for count in (64, 128):
        x = project([b["avg4"], b["max1"], b[f"vlad{count}"], *tail], [1.0, 1.0, 1.0, *tail_weights], [True, True, False, True, True])
        results[f"+ max over the image + VLAD of {count} atoms"] = plain_and_expanded(x, labels)
    return results


@torch.inference_mode()
def pyramid_variants(model, pixels: torch.Tensor, labels) -> dict:
    """Gradient histograms on coarser grids of cells beside the encoder's own (8x8 cells at 32 px),
    on the encoder with the max-pooled block: each level a block of its own (4x4, 2x2, both: the
    product's ``hog_pyramid``), or the levels as one block."""
    config = model.config
    raw = torch.cat([model.raw_blocks(pixels[i : i + 128].float() / 255) for i in range(0, len(pixels), 128)])
    blocks = [block**2 for block in raw.split(config.block_widths, dim=1)]  # project() roots them again
    weights = list(config.block_weights)
    x = pixels.float() / 255
    levels = [torch.cat(parts) for parts in zip(*(
        gradient_histogram_levels(x[i : i + 256], levels=(8, 4, 2)) for i in range(0, len(x), 256)
    ))]
    hog8, hog4, hog2 = levels
    codes, tail = blocks[:2], blocks[3:]  # the product's blocks around its gradient histograms
    variants = {
        "without (the encoder before the pyramid)": (blocks, weights),
        "+ 4x4 cells": (blocks + [hog4], weights + [1.0]),
        "+ 2x2 cells": (blocks + [hog2], weights + [1.0]),
        "+ 4x4 and 2x2 cells, a block each (the product)": (blocks + [hog4, hog2], weights + [1.0, 1.0]),
        "+ 4x4 and 2x2 cells as one block": (blocks + [torch.cat([hog4, hog2], 1)], weights + [1.0]),
        "8x8, 4x4 and 2x2 cells as one block, in place of the 8x8": (codes + [torch.cat([hog8, hog4, hog2], 1)] + tail, weights),
    }
    return {name: plain_and_expanded(project(parts, w, [True] * len(parts)), labels) for name, (parts, w) in variants.items()}


def k_reciprocal(x: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """Zhong et al. 2017's re-ranked distances (Jaccard of k-reciprocal neighbour sets, mixed
    with the original distance by ``lam``): a dense (N, N) matrix."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    original = np.clip(2 - 2 * x @ x.T, 0, None).astype(np.float32)
    original /= original.max(1, keepdims=True)
    rank = np.argsort(original, axis=1)[:, : k1 + 2]
    forward = [set(r[: k1 + 1]) for r in rank]
    half = [set(r[: round(k1 / 2) + 1]) for r in rank]
    v = np.zeros((n, n), np.float32)
    for i in range(n):
        reciprocal = [j for j in rank[i, : k1 + 1] if i in forward[j]]
        members = set(reciprocal)
        for c in reciprocal:
            candidates = [j for j in rank[c, : round(k1 / 2) + 1] if c in half[j]]
            if len(set(candidates) & set(reciprocal)) > 2 / 3 * len(candidates):
                members |= set(candidates)
        members = np.array(sorted(members))
        weights = np.exp(-original[i, members])
        v[i, members] = weights / weights.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    holders = [np.nonzero(v[:, j])[0] for j in range(n)]
    jaccard = np.zeros((n, n), np.float32)
    for i in range(n):
        shared = np.zeros(n, np.float32)
        for j in np.nonzero(v[i])[0]:
            shared[holders[j]] += np.minimum(v[i, j], v[holders[j], j])
        jaccard[i] = 1 - shared / (2 - shared)
    return jaccard * (1 - lam) + original * lam


def distance_scores(distances: np.ndarray, labels, k: int = 10) -> dict:
    """P@1, P@10, mAP@10 of a full distance matrix, each row querying all the others."""
    sys.path.insert(0, str(ROOT))
    from search.evaluation import average_precision_at_k, precision_at_k

    labels = np.array(labels)
    counts = {label: int((labels == label).sum()) for label in set(labels)}
    distances = distances.copy()
    np.fill_diagonal(distances, np.inf)
    sums = {"P@1": 0.0, "P@10": 0.0, "mAP@10": 0.0}
    for i, row in enumerate(distances):
        relevant = list(labels[np.argsort(row)[:k]] == labels[i])
        sums["P@1"] += precision_at_k(relevant, 1)
        sums["P@10"] += precision_at_k(relevant, k)
        sums["mAP@10"] += average_precision_at_k(relevant, k, counts[labels[i]] - 1)
    return {key: round(value / len(distances), 4) for key, value in sums.items()}


def expansion_variants(x: np.ndarray, labels) -> dict:
    results = {"plain": scores(x, labels)}
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for neighbours in (2, 3, 5, 10):
        ids, sims = nearest(unit, neighbours)
        for alpha in (3, 5):
            weights = np.clip(sims, 0, None) ** alpha
            augmented = unit + (unit[ids] * weights[..., None]).sum(1)  # DBA: the same sum, stored
            results[f"alpha-QE {neighbours} neighbours, alpha {alpha}"] = scores(x, labels, queries=augmented)
            results[f"DBA {neighbours} neighbours, alpha {alpha}"] = scores(augmented, labels)
    if len(x) <= 5000:
        for k1, k2, lam in ((20, 6, 0.3), (10, 3, 0.3), (20, 6, 0.6), (30, 6, 0.3)):
            results[f"k-reciprocal k1={k1} k2={k2} lambda={lam}"] = distance_scores(k_reciprocal(x, k1, k2, lam), labels)
    return results


def settings_variants(name: str, train: TrainingConfig, variants: dict) -> tuple[dict, np.ndarray, list]:
    """The default encoder, and each of ``variants`` (``SETTINGS``) fitted and scored in its place;
    also returns the default's embedding and the labels."""
    results, loaded, default = {}, {}, None
    for label, changes in variants.items():
        config = replace(DEFAULT, **changes)
        if config.input_size not in loaded:
            loaded[config.input_size] = load(dataset_tree(name), config.input_size)
        pixels, labels = loaded[config.input_size]
        model, _ = train_encoder_model(pixels, model_config=config, train_config=train, show_progress=False)
        x = embed(model, pixels)
        default = x if not changes else default
        results[label] = plain_and_expanded(x, labels)
        print(json.dumps({name: {label: results[label]}}), flush=True)
    return results, default, loaded[DEFAULT.input_size][1]


def hubness_variants(x: np.ndarray, labels) -> dict:
    """Hubness reduction on the default's embedding: CSLS (Conneau et al. 2018), each candidate's
    similarity lowered by ``beta`` times half its mean similarity to its ``k`` nearest images, so
    images that are near everything (hubs) rank lower. A ranking for one query is unchanged by the
    query's own term, so only the candidate's is subtracted."""
    unit = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    similarities = unit @ unit.T
    results = {"plain": distance_scores(1 - similarities, labels)}
    for k in (10, 50):
        _, sims = nearest(unit, k)
        hubness = sims.mean(1).astype(np.float32)
        for beta in (0.5, 1.0):
            results[f"CSLS k={k} beta={beta}"] = distance_scores(beta / 2 * hubness[None, :] - similarities, labels)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["fashion-mnist", "openmoji", "digits"])
    parser.add_argument("--parts", nargs="+", default=["pooling", "expansion", "sizes", "pyramid"], choices=["pooling", "expansion", "sizes", "pyramid", "settings", "hubness", "widths", "words"])
    parser.add_argument("--size-sets", nargs="+", default=["openmoji"], help="sets the input sizes are tried on")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    train = TrainingConfig(epochs=15, seed=SEED, device="cpu")
    report = {**report_header(), "results": {}}
    baseline_parts = [part for part in args.parts if part not in ("settings", "hubness", "widths", "words")]  # those fitted from BASELINE
    for name in args.sets:
        result = report["results"][name] = {}
        if "settings" in args.parts or "hubness" in args.parts:
            variants = SETTINGS if "settings" in args.parts else {"the default": {}}
            settings, x, labels = settings_variants(name, train, variants)
            if "settings" in args.parts:
                result["settings"] = settings
            if "hubness" in args.parts:
                result["hubness"] = hubness_variants(x, labels)
        if "widths" in args.parts:
            result["widths"] = settings_variants(name, train, WIDTHS)[0]
        if "words" in args.parts:
            result["words"] = settings_variants(name, train, WORDS)[0]
        by_size = "sizes" in args.parts and name in args.size_sets
        for size in (SIZES if by_size else (BASELINE.image_size,)) if baseline_parts else ():
            pixels, labels = load(dataset_tree(name), size)
            for block in (False, True):
                config = replace(BASELINE, image_size=size, max_pooled_codes=block)
                model, _ = train_encoder_model(pixels, model_config=config, train_config=train, show_progress=False)
                x = embed(model, pixels)
                which = "with" if block else "without"
                if by_size:
                    result[f"{size} px, {which} the max-pooled block"] = plain_and_expanded(x, labels)
                if size == BASELINE.image_size and "expansion" in args.parts:
                    result[f"expansion, {which} the max-pooled block"] = expansion_variants(x, labels)
                if "pyramid" in args.parts and block and size == BASELINE.image_size:
                    result["pyramid"] = pyramid_variants(model, pixels, labels)
                if "pooling" in args.parts and not block and size in (BASELINE.image_size, max(SIZES)):
                    key = "pooling" if size == BASELINE.image_size else f"pooling at {size} px"
                    result[key] = pooling_variants(model, pixels, labels)
                print(json.dumps({name: result}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
