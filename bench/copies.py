"""How well the copy signature finds copies of a picture, and how seldom it takes another picture
for one: the product's ``imaging.copy_signature`` and ``COPY_MIN_SIMILARITY``, against the binary
perceptual hash (pHash) and the default encoder's vectors, in the same run.

    .venv/bin/python bench/copies.py [--sets openmoji fashion-mnist] [--limit N]

Each set is read as files, deduplicated by their bytes as the importer does, and decoded as the
workers decode (``imaging.decode_for_encoder``). Every picture gets one copy of each kind, made
with a seeded generator:
- ``rescaled JPEG``: 0.5x to 2x its size (bicubic), saved as JPEG at quality 50 to 90;
- ``WebP``: the same size, WebP at quality 70;
- ``brightness``: every value times 0.85 to 1.15 (clipped), as PNG;
- and two kinds the signature is not meant to find, to say what it misses: ``cropped``, 2 to 5 %
  cut from every side, and ``mirrored``, flipped left to right.
Reported per kind: the share of copies at least ``COPY_MIN_SIMILARITY`` similar to their original
("found", what the image page lists), and the share whose original is their nearest picture in the
set ("nearest"). Against every other picture of the set, each pair of distinct pictures: how many
pairs come that close, and the share of pictures with at least one (which its page would list as
a copy), with the closest pairs named.

Baselines, scored on the same copies and pairs:
- pHash (phash.org's recipe: grey 32x32, its DCT's 8x8 lowest frequencies after the constant one,
  each bit set above their median), at a Hamming distance of at most 10 of 64 bits, the usual
  setting, and at the distance that lets through as many distinct pairs as the signature does;
- the default encoder (fitted on the set, 15 passes, seed 0, no labels; cosine of its vectors,
  without expansion), at the similarity that lets through as many distinct pairs as the signature.
Time per picture of the signature against the WebP thumbnail the workers make beside it (medians
of 5 rounds over the set's first 500 pictures, one thread).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

import project
from quality import dataset_tree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cbir_site.settings")

import django  # noqa: E402

django.setup()

import torch  # noqa: E402

from gallery import imaging  # noqa: E402
from gallery.selectors import COPY_MIN_SIMILARITY  # noqa: E402
from workers.autoencoder.model import EncoderConfig  # noqa: E402
from workers.autoencoder.preprocessing import Preprocess  # noqa: E402
from workers.autoencoder.training import TrainingConfig, train_encoder_model  # noqa: E402

SEED = 0
KINDS = ("rescaled JPEG", "WebP", "brightness", "cropped", "mirrored")
PHASH_USUAL_BITS = 10
TIMING_PICTURES = 500


def _encoded(picture: PILImage.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def make_copy(picture: PILImage.Image, kind: str, rng: np.random.Generator) -> bytes:
    width, height = picture.size
    if kind == "rescaled JPEG":
        scale = rng.uniform(0.5, 2.0)
        size = (max(8, round(width * scale)), max(8, round(height * scale)))
        return _encoded(picture.resize(size, PILImage.Resampling.BICUBIC), "JPEG", quality=int(rng.integers(50, 91)))
    if kind == "WebP":
        return _encoded(picture, "WEBP", quality=70)
    if kind == "brightness":
        factor = rng.uniform(0.85, 1.15)
        return _encoded(PILImage.eval(picture, lambda value: min(255, round(value * factor))), "PNG")
    if kind == "cropped":
        cut = rng.uniform(0.02, 0.05)
        box = (round(width * cut), round(height * cut), width - round(width * cut), height - round(height * cut))
        return _encoded(picture.crop(box), "PNG")
    return _encoded(picture.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT), "PNG")


_PHASH_DCT = None


def phash(picture: PILImage.Image) -> np.ndarray:
    global _PHASH_DCT
    if _PHASH_DCT is None:
        n = 32
        k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        _PHASH_DCT = np.sqrt(2 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
        _PHASH_DCT[0] /= np.sqrt(2)
    grey = np.asarray(picture.resize((32, 32), PILImage.Resampling.LANCZOS, reducing_gap=2.0).convert("L"), dtype=np.float64)
    low = (_PHASH_DCT @ grey @ _PHASH_DCT.T)[1:9, 1:9]
    return (low > np.median(low)).ravel()


def signature(picture: PILImage.Image) -> np.ndarray:
    found = imaging.copy_signature(picture)
    return np.zeros(imaging.SIGNATURE_DIM) if found is None else np.asarray(found)


def load(tree: Path, limit: int | None) -> tuple[list[bytes], list[str]]:
    seen, files, names = set(), [], []
    for path in sorted(tree.glob("*/*.png")):
        data = path.read_bytes()
        digest = hashlib.sha256(data).digest()
        if digest in seen:
            continue
        seen.add(digest)
        files.append(data)
        names.append(f"{path.parent.name}/{path.name}")
    if limit:
        order = np.random.default_rng(SEED).permutation(len(files))[:limit]
        files, names = [files[i] for i in sorted(order)], [names[i] for i in sorted(order)]
    return files, names


def pairs_at_or_above(similarities: np.ndarray, threshold: float) -> tuple[int, float]:
    """Distinct pairs (i < j) at least ``threshold`` similar, and the share of rows with one."""
    close = similarities >= threshold
    np.fill_diagonal(close, False)
    return int(np.triu(close, 1).sum()), float(close.any(axis=1).mean())


def threshold_for_pairs(similarities: np.ndarray, pairs: int) -> float:
    """The lowest similarity at which no more than ``pairs`` distinct pairs pass."""
    upper = similarities[np.triu_indices(len(similarities), 1)]
    ranked = np.sort(upper)[::-1]
    return float(np.nextafter(ranked[pairs], np.inf)) if pairs < len(ranked) else float(ranked[-1])


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def copy_scores(originals: np.ndarray, copies: np.ndarray, similarity, threshold: float) -> dict:
    """found: the share of copies at least ``threshold`` similar to their own original; nearest:
    the share whose nearest original is their own."""
    to_all = similarity(copies, originals)
    own = np.diag(to_all)
    return {"found": round(float((own >= threshold).mean()), 4), "nearest": round(float((to_all.argmax(axis=1) == np.arange(len(own))).mean()), 4)}


def hamming_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """64 minus the Hamming distance, so that larger is closer, as for the cosine."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    return a @ b.T + (1 - a) @ (1 - b).T


