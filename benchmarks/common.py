"""What the benchmark modules share: logging, timing, the machine, the two models."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.notes import notes_for  # noqa: E402
from benchmarks.provenance import git_commit  # noqa: E402
from napari_causalseg.engine import CausalCLIPSeg, NoteTokenizer, build_model  # noqa: E402
from napari_causalseg.testing.reference import reference_from, with_batchnorm_statistics  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# machine ----------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
        if hasattr(os, "sysconf") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# timing -----------------------------------------------------------------------------
def clock(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "samples": [round(s, 4) for s in samples],
    }


# models -----------------------------------------------------------------------------
def build_models(config: str, seed: int = 0) -> tuple[CausalCLIPSeg, torch.nn.Module]:
    """Random weights, with non-trivial BatchNorm statistics in the decoders (so that
    eval-mode folding is exercised), and the reference holding a copy of them."""
    torch.manual_seed(seed)
    model = build_model(config)[0].eval()
    for i, dec in enumerate((model.causal_decoder, model.confounding_decoder)):
        with_batchnorm_statistics(dec, seed=seed + i)
    return model, reference_from(model).eval()


def inputs(tokenizer: NoteTokenizer, batch: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    tokens = tokenizer(notes_for(tokenizer, batch))
    masks = (torch.rand(batch, 1, size, size, generator=g) > 0.7).float()
    return images, tokens, masks
