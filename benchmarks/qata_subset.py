"""A small, seeded copy of QaTa-COV19 (any layout the engine reads) in SGSeg's layout.

Why: a machine that cannot reach the data set gets it as files sent along with the
code, under a size limit (a GPU session's short training run, issue 12 item 6). The
images stay as they are (QaTa's are 224x224 8-bit PNG); only a random, seeded subset of
the train and val cases is copied, with its notes.

    python benchmarks/qata_subset.py /path/to/QaTa subset/ --train 1200 --val 300

Prints the subset's size. Not a test; the data set itself is never committed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_causalseg.engine.data.layouts import open_dataset  # noqa: E402

SPLIT_FOLDERS = {"train": "train", "val": "valid"}  # ours -> SGSeg's


def write_subset(src: Path, dst: Path, counts: dict[str, int], seed: int = 0) -> dict[str, int]:
    """Copy `counts[split]` seeded random cases of each split; returns the bytes written."""
    if dst.exists() and any(dst.iterdir()):
        raise SystemExit(f"{dst} is not empty: give a new folder")
    data = open_dataset(src, validate=False)
    rng = random.Random(seed)
    annotation: dict[str, list[dict[str, str]]] = {}
    written = {}
    for split, n in counts.items():
        cases = getattr(data, split)
        if n > len(cases):
            raise SystemExit(f"{src} has {len(cases)} {split} cases, fewer than the {n} asked for")
        chosen = sorted(rng.sample(cases, n), key=lambda c: c.name)
        folder = dst / "images" / SPLIT_FOLDERS[split]
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        entries, size = [], 0
        for case in chosen:
            mask_name = f"mask_{case.image_path.name}"
            shutil.copyfile(case.image_path, folder / "images" / case.image_path.name)
            shutil.copyfile(case.mask_path, folder / "masks" / mask_name)
            size += case.image_path.stat().st_size + case.mask_path.stat().st_size
            entries.append({"image_path": mask_name, "caption": case.note})
        annotation[SPLIT_FOLDERS[split]] = entries
        written[split] = size
    (dst / "prompts").mkdir(parents=True)
    (dst / "prompts" / "annotation.json").write_text(json.dumps(annotation, indent=1))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="QaTa-COV19 in any layout the engine reads")
    parser.add_argument("dst", type=Path, help="a new folder")
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--val", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    written = write_subset(args.src, args.dst, {"train": args.train, "val": args.val}, args.seed)
    opened = open_dataset(args.dst)  # what the trainer will read, checked here
    print(f"{args.dst}: {len(opened.train)} train / {len(opened.val)} val cases, "
          f"{sum(written.values()) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