def timing(pictures: list[PILImage.Image]) -> dict:
    torch.set_num_threads(1)
    rounds = {"signature": [], "thumbnail": []}
    for _ in range(5):
        for name, make in (("signature", imaging.copy_signature), ("thumbnail", lambda p: imaging.thumbnail_webp(p, size=256))):
            start = time.perf_counter()
            for picture in pictures:
                make(picture)
            rounds[name].append((time.perf_counter() - start) / len(pictures) * 1000)
    signature_ms, thumbnail_ms = float(np.median(rounds["signature"])), float(np.median(rounds["thumbnail"]))
    return {"signature_ms": round(signature_ms, 4), "thumbnail_ms": round(thumbnail_ms, 4), "ratio": round(signature_ms / thumbnail_ms, 3)}


def run_set(name: str, limit: int | None) -> dict:
    files, names = load(dataset_tree(name), limit)
    pictures = [imaging.fit_within(imaging.decode_for_encoder(data), imaging.WORKING_SIDE) for data in files]
    rng = np.random.default_rng(SEED)
    copies = {kind: [imaging.decode_for_encoder(make_copy(p, kind, rng)) for p in pictures] for kind in KINDS}

    sig = np.stack([signature(p) for p in pictures])
    sig_copies = {kind: np.stack([signature(p) for p in copies[kind]]) for kind in KINDS}
    sig_sim = sig @ sig.T
    pairs, share = pairs_at_or_above(sig_sim, COPY_MIN_SIMILARITY)
    upper = np.triu(sig_sim, 1)
    closest = np.dstack(np.unravel_index(np.argsort(upper, axis=None)[::-1][:5], upper.shape))[0]
    row = {
        "set": name, "pictures": len(pictures), "distinct_pairs": len(pictures) * (len(pictures) - 1) // 2,
        "signature": {
            "threshold": COPY_MIN_SIMILARITY, "distinct_pairs_passing": pairs, "pictures_with_a_false_copy": round(share, 4),
            "copies": {kind: copy_scores(sig, sig_copies[kind], lambda a, b: a @ b.T, COPY_MIN_SIMILARITY) for kind in KINDS},
            "closest_distinct_pairs": [[names[i], names[j], round(float(sig_sim[i, j]), 4)] for i, j in closest],
        },
    }

    bits = np.stack([phash(p) for p in pictures])
    bits_copies = {kind: np.stack([phash(p) for p in copies[kind]]) for kind in KINDS}
    bit_sim = hamming_similarity(bits, bits)
    for label, threshold in (("usual", 64 - PHASH_USUAL_BITS), ("same_false_pairs", threshold_for_pairs(bit_sim, pairs))):
        passing, share = pairs_at_or_above(bit_sim, threshold)
        row[f"phash_{label}"] = {
            "max_bits": int(64 - np.ceil(threshold)), "distinct_pairs_passing": passing, "pictures_with_a_false_copy": round(share, 4),
            "copies": {kind: copy_scores(bits, bits_copies[kind], hamming_similarity, threshold) for kind in KINDS},
        }

    config = EncoderConfig(arch="patch_kmeans")
    preprocess = Preprocess(config.image_size)
    pixels = torch.from_numpy(np.stack([preprocess.to_uint8(p) for p in pictures]))
    model, _ = train_encoder_model(pixels, model_config=config, train_config=TrainingConfig(epochs=15, seed=SEED, device="cpu"), show_progress=False)

    @torch.inference_mode()
    def embed(batch: list[PILImage.Image]) -> np.ndarray:
        x = torch.from_numpy(np.stack([preprocess.to_uint8(p) for p in batch]))
        return torch.cat([model.encode(x[i : i + 256].float() / 255) for i in range(0, len(x), 256)]).numpy()

    vectors = embed(pictures)
    vec_sim = unit_rows(vectors) @ unit_rows(vectors).T
    threshold = threshold_for_pairs(vec_sim, pairs)
    passing, share = pairs_at_or_above(vec_sim, threshold)
    row["encoder_same_false_pairs"] = {
        "threshold": round(threshold, 4), "distinct_pairs_passing": passing, "pictures_with_a_false_copy": round(share, 4),
        "copies": {kind: copy_scores(unit_rows(vectors), unit_rows(embed(copies[kind])), lambda a, b: a @ b.T, threshold) for kind in KINDS},
    }
    row["timing"] = timing(pictures[:TIMING_PICTURES])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["openmoji", "fashion-mnist"])
    parser.add_argument("--limit", type=int, default=None, help="score this many pictures of each set, drawn at random (seed 0)")
    args = parser.parse_args()
    report = {
        **project.report_header(), "results": [run_set(name, args.limit) for name in args.sets],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
