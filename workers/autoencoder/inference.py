from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from workers.autoencoder.model import EncoderConfig, load_checkpoint
from workers.autoencoder.preprocessing import Preprocess
from workers.autoencoder.training import pick_device

# measured with the default encoder (`bench/encoder_speed.py --threads 1 --batch 16 32 64 128`,
# 2-core x86 CPU, one thread as each worker process uses, 2026-11-22), ms/image at batch
# 16/32/64/128: 1.23/1.25/1.85/2.29 -- larger batches fall out of cache on the CPU (the seed
# autoencoder showed the same: 2.64/2.99/4.02/4.53 with `bench/ingest.py --stages`). With the
# gradient words (128 px input; `--batch 8 16 32 64`, 2026-11-24): 3.78/3.62/3.69/3.79, flat
# within 5 % from 8 to 64, and the whole Embedder (`ingest.py --stages`) 4.05/4.34 at 16/32.
# A GPU wants larger batches; raise it there (CBIR_EMBEDDING_BATCH_SIZE).
EMBEDDING_BATCH_SIZE = int(os.environ.get("CBIR_EMBEDDING_BATCH_SIZE", 32))


class Embedder:
    """A loaded encoder: PIL images in, embedding vectors out."""

    def __init__(self, model: torch.nn.Module, config: EncoderConfig, device: torch.device) -> None:
        self.model = model.to(device).eval()
        self.cuda = device.type == "cuda"
        if self.cuda:  # NHWC convolutions are the fast path for cuDNN with mixed precision
            self.model = self.model.to(memory_format=torch.channels_last)
        self.config = config
        self.device = device
        self.preprocess = Preprocess(config.input_size)

    @torch.inference_mode()
    def embed(self, images: list[PILImage.Image]) -> np.ndarray:
        vectors = []
        for start in range(0, len(images), EMBEDDING_BATCH_SIZE):
            chunk = images[start : start + EMBEDDING_BATCH_SIZE]
            batch = torch.from_numpy(np.stack([self.preprocess.to_uint8(image) for image in chunk]))
            if self.cuda:  # uint8 over the bus (4x less than floats), from pinned memory, asynchronously
                batch = batch.pin_memory()
            x = batch.to(self.device, non_blocking=True).float().div_(255.0)
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.cuda):
                z = self.model.encode(x)
            vectors.append(z.float().cpu().numpy())
        if not vectors:
            return np.zeros((0, self.config.dim), dtype=np.float32)
        return np.concatenate(vectors).astype(np.float32)


_cache: dict[str, Embedder] = {}
_cache_lock = threading.Lock()


def load_embedder(checkpoint_path: str | Path, *, device: str = "auto") -> Embedder:
    """Load (once per process) the encoder stored at ``checkpoint_path``."""
    key = f"{checkpoint_path}|{device}"
    with _cache_lock:
        if key not in _cache:
            resolved = pick_device(device)
            model, config = load_checkpoint(checkpoint_path, map_location="cpu")
            _cache[key] = Embedder(model, config, resolved)
        return _cache[key]
