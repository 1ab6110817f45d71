from __future__ import annotations

import numpy as np
import torch
from PIL import Image as PILImage

from gallery.imaging import WORKING_SIDE, fit_within, to_srgb


class Preprocess:
    """RGB PIL image -> float tensor (3, S, S) in [0, 1], used by training and inference alike.

    The image is first reduced to fit ``WORKING_SIDE`` (or the input side, if larger), as the
    workers reduce every picture they decode, so the steps after it cost the same for any
    upload. It is then padded to a square on white (the same background that alpha is
    composited on) and resized, so shapes keep their aspect ratio.
    """

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    def to_uint8(self, image: PILImage.Image) -> np.ndarray:
        icc = image.info.get("icc_profile")
        if image.mode not in ("RGB", "L"):  # bilinear resizing needs one of these
            image = image.convert("RGB")
        image = fit_within(image, max(WORKING_SIDE, self.image_size)).convert("RGB")
        width, height = image.size
        side = max(width, height)
        if width != height:
            square = PILImage.new("RGB", (side, side), (255, 255, 255))
            square.paste(image, ((side - width) // 2, (side - height) // 2))
            image = square
        if side != self.image_size:
            image = image.resize((self.image_size, self.image_size), PILImage.Resampling.BILINEAR, reducing_gap=2.0)
        image = to_srgb(image, icc)
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()  # (3, S, S)

    def __call__(self, image: PILImage.Image) -> torch.Tensor:
        return torch.from_numpy(self.to_uint8(image)).float().div_(255.0)
