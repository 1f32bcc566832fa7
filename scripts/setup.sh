#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian/Ubuntu machine:
# the system libraries napari needs under Xvfb, and a virtual environment in .venv.
#   scripts/setup.sh test   (default) napari, the test tools and the torch/torchvision pair
#                           the tests' open_clip oracle imports
#   scripts/setup.sh demo   napari and the package only (plus CLIP's BPE vocabulary file, from
#                           open_clip's package without its dependencies); on a machine
#                           without an NVIDIA GPU a CPU build of torch (far smaller, less
#                           memory at run time)
# Idempotent: a second run only checks. Override the interpreter with PYTHON=...,
# the venv location with VENV=..., the torch pair with TORCH_SPEC="torch==X torchvision==Y"
# and the CPU build with TORCH_CPU_SPEC="torch==X --extra-index-url URL".
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-test}
case "$MODE" in
    test) EXTRAS="testing" ;;
    demo) EXTRAS="napari" ;;
    *) echo "usage: scripts/setup.sh [test|demo]" >&2; exit 2 ;;
esac

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

has_nvidia_gpu() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

# The demo needs torch only (the engine imports neither open_clip nor torchvision);
# the tests' oracle imports open_clip, hence torchvision, which must pair with torch.
CHECK="import torch, torchvision"
[ "$MODE" = demo ] && CHECK="import torch"
if ! "$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1; then
    if [ "$MODE" = demo ] && [ -z "${TORCH_SPEC:-}" ] && ! has_nvidia_gpu; then
        # PyTorch's CPU index has the +cpu builds (a fraction of the CUDA build's size).
        # Asked once, briefly: where it cannot be reached, the default index's torch.
        CPU_INDEX=https://download.pytorch.org/whl/cpu
        if [ -n "${TORCH_CPU_SPEC:-}" ]; then
            TORCH_SPEC=$TORCH_CPU_SPEC
        elif "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('$CPU_INDEX/torch/', timeout=5)" >/dev/null 2>&1; then
            TORCH_SPEC="torch --extra-index-url $CPU_INDEX"
        else
            TORCH_SPEC="torch==2.13.0"
            echo "== $CPU_INDEX cannot be reached; taking torch==2.13.0 from the default index"
        fi
        echo "== no NVIDIA GPU found: installing a CPU build of torch"
    elif [ -z "${TORCH_SPEC:-}" ]; then
        case "$(uname -m)" in
            aarch64|arm64) TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" ;;
            *) TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" ;;
        esac
    fi
    echo "== installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    $PIP install -q $TORCH_SPEC 2>&1 | grep -v "is ignored" || true
    "$VENV/bin/python" -c "$CHECK" || {
        echo "torch failed to install or import; set TORCH_SPEC (e.g. a matching torch/torchvision pair)" >&2
        exit 1
    }
fi
# Keep the torch build installed above: the package's own dependencies must not replace it.
TORCH_PIN="torch==$("$VENV/bin/python" -c "from importlib.metadata import version; print(version('torch'))")"

# Reinstall only when pyproject.toml changed since the last successful install.
STAMP="$VENV/.installed-$EXTRAS-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    echo "== installing napari-causalseg (editable) with [$EXTRAS]"
    $PIP install -q -e ".[$EXTRAS]" "$TORCH_PIN" 2>&1 | grep -v "is ignored" || true
    if [ "$MODE" = demo ]; then
        # CLIP's BPE vocabulary, offline: the file in open_clip's package is all the engine
        # reads, so open_clip comes without its dependencies (torchvision would pin torch).
        $PIP install -q --no-deps "open_clip_torch>=2.24" 2>&1 | grep -v "is ignored" || true
        WANT_VOCAB="from napari_causalseg.engine.bpe_source import find_vocabulary; find_vocabulary(allow_download=False)"
        "$VENV/bin/python" -c "$WANT_VOCAB" || { echo "CLIP's BPE vocabulary did not install" >&2; exit 1; }
    fi
    WANT="import napari_causalseg.engine, napari"
    [ "$MODE" = test ] && WANT="$WANT, open_clip, pytest"
    "$VENV/bin/python" -c "$WANT" || {
        echo "the package did not install; see the pip output above" >&2
        exit 1
    }
    [ "$MODE" = test ] && rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi
