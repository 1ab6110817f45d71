"""Retrieval quality on the shared labelled sets, through the product's own commands.

    .venv/bin/python bench/quality.py [--sets fashion-mnist openmoji digits] [--archs conv_ae patch_kmeans patch_kmeans+labels]
                                      [--epochs 15] [--max-minutes 10] [--expand N [N ...]]

For each set: the images are written as an image-folder tree (Fashion-MNIST t10k as 28x28 PNGs;
OpenMoji as shipped; ``digits``, not run by default, scikit-learn's 8x8 handwritten digits) and imported with `import_images --labels-from-dirs --wait`; then, per
architecture, `train_encoder --activate` (label-free), wait until the switch, and
`evaluate --json` (every image queries all the others, relevant = same label), once per
``--expand`` value: by default with the product's query expansion and without it. An entry
`ARCH+labels` trains with `--use-labels` and is scored on its held-out images only. Raw pixels are the
baseline, scored in the same run with the same metric code on exact cosine kNN. Runs under
var/bench-quality with its own embedded PostgreSQL and Redis and a real Celery worker.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

import project

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"
VAR = ROOT / "var" / "bench-quality"
FASHION_CLASSES = ["T-shirt-top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle-boot"]


def fashion_mnist_tree() -> Path:
    target = VAR / "data" / "fashion-mnist-t10k"
    if target.exists():
        return target
    with gzip.open(SHARED / "fashion-mnist" / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(SHARED / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = target / FASHION_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(image, mode="L").save(folder / f"{i:05d}.png")
    return target


def digits_tree() -> Path:
    """scikit-learn's handwritten digits (UCI "Optical Recognition of Handwritten Digits", 1,797
    images of 8x8, 17 grey levels, 10 labels) as PNGs, exactly as shipped (white ink on black).
    A set the encoder was never tuned on: drawings, at a scale neither shared set has. Needs
    scikit-learn, which the service does not: ``.venv/bin/pip install scikit-learn``."""
    target = VAR / "data" / "digits"
    if target.exists():
        return target
    try:
        from sklearn.datasets import load_digits  # bundled with the wheel: nothing is downloaded
    except ImportError:
        raise SystemExit("--sets digits needs scikit-learn: .venv/bin/pip install scikit-learn") from None
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = target / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray((image * 255 / 16).round().astype(np.uint8), mode="L").save(folder / f"{i:04d}.png")
    return target


def dataset_tree(name: str) -> Path:
    trees = {"fashion-mnist": fashion_mnist_tree, "openmoji": lambda: SHARED / "openmoji", "digits": digits_tree}
    if name not in trees:
        raise SystemExit(f"unknown set {name!r}; choose from {', '.join(trees)}")
    return trees[name]()


def rgb_on_white(path: Path) -> PILImage.Image:
    """A shared-set PNG as RGB, transparency composited on white as the service's decoder does."""
    image = PILImage.open(path).convert("RGBA")
    white = PILImage.new("RGBA", image.size, (255, 255, 255, 255))
    return PILImage.alpha_composite(white, image).convert("RGB")


def raw_pixel_baseline(tree: Path, ks=(1, 5, 10), side: int | None = None) -> dict:
    """Exact cosine kNN on raw pixels (RGB, alpha on white, optionally resized), same metrics."""
    vectors, labels = [], []
    for path in sorted(tree.glob("*/*.png")):
        image = rgb_on_white(path)
        if side:
            image = image.resize((side, side), PILImage.Resampling.BILINEAR)
        vectors.append(np.asarray(image, dtype=np.float32).ravel() / 255.0)
        labels.append(path.parent.name)
    return exact_knn_scores(np.stack(vectors), labels, ks)


