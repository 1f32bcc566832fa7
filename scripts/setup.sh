#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian/Ubuntu machine:
# the system libraries napari needs under Xvfb, and a virtual environment in .venv.
# Idempotent: a second run only checks. Override the interpreter with PYTHON=...,
# the venv location with VENV=..., and the torch pair with TORCH_SPEC="torch==X torchvision==Y".
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
APT_PACKAGES="xvfb xauth libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1
libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-shape0 libxcb-randr0 libxcb-xkb1
libdbus-1-3 libfontconfig1 libgl1 libegl1"

need_apt() {
    command -v dpkg >/dev/null 2>&1 || return 1
    for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || return 0; done
    return 1
}

if [ "${SKIP_APT:-0}" != 1 ] && need_apt; then
    echo "== installing system packages for napari under Xvfb"
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PIP="$VENV/bin/python -m pip"

if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
    # torch and torchvision must be a pair that imports together (open_clip imports both).
    if [ -z "${TORCH_SPEC:-}" ]; then
        case "$(uname -m)" in
            aarch64|arm64) TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" ;;
            *) TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" ;;
        esac
    fi
    echo "== installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    $PIP install -q $TORCH_SPEC 2>&1 | grep -v "is ignored" || true
    "$VENV/bin/python" -c "import torch, torchvision" || {
        echo "torch/torchvision failed to install or import; set TORCH_SPEC to a matching pair" >&2
        exit 1
    }
fi

# Reinstall only when pyproject.toml changed since the last successful install.
STAMP="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    echo "== installing napari-causalseg (editable) with napari and test tools"
    $PIP install -q -e ".[testing]" 2>&1 | grep -v "is ignored" || true
    "$VENV/bin/python" -c "import napari_causalseg.engine, napari, open_clip, pytest" || {
        echo "the package did not install; see the pip output above" >&2
        exit 1
    }
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi
