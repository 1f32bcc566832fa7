#!/usr/bin/env bash
# Set up (see scripts/setup.sh) and run the whole test suite under Xvfb, then ruff.
# Extra arguments go to pytest, e.g. scripts/test.sh -k segmenter -x
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
mkdir -p test-artifacts
status=0
xvfb-run -a -s "-screen 0 1600x1000x24" python -m pytest "$@" || status=$?
echo "== ruff check"
ruff check . || status=$?
exit $status
