#!/usr/bin/env bash
# The one prepared call for a lent GPU (issue 15). Everything it finds goes to $OUT:
# gpu_check.json (the summary, rewritten after every step) and gpu_check.log (the whole log).
#
#   on the device machine:  bash bench/gpu_check.sh                       (carry: .gpu, timeout_s 540)
#   dry run here / in CI:   bash bench/gpu_check.sh --device cpu --tiny   (seconds)
#
# It needs only what the device image has (python3 with torch, torchvision, pytest); the data is
# the CIFAR-10 (JPEG copy) archive carried in .gpu/ (mkdir -p .gpu && cp ../shared/data/cifar10-jpeg.tar.gz .gpu/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/.gpu/out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && ! "$PY" -c "import torch" 2>/dev/null && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
"$PY" bench/gpu_check.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
