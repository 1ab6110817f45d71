#!/usr/bin/env bash
# Wheels for running the service (and bench/*.py) on a GPU machine that has Python 3.12 and
# torch but no package index, such as the lent machines of the `device` tool: everything in
# requirements.txt and what it pulls in, except torch, torchvision, numpy and pillow, which such
# a machine already has. There: pip install --no-index --no-deps --target DIR WHEELS/*.whl and
# put DIR on PYTHONPATH (docs/benchmarks.md gives the commands that were run).
#
#     bench/gpu_wheels.sh [TARGET_DIR]      # default .devcarry/whl (git-ignored locally)
set -euo pipefail
target=${1:-.devcarry/whl}
list=$(mktemp)
# the exact pins only: pillow-heif is needed there too
grep -vE '^(#|$|torch==|torchvision==|numpy==|pillow==)' requirements.txt > "$list"
python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$target" -r "$list"
rm -f "$list" "$target"/numpy-* "$target"/pillow-*
du -sh "$target"
