"""Peak resident memory of interactive inference, measured in a fresh process.

Run by run.py as a child so that nothing else (the reference model, training) has
touched this process's memory. It loads the model as a user's session does
(`Segmenter.from_checkpoint`; with no --checkpoint it builds random weights in memory
instead), does one first prompt on a new image plus re-prompts with new notes, then
prints one JSON object with the process's peak RSS (VmHWM: interpreter, imported
libraries, the model weights it has touched, activations, one cached image feature)
and the RSS at each stage, split into anonymous memory and file-backed pages (weights
mapped from the checkpoint). VmHWM and not ru_maxrss: on Linux the latter carries over
the parent's peak across fork + exec.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path


def _status(field: str) -> float | None:
    """A memory field of /proc/self/status in MiB (Linux), None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> dict[str, float]:
    return {k: round(_status(f) or float("nan"), 1)
            for k, f in (("total", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"))}


def file_rss_by_kind(checkpoint: Path | None) -> dict[str, float]:
    """File-backed RSS (MiB) split into the checkpoint's pages and everything else
    (shared libraries, Python modules), from /proc/self/smaps; empty off Linux.

    Why: how many pages of a library a fault maps depends on the kernel's page cache
    (files just written, e.g. by pip, sit in large folios that are mapped whole), so the
    library share of VmHWM differs between runs of the same code; this makes it visible."""
    kinds = {"checkpoint": 0.0, "libraries": 0.0}
    target = str(checkpoint.resolve()) if checkpoint is not None else None
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return {}
    path, rss = None, 0
    for line in text.splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            path = head[5] if len(head) == 6 and head[5].startswith("/") else None
        elif path is not None and line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif path is not None and line.startswith("Anonymous:"):  # copy-on-write pages are anon
            file_kib = rss - int(line.split()[1])
            kinds["checkpoint" if path == target else "libraries"] += file_kib / 1024
    return {k: round(v, 1) for k, v in kinds.items()}


def peak_mb() -> float:
    peak = _status("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="rn101")
    parser.add_argument("--checkpoint", type=Path, default=None, help="load this (as users do)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--reprompts", type=int, default=5)
    args = parser.parse_args()

    start = time.perf_counter()
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.notes import notes_for
    from napari_causalseg.engine import Segmenter, SegmenterConfig, build_model, get_config

    if args.threads:
        torch.set_num_threads(args.threads)
    stages = {"after_import": rss_mb()}  # torch and this package's engine
    seconds = {"imports": time.perf_counter() - start}
    start = time.perf_counter()
    if args.checkpoint is not None:
        seg = Segmenter.from_checkpoint(args.checkpoint, SegmenterConfig(device="cpu"))
        cfg = seg.model_config
    else:
        torch.manual_seed(0)
        cfg = get_config(args.config)
        seg = Segmenter(build_model(cfg)[0], SegmenterConfig(device="cpu"))
    model = seg.model
    seconds["load"] = time.perf_counter() - start
    stages["after_load"] = rss_mb()
    image = np.random.default_rng(0).integers(0, 255, (cfg.image_size,) * 2, dtype=np.uint8)
    notes = notes_for(seg.tokenizer, args.reprompts + 1)
    start = time.perf_counter()
    seg.segment(image, notes[0])
    seconds["first_prompt"] = time.perf_counter() - start
    stages["after_first_prompt"] = rss_mb()
    file_split = file_rss_by_kind(args.checkpoint)
    for note in notes[1:]:
        seg.segment(image, note)
    stages["after_reprompts"] = rss_mb()
    print(json.dumps({
        "peak_rss_mb": round(peak_mb(), 1),
        "rss_mb": stages,
        # a cold start, as a user's session or one `causalseg segment` call has it
        "startup_s": {k: round(v, 3) for k, v in seconds.items()},
        "file_rss_after_first_prompt_mb": file_split,
        "loaded_from": "checkpoint (memory-mapped)" if args.checkpoint else "random weights in memory",
        # the file's size: the Segmenter's packed convolutions are no longer parameters
        "weights_mb": round((Path(args.checkpoint).stat().st_size if args.checkpoint else
                             sum(p.numel() * p.element_size() for p in model.parameters())) / 2**20, 1),
        "cached_image_features_mb": round(seg.image_cache.total_cost / 2**20, 1),
        "config": args.config,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.executable,
    }))


if __name__ == "__main__":
    main()
