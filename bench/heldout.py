"""What labels add: the label-free patch_kmeans encoder against the same encoder after
`--use-labels` metric learning, both scored on the same held-out images.

    .venv/bin/python bench/heldout.py [--sets fashion-mnist openmoji] [--epochs 15 50]

`evaluate` scores a label-trained encoder on its held-out images only, with those images as the
only candidates; a smaller candidate set lowers P@k by itself, so its figures cannot be set
beside the label-free ones of a whole collection. This script calls the product's own pieces
(Preprocess, train_encoder_model, labelled_split, learn_projection_with_labels) on one split
and scores both encoders on it with exact cosine kNN and the product's metric code. Images are
deduplicated by SHA-256 as the importer does (OpenMoji: 1,734 of 1,768 files).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import project
from quality import dataset_tree, exact_knn_scores, rgb_on_white

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.autoencoder.model import EncoderConfig  # noqa: E402
from workers.autoencoder.patch_dictionary import learn_projection_with_labels  # noqa: E402
from workers.autoencoder.preprocessing import Preprocess  # noqa: E402
from workers.autoencoder.training import TrainingConfig, labelled_split, pick_device, train_encoder_model  # noqa: E402

HELD_OUT = 0.3
SEED = 0


def load(tree: Path, image_size: int) -> tuple[torch.Tensor, list[str]]:
    preprocess = Preprocess(image_size)
    seen, arrays, labels = set(), [], []
    for path in sorted(tree.glob("*/*.png")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        arrays.append(preprocess.to_uint8(rgb_on_white(path)))
        labels.append(path.parent.name)
    return torch.from_numpy(np.stack(arrays)), labels


@torch.inference_mode()
def embed(model, pixels: torch.Tensor) -> np.ndarray:
    return torch.cat([model.encode(pixels[i : i + 256].float() / 255) for i in range(0, len(pixels), 256)]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["fashion-mnist", "openmoji"])
    parser.add_argument("--epochs", type=int, nargs="+", default=[15, 50], help="metric-learning epochs to compare")
    args = parser.parse_args()
    device = pick_device("auto")
    report = {
        **project.report_header(device=device), "results": [],
    }
    config = EncoderConfig(arch="patch_kmeans")
    for name in args.sets:
        tree = dataset_tree(name)
        pixels, labels = load(tree, config.input_size)
        train, held_out = labelled_split(labels=labels, held_out=HELD_OUT, seed=SEED)
        model, _ = train_encoder_model(
            pixels, model_config=config, train_config=TrainingConfig(epochs=15, seed=SEED, device=str(device)), show_progress=False
        )
        held_labels = [labels[i] for i in held_out]
        row = {"set": name, "held_out_queries": len(held_out), "label_free": exact_knn_scores(embed(model, pixels[held_out]), held_labels)}
        names = sorted({labels[i] for i in train})
        targets = torch.tensor([names.index(labels[i]) for i in train])
        for epochs in args.epochs:
            tuned = copy.deepcopy(model)
            started = time.perf_counter()
            learn_projection_with_labels(tuned, pixels[train], targets, epochs=epochs, seed=SEED, device=device, show_progress=False)
            row[f"use_labels_{epochs}_epochs"] = {
                "seconds": round(time.perf_counter() - started, 1),
                "held_out": exact_knn_scores(embed(tuned, pixels[held_out]), held_labels),
                "training_images": exact_knn_scores(embed(tuned, pixels[train]), [labels[i] for i in train]),
            }
        report["results"].append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
