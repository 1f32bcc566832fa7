"""Fit the lung-field regression that `engine/lungs.py` ships (`lung_boxes.npz`).

    python benchmarks/fit_lung_boxes.py /path/to/QaTa              # any layout the readers know
    python benchmarks/fit_lung_boxes.py /path/to/QaTa --cv 5       # also report 5-fold errors

Reads the TRAINING split only. Its six-zone cases ("upper middle lower left lung and upper
middle lower right lung") have masks that cover nearly both lung fields: the box of each
image half of such a mask is that lung's box. Ridge regression from a 16x16 thumbnail to
the 8 box edges, every case also mirrored. Not part of the test suite: it needs the real
data (never committed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file: the package and benchmarks/ importable

from benchmarks.provenance import git_commit  # noqa: E402

SIX = "upper middle lower left lung and upper middle lower right lung"


def load_six_zone_cases(data_dir: Path, limit: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Images and true box edges (N, 8) of the training split's six-zone cases."""
    from napari_causalseg.engine.data.cases import load_case
    from napari_causalseg.engine.data.layouts import open_dataset
    from napari_causalseg.engine.lungs import edges_from_masks

    cases = [c for c in open_dataset(data_dir, validate=False).train if SIX in c.note.lower()]
    images, edges = [], []
    for case in cases[:limit]:
        image, mask = load_case(case)
        half = mask.shape[1] // 2
        left, right = mask.copy(), mask.copy()
        left[:, half:], right[:, :half] = False, False
        if left.any() and right.any():
            images.append(image)
            edges.append(edges_from_masks(left, right))
    return images, np.array(edges)


def cross_validate(images: list[np.ndarray], edges: np.ndarray, folds: int, lam: float) -> np.ndarray:
    """Median absolute edge error (8,) in image fractions over ``folds`` held-out folds."""
    from napari_causalseg.engine.lungs import features, fit_regression, mirror_edges

    errors = []
    fold = np.arange(len(images)) % folds
    for f in range(folds):
        train = [im for im, k in zip(images, fold) if k != f]
        w = fit_regression(train, edges[fold != f], lam=lam)
        size = int(round((w.shape[0] - 1) ** 0.5))
        for im, y in zip([im for im, k in zip(images, fold) if k == f], edges[fold == f]):
            pred = (features(im, size) @ w + mirror_edges(features(im[:, ::-1], size) @ w)) / 2
            errors.append(np.abs(pred - y))
    return np.median(errors, axis=0)


def main(argv: list[str] | None = None) -> int:
    from napari_causalseg.engine.lungs import WEIGHTS_FILE, fit_regression, save_regression

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--size", type=int, default=16, help="thumbnail side (default 16)")
    p.add_argument("--lam", type=float, default=3.0, help="ridge penalty (default 3)")
    p.add_argument("--cv", type=int, default=0, help="also report k-fold edge errors")
    p.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    images, edges = load_six_zone_cases(args.data_dir)
    if len(images) < 50:
        print(f"only {len(images)} six-zone training cases: too few to fit", file=sys.stderr)
        return 1
    if args.cv:
        err = cross_validate(images, edges, args.cv, args.lam)
        print(f"{args.cv}-fold median |error| (image fractions), top/bottom/col0/col1 per side: "
              + " ".join(f"{e:.3f}" for e in err))
    w = fit_regression(images, edges, size=args.size, lam=args.lam)
    info = {"data": "QaTa-COV19 training split, six-zone cases, each also mirrored",
            "cases": len(images), "size": args.size, "lam": args.lam, "commit": git_commit()}
    save_regression(args.out, w, args.size, info)
    print(f"wrote {args.out} ({len(images)} cases, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
