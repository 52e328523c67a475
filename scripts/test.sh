#!/usr/bin/env bash
# Set up a virtual environment (if needed), install what the tests need, run them.
# The data-dependent tests use $INDISTILL_DATA_DIR, else ../shared/data/cifar10-jpeg.tar.gz.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install chromium; the browser test will fail"
  else
    echo "warning: chromium is not installed (apt-get install chromium); the browser test will fail"
  fi
fi
export INDISTILL_DATA_DIR="${INDISTILL_DATA_DIR:-$(cd .. && pwd)/shared/data/cifar10-jpeg.tar.gz}"
exec .venv/bin/python -m pytest -q "$@"
