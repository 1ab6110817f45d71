"""Peak memory and time of decoding one large upload the way every embedding path does (a worker,
training, a search upload): ``imaging.decode_for_encoder``, then the 256 px WebP thumbnail and
``fit_within(WORKING_SIDE)``, against the earlier path in the same run (the whole picture
EXIF-transposed and converted to RGB at full size, then the same thumbnail and fit).

    .venv/bin/python bench/decode_memory.py [--side 8000] [--rounds 2]

The pictures are written by the script, one per PNG mode (RGB, RGBA, palette, grey, 16-bit
grey), ``side`` x ``side`` pixels (8000 by default: 64 million, the default
CBIR_MAX_IMAGE_PIXELS), smooth gradients and a checkerboard of alpha, so they compress to a
megabyte or two: small files, large pictures. Each measurement runs in a fresh process, resets its
peak resident memory (Linux's ``/proc/self/clear_refs``) just before the decode and reads it
(``VmHWM``) after: the peak is what the decode added. The two paths alternate.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

import project

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import io, os, sys, time
sys.path.insert(0, sys.argv[3])
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cbir_site.settings")
import django
django.setup()
from django.conf import settings
from PIL import Image as PILImage, ImageOps
from gallery import imaging

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

def earlier(data):
    image = PILImage.open(io.BytesIO(data), formats=imaging.ACCEPTED_FORMATS)
    image.load()
    return imaging._to_rgb(ImageOps.exif_transpose(image))

data = open(sys.argv[1], "rb").read()
decode = imaging.decode_for_encoder if sys.argv[2] == "product" else earlier
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # resets the peak (VmHWM) to the current resident size
before = status("VmRSS")
started = time.perf_counter()
picture = decode(data)
imaging.thumbnail_webp(picture, size=settings.CBIR_THUMBNAIL_SIZE)
small = imaging.fit_within(picture, imaging.WORKING_SIDE)
elapsed = time.perf_counter() - started
after = status("VmHWM")
print(after - before, elapsed, small.size[0], small.size[1])
"""


def pictures(side: int, folder: Path) -> dict[str, Path]:
    y, x = np.mgrid[0:side, 0:side]
    alpha = np.where((x // 500 + y // 500) % 2 == 0, 255, 80)
    rgba = np.stack([x * 255 // side, y * 255 // side, (x + y) * 255 // (2 * side), alpha], -1).astype(np.uint8)
    made = {
        "RGB": PILImage.fromarray(rgba[..., :3].copy(), "RGB"),
        "RGBA": PILImage.fromarray(rgba, "RGBA"),
        "P (palette)": PILImage.fromarray(rgba[..., :3].copy(), "RGB").quantize(256),
        "L (grey)": PILImage.fromarray(rgba[..., 0].copy(), "L"),
        "I;16 (16-bit grey)": PILImage.fromarray((x * 65535 // side).astype(np.uint16)),
    }
    paths = {}
    for index, (mode, picture) in enumerate(made.items()):
        paths[mode] = folder / f"{index}.png"
        picture.save(paths[mode], compress_level=1)
    return paths


def measure(path: Path, which: str) -> tuple[float, float, tuple[int, int]]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), which, str(ROOT)], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.split()
    return int(out[0]) / 1024, float(out[1]), (int(out[2]), int(out[3]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    report = {**project.report_header(), "results": {}}
    with tempfile.TemporaryDirectory() as folder:
        for mode, path in pictures(args.side, Path(folder)).items():
            runs = {"product": [], "earlier": []}
            for round_ in range(args.rounds):
                for which in ("product", "earlier") if round_ % 2 == 0 else ("earlier", "product"):
                    runs[which].append(measure(path, which))
            assert runs["product"][0][2] == runs["earlier"][0][2], "both paths must give the encoder the same size"
            peak = {which: max(run[0] for run in found) for which, found in runs.items()}
            seconds = {which: float(np.median([run[1] for run in found])) for which, found in runs.items()}
            report["results"][mode] = {
                "file_kb": round(path.stat().st_size / 1024),
                "peak_mb": {which: round(value) for which, value in peak.items()},
                "peak_ratio": round(peak["product"] / peak["earlier"], 3),
                "seconds": {which: round(value, 3) for which, value in seconds.items()},
                "time_ratio": round(seconds["product"] / seconds["earlier"], 3),
            }
            print(json.dumps({mode: report["results"][mode]}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
