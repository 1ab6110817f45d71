"""A contrastive (SimCLR) head on the default encoder's patch codes, against the default alone:
the label-free learned layer that issue #3 points at, tried where it is cheapest to learn.

    .venv/bin/python bench/contrastive_head.py [--sets openmoji] [--epochs 30] [--device auto]

``patch_kmeans`` is fitted with the product's ``train_encoder_model`` (15 passes, seed 0), as
`bench/encoder_variants.py` does. Its dictionary stays frozen: each image's triangle-code map
(256 atoms on the 28x28 patch positions of a 32 px input), average-pooled 2x2 and
square-rooted, feeds three 3x3 convolutions (256 -> 192 -> 192 (stride 2) -> 256, batch norm,
ReLU), pooled by mean and max into a 512-wide representation. A two-layer projector and the
NT-Xent loss (temperature 0.2, batch 256, Adam 1e-3) train it on two augmented views of each
image: a random resized crop (55-100 % of the area, aspect 0.8-1.25) and a horizontal flip,
applied to the pixels before the frozen codes. Scored with exact cosine kNN and the product's
metric code, plain and with the product's query expansion:
- the representation alone, every 5 epochs;
- the product's blocks (grid-averaged and max-pooled codes, gradient and colour histograms),
  without and with the representation as a fifth block at weights 0.5, 1 and 1.5, through the
  product's partially whitened PCA and neighbour whitening (``encoder_variants.project``).
Quality only: nothing here is timed but the training, for scale.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from encoder_variants import SEED, plain_and_expanded, project, scores
from project import report_header
from heldout import load
from quality import dataset_tree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.autoencoder.model import EncoderConfig  # noqa: E402
from workers.autoencoder.patch_dictionary import colour_histograms, gradient_histograms  # noqa: E402
from workers.autoencoder.training import TrainingConfig, pick_device, train_encoder_model  # noqa: E402

# the product's default when this ran: the max-pooled block, not yet the gradient pyramid
CONFIG = EncoderConfig(arch="patch_kmeans", hog_pyramid=())
BATCH = 256
TEMPERATURE = 0.2
HEAD_WEIGHTS = (0.5, 1.0, 1.5)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random resized crop and a horizontal flip of each image, by one affine resampling."""
    b = len(x)
    uniform = lambda low, high: torch.empty(b).uniform_(low, high, generator=generator)  # noqa: E731
    scale = uniform(0.55, 1.0).sqrt()
    ratio = uniform(math.log(0.8), math.log(1.25)).exp().sqrt()
    sx, sy = scale * ratio, scale / ratio
    tx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sx).clamp(min=0)
    ty = (torch.rand(b, generator=generator) * 2 - 1) * (1 - sy).clamp(min=0)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


class Head(nn.Module):
    def __init__(self, atoms: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(atoms, 192, 3, padding=1), nn.BatchNorm2d(192), nn.ReLU(),
            nn.Conv2d(192, 192, 3, stride=2, padding=1), nn.BatchNorm2d(192), nn.ReLU(),
            nn.Conv2d(192, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(),
        )
        self.projector = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 128))

    def representation(self, codes: torch.Tensor) -> torch.Tensor:
        h = self.body(codes)
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.projector(self.representation(codes))


def nt_xent(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = len(a)
    similarity = (z @ z.T / TEMPERATURE).fill_diagonal_(-1e9)
    return F.cross_entropy(similarity, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device))


def run(name: str, epochs: int, device: torch.device) -> dict:
    pixels, labels = load(dataset_tree(name), CONFIG.image_size)
    train = TrainingConfig(epochs=15, seed=SEED, device="cpu")
    model, _ = train_encoder_model(pixels, model_config=CONFIG, train_config=train, show_progress=False)
    model = model.to(device)
    side = CONFIG.image_size - CONFIG.patch_size + 1

    def code_maps(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            codes = model.patch_codes(x).view(len(x), side, side, -1).permute(0, 3, 1, 2)
            return F.avg_pool2d(codes, 2).sqrt()

    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    head = Head(CONFIG.dictionary_size).to(device)
    optimiser = torch.optim.Adam(head.parameters(), 1e-3, weight_decay=1e-5)
    images = pixels.float().div(255).to(device)
    result = {"epochs": []}
    started = time.perf_counter()
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(order) - BATCH // 4 + 1, BATCH):
            batch = images[order[start : start + BATCH].to(device)]
            loss = nt_xent(head(code_maps(augment(batch, generator))), head(code_maps(augment(batch, generator))))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item()
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            head.eval()
            with torch.no_grad():
                rep = torch.cat([head.representation(code_maps(images[i : i + BATCH])) for i in range(0, len(images), BATCH)])
            row = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - started), "loss": round(total, 3)}
            row["alone"] = scores(F.normalize(rep, dim=1).cpu().numpy(), labels)
            result["epochs"].append(row)
            print(json.dumps({name: row}), flush=True)
    head.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            x = images[start : start + BATCH]
            codes = model.patch_codes(x).view(len(x), side, side, -1).permute(0, 3, 1, 2)
            parts.append([
                F.adaptive_avg_pool2d(codes, CONFIG.pool_grid).flatten(1), codes.amax((2, 3)),
                gradient_histograms(x, cells=CONFIG.hog_cells), colour_histograms(x, grid=CONFIG.colour_grid),
                head.representation(code_maps(x)),
            ])
    blocks = [torch.cat(column).cpu() for column in zip(*parts)]
    weights = [1.0, 1.0, 1.0, CONFIG.colour_weight]
    result["product blocks"] = plain_and_expanded(project(blocks[:4], weights, [True] * 4), labels)
    for weight in HEAD_WEIGHTS:
        x = project(blocks, [*weights, weight], [True] * 4 + [False])
        result[f"product blocks + head at weight {weight}"] = plain_and_expanded(x, labels)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["openmoji"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    report = {
        **report_header(device=device), "results": {},
    }
    for name in args.sets:
        report["results"][name] = run(name, args.epochs, device)
        print(json.dumps({name: report["results"][name]}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