def exact_knn_scores(x: np.ndarray, labels, ks=(1, 5, 10), queries: np.ndarray | None = None) -> dict:
    """P@k and mAP@k of exact cosine kNN on the rows of ``x``, each row querying all the others;
    with ``queries`` (one per row of ``x``, e.g. expanded), row i's query is ``queries[i]``."""
    sys.path.insert(0, str(ROOT))
    from search.evaluation import average_precision_at_k, precision_at_k

    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-8)
    queries = x if queries is None else queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-8)
    labels = np.array(labels)
    counts = {label: int((labels == label).sum()) for label in set(labels)}
    depth = max(ks)
    sums = {f"P@{k}": 0.0 for k in ks} | {f"mAP@{k}": 0.0 for k in ks}
    for start in range(0, len(x), 1000):
        block = queries[start : start + 1000] @ x.T
        for row, i in enumerate(range(start, min(start + 1000, len(x)))):
            block[row, i] = -np.inf
            top = np.argpartition(-block[row], depth)[:depth]
            top = top[np.argsort(-block[row][top])]
            relevant = list(labels[top] == labels[i])
            for k in ks:
                sums[f"P@{k}"] += precision_at_k(relevant, k)
                sums[f"mAP@{k}"] += average_precision_at_k(relevant, k, counts[labels[i]] - 1)
    return {key: round(value / len(x), 4) for key, value in sums.items()}


def manage(*args: str, env: dict, capture: bool = False) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, text=True,
        stdout=subprocess.PIPE if capture else None,
    )
    return result.stdout or ""


def wait_active(env: dict, timeout: float = 3600) -> None:
    script = (
        "import django; django.setup(); from search.models import EncoderVersion as E;"
        "e = E.objects.order_by('-id').first(); print(e.status)"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, text=True, capture_output=True).stdout.strip()
        if status == "active":
            return
        if status == "failed":
            raise SystemExit("activation failed")
        time.sleep(3)
    raise SystemExit("activation timed out")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["fashion-mnist", "openmoji"])
    parser.add_argument("--archs", nargs="+", default=["conv_ae", "patch_kmeans"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--max-minutes", type=float, default=10.0)
    parser.add_argument("--extra", default="", help="more train_encoder options, e.g. '--image-size 64'")
    parser.add_argument(
        "--expand", type=int, nargs="+", default=[None, 0], metavar="N",
        help="evaluate each encoder with these query expansions (default: the product's CBIR_QUERY_EXPANSION, then 0 = none)",
    )
    args = parser.parse_args()

    VAR.mkdir(parents=True, exist_ok=True)
    project.servers_stopped_at_exit(VAR)
    env = {**os.environ, "CBIR_VAR_DIR": str(VAR), "DJANGO_SETTINGS_MODULE": "cbir_site.settings", "PYTHONUNBUFFERED": "1"}
    manage("migrate", "--noinput", env=env)
    subprocess.run([sys.executable, "-m", "celery", "-A", "workers", "purge", "-f"], cwd=ROOT, env=env, capture_output=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel", "WARNING"], cwd=ROOT, env=env
    )
    report = {
        **project.report_header(),
        "results": [],
    }
    try:
        for name in args.sets:
            tree = dataset_tree(name)
            collection = f"quality-{name}"
            manage("import_images", str(tree), "--collection", collection, "--labels-from-dirs", "--wait", env=env, capture=True)
            baseline = raw_pixel_baseline(tree)
            report["results"].append({"set": name, "encoder": "raw pixels", **baseline})
            print(json.dumps(report["results"][-1]), flush=True)
            for entry in args.archs:
                arch, _, labelled = entry.partition("+")  # "patch_kmeans+labels": --use-labels
                started = time.perf_counter()
                out = manage(
                    "train_encoder", "--collection", collection, "--arch", arch, "--epochs", str(args.epochs),
                    *(["--use-labels"] if labelled else []),
                    "--max-minutes", str(args.max_minutes), "--activate", *args.extra.split(), env=env, capture=True,
                )
                trained = time.perf_counter() - started
                wait_active(env)
                for expand in args.expand:
                    started = time.perf_counter()
                    metrics = json.loads(
                        manage(
                            "evaluate", "--collection", collection, "--k", "1", "5", "10", "--json",
                            *([] if expand is None else ["--expand", str(expand)]), env=env, capture=True,
                        ).strip().splitlines()[-1]
                    )
                    evaluated = time.perf_counter() - started
                    metrics["encoder_version"] = metrics.pop("encoder")
                    report["results"].append(
                        {
                            "set": name, "encoder": entry, "train_command_seconds": round(trained, 1),
                            "train_summary": out.strip().splitlines()[-2], "evaluate_command_seconds": round(evaluated, 1), **metrics,
                        }
                    )
                    print(json.dumps(report["results"][-1]), flush=True)
    finally:
        worker.terminate()
        worker.wait(60)
    (VAR / "last-report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
