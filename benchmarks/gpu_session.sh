#!/usr/bin/env bash
# Issue 12 item 6 in one command, for a short session on a machine with a CUDA GPU:
#   1. bf16 inference and training throughput of rn101 at 224 px, fast model and
#      reference (benchmarks/run.py --skip-cpu), with the device's name;
#   2. a QaTa-COV19 training run of as many epochs as 5 minutes allow (causalseg train
#      --minutes 5), with its validation Dice (metrics.jsonl, one line per epoch).
# Runs from the repository without installing it (python3 must have torch, numpy,
# safetensors, pillow and tifffile). Everything lands in OUT_FOLDER; RESULTS_gpu.md and
# metrics.jsonl are what goes into benchmarks/RESULTS.md.
#
#   benchmarks/gpu_session.sh QATA_FOLDER OUT_FOLDER
#
# QATA_FOLDER: QaTa-COV19 in any layout the engine reads, e.g. a subset made by
# `python benchmarks/qata_subset.py /path/to/QaTa subset/` (~34 MiB for 1200 + 300 cases).
# DEVICE, MODEL and MINUTES override cuda, rn101 and 5 (a dry run on a CPU:
# DEVICE=cpu MODEL=tiny MINUTES=0.2).
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: $0 QATA_FOLDER OUT_FOLDER" >&2
    exit 2
fi
data=$1 out=$2
device=${DEVICE:-cuda} model=${MODEL:-rn101} minutes=${MINUTES:-5}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
python3 - "$device" <<'EOF'
import sys
import torch
device = sys.argv[1]
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("no CUDA device here: set DEVICE=cpu for a dry run")
print("torch", torch.__version__, "on", torch.cuda.get_device_name() if device.startswith("cuda") else "cpu")
EOF
if [ "${device%%:*}" = cuda ]; then
    python3 benchmarks/run.py --skip-cpu --config "$model" --accelerator "$device" \
        --json --out "$out/RESULTS_gpu.md" > "$out/gpu.json"
fi
start=$(date +%s)
python3 -m napari_causalseg.cli train "$data" --out "$out/run" --model "$model" \
    --pretrained none --minutes "$minutes" --device "$device" 2>&1 | tee "$out/train.log"
echo "training run: $(( $(date +%s) - start )) s in all, validation by epoch in $out/run/metrics.jsonl"
cp "$out/run/metrics.jsonl" "$out/metrics.jsonl"
