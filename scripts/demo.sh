#!/usr/bin/env bash
# Set up (see scripts/setup.sh) and open napari with the sample chest X-ray, its note and
# both widgets, on the demo model (trained once on synthetic data, then cached).
# Without a display, use the CLI (causalseg segment) or run this under xvfb-run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh demo
VENV=${VENV:-.venv}
exec "$VENV/bin/python" -m napari_causalseg "$@"
