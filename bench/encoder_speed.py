"""How fast the default encoder embeds on this machine, against the textbook formulation of the
same encoder in the same run.

    .venv/bin/python bench/encoder_speed.py [--threads 1 2] [--batch 32 ...] [--rounds 7]

Fits ``patch_kmeans`` on OpenMoji (the default: 128 px pictures, its gradient words on them and
its other blocks on them reduced to 32 px; seconds), then times ``encode`` on batches of the
collection's own pixels, alternating between the product's code and a reference written as the
method is usually stated: unfold every 5x5 patch, normalise it, multiply by the ZCA, then
``torch.cdist`` to the atoms and the triangle code on its result. The same weights feed both
(the reference differs only in how it computes the dictionary codes), the outputs are checked
to agree, and the ratio of medians is reported (each round times both, so machine noise hits
both alike). In the same rounds it times the encoder fitted without its gradient words
(``gradient_words=0``: 32 px pictures, the default before them): ``words_cost`` is the product's
time over that one's; that encoder without its gradient pyramid (``hog_pyramid=()``):
``hog_pyramid_cost`` is the time without words over that one's; and without the pyramid and the
max-pooled block (``max_pooled_codes=False``, the encoder before that block was added):
``max_pool_cost`` is the time without the pyramid over that one's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from heldout import load
from quality import SHARED

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.autoencoder.model import EncoderConfig  # noqa: E402
from workers.autoencoder.patch_dictionary import PatchDictionaryEncoder, _normalise_patches  # noqa: E402
from workers.autoencoder.training import TrainingConfig, train_encoder_model  # noqa: E402


class ReferenceEncoder(PatchDictionaryEncoder):
    """The same encoder with its dictionary codes computed as the method is written down, on the
    unfolded patches; everything after the codes is the product's own code."""

    def patch_codes(self, x: torch.Tensor) -> torch.Tensor:
        values = F.unfold(x, self.config.patch_size).transpose(1, 2).flatten(0, 1)
        z = (_normalise_patches(values) - self.patch_mean) @ self.zca
        distances = torch.cdist(z, self.atoms)
        return (distances.mean(1, keepdim=True) - distances).clamp_(min=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[32], help="images per encode call (the workers' EMBEDDING_BATCH_SIZE)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    config = EncoderConfig(arch="patch_kmeans")
    pixels, _ = load(SHARED / "openmoji", config.input_size)
    small, _ = load(SHARED / "openmoji", config.image_size)
    train = TrainingConfig(epochs=15, seed=0, device="cpu")
    model, _ = train_encoder_model(pixels, model_config=config, train_config=train, show_progress=False)
    reference = ReferenceEncoder(config)
    reference.load_state_dict(model.state_dict())
    reference.eval()
    plain = replace(config, gradient_words=0)
    without_words, _ = train_encoder_model(small, model_config=plain, train_config=train, show_progress=False)
    without_pyramid, _ = train_encoder_model(small, model_config=replace(plain, hog_pyramid=()), train_config=train, show_progress=False)
    without_max_pool, _ = train_encoder_model(
        small, model_config=replace(plain, hog_pyramid=(), max_pooled_codes=False), train_config=train, show_progress=False
    )
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__}
    with torch.inference_mode():
        for batch in args.batch:
            batches = [pixels[i : i + batch].float() / 255 for i in range(0, len(pixels) - batch + 1, batch)]
            small_batches = [small[i : i + batch].float() / 255 for i in range(0, len(small) - batch + 1, batch)]
            images = len(batches) * batch
            for x in batches[:3]:
                got, expected = model.encode(x), reference.encode(x)
                assert torch.allclose(got, expected, atol=1e-4), f"the encoders disagree by {(got - expected).abs().max():.2e}"
            for threads in args.threads:
                torch.set_num_threads(threads)
                encoders = (
                    ("product", model.encode, batches), ("reference", reference.encode, batches),
                    ("without_words", without_words.encode, small_batches),
                    ("without_pyramid", without_pyramid.encode, small_batches), ("without_max_pool", without_max_pool.encode, small_batches),
                )
                timings = {name: [] for name, _, _ in encoders}
                for _ in range(args.rounds):
                    for name, encode, inputs in encoders:
                        started = time.perf_counter()
                        for x in inputs:
                            encode(x)
                        timings[name].append((time.perf_counter() - started) / images * 1000)
                product_ms, reference_ms, no_words_ms, no_pyramid_ms, plain_ms = (statistics.median(timings[name]) for name, _, _ in encoders)
                key = f"batch{batch}_{threads}thread"
                result[key] = {
                    "images": images, "product_ms_per_image": round(product_ms, 3),
                    "reference_ms_per_image": round(reference_ms, 3), "speedup": round(reference_ms / product_ms, 2),
                    "without_words_ms_per_image": round(no_words_ms, 3), "words_cost": round(product_ms / no_words_ms, 3),
                    "without_pyramid_ms_per_image": round(no_pyramid_ms, 3), "hog_pyramid_cost": round(no_words_ms / no_pyramid_ms, 3),
                    "without_max_pool_ms_per_image": round(plain_ms, 3), "max_pool_cost": round(no_pyramid_ms / plain_ms, 3),
                }
                print(key, result[key], flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
