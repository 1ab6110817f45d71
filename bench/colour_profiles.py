"""What a colour profile costs a worker: the same photos decoded and reduced as every embedding
path does it (``imaging.decode_for_encoder``, the WebP thumbnail, ``fit_within(WORKING_SIDE)``,
``Preprocess`` to the default encoder's 32 px), once untagged and once tagged with a wide-gamut
RGB profile that the thumbnail and the encoder's input are converted from (``imaging.to_srgb``).

    .venv/bin/python bench/colour_profiles.py [--images 200] [--rounds 5] [--cmyk | --grey]

The photos are written by the script: 1024x768 JPEGs (quality 90) of smooth random gradients with
noise, each saved twice, without a profile and with one whose primaries differ from sRGB's
(``tests.utils.swapped_primaries_profile``: a matrix-and-curves profile, the kind Display P3 and
Adobe RGB are, so it converts at the same cost). With ``--cmyk`` the photos are CMYK JPEGs
(Pillow's conversion of the same pictures), untagged and tagged with a CMYK press profile
(``tests.utils.ink_swapping_cmyk_profile``, a lookup table; LittleCMS turns any profile pair into
one precalculated table for 8-bit pixels, so a press's 33-point profile converts at about the same
cost per pixel), which ``decode_rgb`` applies as it converts the decoded picture; with ``--grey``,
grey JPEGs, untagged and tagged with a grey profile (``tests.utils.linear_grey_profile``, a
curve). One process, one torch thread as a worker's
decode threads run; the two sets alternate, and the medians of the rounds are reported, with
their ratio.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import numpy as np
from PIL import Image as PILImage

import project

VAR = project.ROOT / "var" / "bench"


def photos(count: int, profile: bytes, *, mode: str = "RGB") -> tuple[list[bytes], list[bytes]]:
    rng = np.random.default_rng(0)
    plain, tagged = [], []
    y, x = np.mgrid[0:768, 0:1024] / 1024.0
    for _ in range(count):
        a, b, c = rng.uniform(-1, 1, (3, 3))
        array = np.stack([a[i] * x + b[i] * y + c[i] for i in range(3)], axis=2)
        array = (array - array.min()) / (np.ptp(array) + 1e-9) * 200 + rng.normal(0, 12, (768, 1024, 3))
        picture = PILImage.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB").convert(mode)
        for out, params in ((plain, {}), (tagged, {"icc_profile": profile})):
            buffer = io.BytesIO()
            picture.save(buffer, format="JPEG", quality=90, **params)
            out.append(buffer.getvalue())
    return plain, tagged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--cmyk", action="store_true", help="CMYK JPEGs and a CMYK profile")
    kind.add_argument("--grey", action="store_true", help="grey JPEGs and a grey profile")
    args = parser.parse_args()
    project.setup_django(VAR)
    import torch
    from django.conf import settings

    from gallery import imaging
    from tests.utils import ink_swapping_cmyk_profile, linear_grey_profile, swapped_primaries_profile
    from workers.autoencoder.preprocessing import Preprocess

    torch.set_num_threads(1)
    preprocess = Preprocess(32)
    if args.cmyk:
        plain, tagged = photos(args.images, ink_swapping_cmyk_profile(), mode="CMYK")
    elif args.grey:
        plain, tagged = photos(args.images, linear_grey_profile(), mode="L")
    else:
        plain, tagged = photos(args.images, swapped_primaries_profile())

    def per_image_ms(datas: list[bytes]) -> float:
        started = time.perf_counter()
        for data in datas:
            picture = imaging.decode_for_encoder(data)
            imaging.thumbnail_webp(picture, size=settings.CBIR_THUMBNAIL_SIZE)
            preprocess.to_uint8(imaging.fit_within(picture, imaging.WORKING_SIDE))
        return (time.perf_counter() - started) / len(datas) * 1000

    per_image_ms(plain[:10] + tagged[:10])  # warm-up: the transform is built once per profile
    times = {"untagged": [], "tagged": []}
    for _ in range(args.rounds):
        times["untagged"].append(per_image_ms(plain))
        times["tagged"].append(per_image_ms(tagged))
    medians = {name: round(statistics.median(values), 3) for name, values in times.items()}
    print(json.dumps({
        **project.report_header(), "images": args.images, "rounds": args.rounds, "mode": "CMYK" if args.cmyk else "L" if args.grey else "RGB",
        "ms_per_image": medians, "all_rounds_ms": {name: [round(v, 3) for v in values] for name, values in times.items()},
        "ratio_tagged_to_untagged": round(medians["tagged"] / medians["untagged"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
