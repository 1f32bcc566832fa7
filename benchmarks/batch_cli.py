"""Throughput of `causalseg segment` over a folder, against one invocation per image.

A folder of synthetic X-rays (engine/data/synth, 8-bit PNG at the model's size, each with
its own note in a CSV) is segmented by ONE `causalseg segment` process, and a few images
are segmented by separate invocations (each pays interpreter start, imports, model load
and a first prompt); images/s is taken from whole-process wall time in both cases. A few
large 16-bit radiographs are segmented by one process too. Run by run.py; not a test.
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def write_folder(folder: Path, n: int, tokenizer, seed: int = 3) -> Path:
    """n synthetic X-rays whose notes fit the model's context, and their notes CSV."""
    from PIL import Image

    from napari_causalseg.engine.data.synth.generator import case_rng, synth_case

    folder.mkdir(parents=True)
    rows, index = [], 0
    while len(rows) < n:
        case = synth_case(case_rng(seed, "test", index))
        index += 1
        if tokenizer.encode(case.note, truncate=True).dropped is not None:
            continue  # a six-zone note is 22 tokens: the CLI would refuse it
        name = f"xray{len(rows):03d}.png"
        Image.fromarray(case.image).save(folder / name)
        rows.append((name, case.note))
    notes = folder.parent / f"{folder.name}.csv"
    with open(notes, "w", newline="") as fh:
        csv.writer(fh).writerows([("image", "note"), *rows])
    return notes


def write_large(folder: Path, n: int, shape: tuple[int, int], seed: int = 4) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = 20000 + 15000 * np.sin(xx / 300.0) * np.cos(yy / 400.0)
    for i in range(n):
        image = (base + rng.normal(0, 2000, shape)).clip(0, 65535).astype(np.uint16)
        Image.fromarray(image).save(folder / f"large{i:02d}.png")


def segment(inputs: list[Path], out: Path, checkpoint: Path, threads: int, notes: Path | None = None,
            note: str | None = None) -> float:
    """Wall seconds of one `causalseg segment` process."""
    cmd = [sys.executable, "-m", "napari_causalseg.cli", "segment", *map(str, inputs), "--checkpoint",
           str(checkpoint), "--out", str(out), "--overwrite", "--device", "cpu"]
    cmd += ["--notes", str(notes)] if notes is not None else []
    cmd += ["--note", note] if note is not None else []
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - start


def bench_batch_cli(checkpoint: Path, tokenizer, threads: int, n: int = 100, singles: int = 5,
                    large: int = 5, large_shape: tuple[int, int] = (2500, 2048)) -> dict[str, Any]:
    note = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        notes = write_folder(root / "xrays", n, tokenizer)
        images = sorted((root / "xrays").iterdir())
        segment(images[:1], root / "warm", checkpoint, threads, notes)  # page cache, .pyc files
        folder_s = segment([root / "xrays"], root / "out", checkpoint, threads, notes)
        single_s = [segment([img], root / f"one{i}", checkpoint, threads, notes)
                    for i, img in enumerate(images[:singles])]
        write_large(root / "large", large, large_shape)
        large_s = segment([root / "large"], root / "out_large", checkpoint, threads, note=note)
    per_single = statistics.median(single_s)
    return {
        "images": n, "size": "synthetic 224x224 8-bit PNG, a note per image (CSV)",
        "folder_s": folder_s, "folder_images_per_s": n / folder_s,
        "single_invocation_s": [round(s, 3) for s in single_s],
        "single_images_per_s": 1 / per_single, "speedup": per_single * n / folder_s,
        "large": {"images": large, "shape": list(large_shape), "dtype": "uint16 PNG",
                  "folder_s": large_s, "images_per_s": large / large_s},
    }


def report_lines(b: dict[str, Any]) -> list[str]:
    lg = b["large"]
    return [
        (f"- `causalseg segment` over a folder of {b['images']} X-rays ({b['size']}), one process "
         f"(start, imports, model load, every image read, segmented, two outputs written, agreement "
         f"check): {b['folder_s']:.1f} s, {b['folder_images_per_s']:.2f} images/s; one invocation "
         f"per image (median of {len(b['single_invocation_s'])}: {b['single_invocation_s']} s): "
         f"{b['single_images_per_s']:.2f} images/s, so the folder run is {b['speedup']:.0f}x faster. "
         f"{lg['images']} radiographs of {lg['shape'][0]}x{lg['shape'][1]} ({lg['dtype']}) in one "
         f"process: {lg['folder_s']:.1f} s, {lg['images_per_s']:.2f} images/s."),
        ("  Batching the image side (several images per forward pass) was measured and left out: "
         "on 2 cores the per-image time of batches of 2, 4 and 8 was no better than one at a time "
         "(the image tower is compute-bound at batch 1 already)."),
    ]
