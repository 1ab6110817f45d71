"""PNG pictures saved beside a checkpoint: the loss curve and, for autoencoders, originals over
their reconstructions, or for the patch dictionary, its atoms. Drawn with Pillow alone, so
workers need no plotting library."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image as PILImage
from PIL import ImageDraw

WIDTH, HEIGHT, MARGIN = 640, 360, 48


def loss_curve_png(path: Path, *, history: dict) -> None:
    series = [("train", history.get("train_loss") or [], (52, 84, 209))]
    validation = [v for v in history.get("val_loss") or [] if v is not None]
    if validation:
        series.append(("validation", validation, (196, 50, 10)))
    values = [v for _, s, _ in series for v in s]
    canvas = PILImage.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([MARGIN, MARGIN // 2, WIDTH - MARGIN // 2, HEIGHT - MARGIN], outline=(180, 180, 180))
    if values:
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        epochs = max(len(s) for _, s, _ in series)

        def point(i: int, v: float) -> tuple[float, float]:
            x = MARGIN + (WIDTH - 1.5 * MARGIN) * (i / max(epochs - 1, 1))
            y = HEIGHT - MARGIN - (HEIGHT - 1.5 * MARGIN) * ((v - low) / span)
            return x, y

        for row, (name, values_, colour) in enumerate(series):
            points = [point(i, v) for i, v in enumerate(values_)]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for x, y in points:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
            draw.text((WIDTH - 170, MARGIN // 2 + 6 + 14 * row), f"{name}: {values_[-1]:.4f}", fill=colour)
        draw.text((4, MARGIN // 2), f"{high:.4f}", fill="black")
        draw.text((4, HEIGHT - MARGIN - 10), f"{low:.4f}", fill="black")
        draw.text((WIDTH // 2 - 30, HEIGHT - MARGIN + 12), f"epoch 1..{epochs}", fill="black")
    draw.text((MARGIN, 4), f"training loss ({history.get('objective', 'loss')})", fill="black")
    canvas.save(path)


@torch.inference_mode()
def reconstruction_png(path: Path, *, model, images: torch.Tensor, count: int = 8) -> None:
    """Top row: originals; bottom row: the autoencoder's reconstructions."""
    model.eval()
    x = images[:count].float().div(255.0)
    reconstruction, _ = model(x)
    side = x.shape[-1]
    canvas = PILImage.new("RGB", (side * len(x), side * 2), "white")
    for i, (original, rebuilt) in enumerate(zip(x, reconstruction)):
        for row, tensor in enumerate((original, rebuilt)):
            array = (tensor.clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
            canvas.paste(PILImage.fromarray(array), (i * side, row * side))
    canvas.save(path)


@torch.inference_mode()
def dictionary_png(path: Path, *, model, per_row: int = 16, zoom: int = 6) -> None:
    """The patch dictionary's atoms, un-whitened back to colour patches, each stretched to the full
    range so that its pattern shows."""
    config = model.config
    patches = model.atoms @ torch.linalg.pinv(model.zca) + model.patch_mean  # (K, C * P * P)
    low = patches.min(1, keepdim=True).values
    high = patches.max(1, keepdim=True).values
    patches = ((patches - low) / (high - low).clamp(min=1e-6)).view(-1, config.in_channels, config.patch_size, config.patch_size)
    cell = config.patch_size * zoom + 2
    rows = -(-len(patches) // per_row)
    canvas = PILImage.new("RGB", (cell * per_row, cell * rows), "white")
    for i, patch in enumerate(patches):
        array = (patch.expand(3, -1, -1) * 255).byte().permute(1, 2, 0).numpy()
        tile = PILImage.fromarray(array).resize((cell - 2, cell - 2), PILImage.Resampling.NEAREST)
        canvas.paste(tile, ((i % per_row) * cell + 1, (i // per_row) * cell + 1))
    canvas.save(path)
