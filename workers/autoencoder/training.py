"""Label-free training of an encoder on a collection's own images."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from workers.autoencoder.model import EncoderConfig, build_model
from workers.autoencoder.patch_dictionary import fit_patch_dictionary

VALIDATION_FRACTION = 0.1
MIN_IMAGES_FOR_VALIDATION = 20


@dataclass
class TrainingConfig:
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    device: str = "auto"
    max_minutes: float | None = None
    # --use-labels (patch_kmeans): metric learning on the labelled images, except a held-out share
    # kept for evaluation
    use_labels: bool = False
    held_out: float = 0.3


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError("images must be a uint8 tensor of shape (N, 3, S, S)")


def labelled_split(*, labels: list[str], held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """Positions of the labelled images to train on and to hold out: per label, a seeded shuffle
    holds out ``held_out`` of its images (at least one when it has two or more). Unlabelled images
    are in neither."""
    generator = torch.Generator().manual_seed(seed)
    by_label: dict[str, list[int]] = {}
    for position, label in enumerate(labels):
        if label:
            by_label.setdefault(label, []).append(position)
    train, test = [], []
    for label in sorted(by_label):
        positions = by_label[label]
        order = [positions[i] for i in torch.randperm(len(positions), generator=generator).tolist()]
        cut = max(1, round(len(order) * held_out)) if len(order) >= 2 else 0
        test += order[:cut]
        train += order[cut:]
    return sorted(train), sorted(test)


def _batches_to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    # Images are kept as uint8 (4x smaller) and become floats on the device.
    return batch.to(device, non_blocking=True).float().div_(255.0)


def train_one_epoch(model, loader, optimizer, scaler, device, *, progress: tqdm | None = None) -> float:
    model.train()
    criterion = nn.MSELoss()
    total, count = 0.0, 0
    for (batch,) in loader:
        x = _batches_to_device(batch, device)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            reconstruction, _ = model(x)
            loss = criterion(reconstruction.float(), x)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.item() * len(x)
        count += len(x)
        if progress is not None:
            progress.update(len(x))
            progress.set_postfix(loss=f"{loss.item():.4f}")
    return total / max(count, 1)


@torch.inference_mode()
def evaluate(model, loader, device) -> float:
    model.eval()
    criterion = nn.MSELoss(reduction="sum")
    total, count = 0.0, 0
    for (batch,) in loader:
        x = _batches_to_device(batch, device)
        reconstruction, _ = model(x)
        total += criterion(reconstruction.float(), x).item() / x[0].numel()
        count += len(x)
    return total / max(count, 1)


def train_autoencoder(
    images: torch.Tensor,
    *,
    model_config: EncoderConfig,
    train_config: TrainingConfig,
    show_progress: bool = True,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Train on ``images`` (uint8, (N, 3, S, S)) and return the model (eval mode, on CPU) and a history.

    Reproducible for a fixed seed on the same device. ``max_minutes`` stops after the epoch
    that crosses the limit.
    """
    _check_images(images)
    seed_everything(train_config.seed)
    device = pick_device(train_config.device)
    generator = torch.Generator().manual_seed(train_config.seed)
    order = torch.randperm(len(images), generator=generator)
    n_val = math.floor(len(images) * VALIDATION_FRACTION) if len(images) >= MIN_IMAGES_FOR_VALIDATION else 0
    train_set = TensorDataset(images[order[n_val:]])
    val_set = TensorDataset(images[order[:n_val]]) if n_val else None
    pin = device.type == "cuda"
    loader = DataLoader(
        train_set, batch_size=train_config.batch_size, shuffle=True, generator=generator, pin_memory=pin, drop_last=False
    )
    val_loader = DataLoader(val_set, batch_size=256, pin_memory=pin) if val_set else None

    model = build_model(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_config.learning_rate)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    history = {
        "train_loss": [], "val_loss": [], "device": str(device), "images": len(images), "epochs_run": 0,
        "objective": "reconstruction MSE",
    }
    started = time.monotonic()
    for epoch in range(train_config.epochs):
        with tqdm(
            total=len(train_set), desc=f"epoch {epoch + 1}/{train_config.epochs}", unit="img", disable=not show_progress
        ) as progress:
            train_loss = train_one_epoch(model, loader, optimizer, scaler, device, progress=progress)
            val_loss = evaluate(model, val_loader, device) if val_loader else None
            progress.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}" if val_loss is not None else "-")
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        history["epochs_run"] = epoch + 1
        if on_epoch is not None:
            on_epoch(epoch + 1, history)
        if train_config.max_minutes is not None and time.monotonic() - started > train_config.max_minutes * 60:
            break
    history["seconds"] = round(time.monotonic() - started, 2)
    return model.cpu().eval(), history


def train_encoder_model(
    images: torch.Tensor,
    *,
    model_config: EncoderConfig,
    train_config: TrainingConfig,
    show_progress: bool = True,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Train (``conv_ae``) or fit (``patch_kmeans``) the architecture that ``model_config`` names on
    ``images`` (uint8, (N, 3, S, S)). Returns the model in eval mode on the CPU and its history:
    per-epoch ``train_loss`` (and ``val_loss`` where there is one), ``epochs_run``, ``seconds``."""
    if model_config.arch == "conv_ae":
        return train_autoencoder(
            images, model_config=model_config, train_config=train_config, show_progress=show_progress, on_epoch=on_epoch
        )
    _check_images(images)
    seed_everything(train_config.seed)
    return fit_patch_dictionary(
        images,
        model_config=model_config,
        epochs=train_config.epochs,
        seed=train_config.seed,
        device=pick_device(train_config.device),
        max_minutes=train_config.max_minutes,
        show_progress=show_progress,
        on_epoch=on_epoch,
    )
