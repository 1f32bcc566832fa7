"""Dice and IoU in the two conventions of the referring-segmentation literature, both labelled.

* ``per_image`` (LViT's protocol; CausalCLIPSeg's 85.21 / 76.90 is most consistent with it):
  threshold the probabilities at 0.5 (``p >= 0.5`` is lesion, as in LViT), compute Dice and
  IoU for each image, average over images.
* ``global`` (torchmetrics-style micro average; Ariadne's Thread, MMI-UNet, SGSeg): pool
  intersection / prediction / target pixel counts over the whole set, then one Dice and IoU.
  Large lesions weigh more, so it usually reads several points higher.

Inputs are PROBABILITIES in [0, 1] (apply ``sigmoid`` to logits first); values outside that
range, NaN included, raise ``ValueError`` because thresholding logits at 0.5 silently gives
wrong numbers. Targets are binarised as ``> 0.5`` (bool, {0,1} or {0,255} all work).

Empty-mask convention (per image): prediction and target both empty -> Dice = IoU = 1.0 (the
model was right that there is nothing); exactly one empty -> 0.0. LViT's own code gets Dice
1.0 via a 1e-5 smoothing term but IoU 0.0 from sklearn's ``jaccard_score``; we use 1.0 for
both so the two metrics agree. (The QaTa-COV19 copy we checked has no empty masks, so this
only matters for other data.) ``global`` with no foreground anywhere is also 1.0.

Counts are exact integers, so per-rank accumulators merged with :meth:`MetricAccumulator.merge`
give the same report as one pass over all the data (for DDP: ``all_gather_object`` the
``state()`` dicts and merge them on rank 0).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

THRESHOLD = 0.5
PER_IMAGE_CONVENTION = (
    "per-image: lesion where p >= threshold, Dice and IoU per image, mean over images; "
    "both empty -> 1.0 (LViT protocol)"
)
GLOBAL_CONVENTION = (
    "global: lesion where p >= threshold, pixel counts pooled over the whole set "
    "(torchmetrics micro average; Ariadne's Thread, MMI-UNet, SGSeg)"
)
_STATE_VERSION = 1


def _is_torch(x: object) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _batch_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """(B, H, W, ...) from (H, W), (B, H, W) or (B, 1, H, W)."""
    shape = tuple(shape)
    if len(shape) == 2:
        return (1, *shape)
    if len(shape) == 4 and shape[1] == 1:
        return (shape[0], *shape[2:])
    return shape


def confusion_counts(probs, targets, threshold: float = THRESHOLD) -> np.ndarray:
    """Per-image ``[intersection, predicted, target]`` pixel counts, int64 array (B, 3).

    ``probs`` and ``targets`` are numpy arrays or torch tensors (any device; only the B x 4
    counts leave the device), shaped (H, W), (B, H, W) or (B, 1, H, W).
    """
    ps, ts = _batch_shape(probs.shape), _batch_shape(targets.shape)
    if ps != ts:
        raise ValueError(
            f"probabilities {tuple(probs.shape)} and targets {tuple(targets.shape)} differ in shape; "
            "resize the prediction to the mask (or the mask to the prediction) first."
        )
    b = ps[0]
    if _is_torch(probs) or _is_torch(targets):
        import torch

        p = torch.as_tensor(probs).detach()
        t = torch.as_tensor(targets, device=p.device).detach()
        p, t = p.reshape(b, -1), t.reshape(b, -1)
        pred = p >= threshold
        tgt = t if t.dtype == torch.bool else t > 0.5
        bad = ~((p >= 0) & (p <= 1))  # NaN fails both comparisons, so it is caught too
        stats = torch.stack(
            [(pred & tgt).sum(1), pred.sum(1), tgt.sum(1), bad.sum(1)], dim=1
        ).to("cpu", torch.int64)
        stats = stats.numpy()
    else:
        p = np.asarray(probs).reshape(b, -1)
        t = np.asarray(targets).reshape(b, -1)
        pred = p >= threshold
        tgt = t if t.dtype == bool else t > 0.5
        with np.errstate(invalid="ignore"):
            bad = ~((p >= 0) & (p <= 1))
        stats = np.stack(
            [(pred & tgt).sum(1), pred.sum(1), tgt.sum(1), bad.sum(1)], axis=1
        ).astype(np.int64)
    if stats[:, 3].any():
        rows = np.flatnonzero(stats[:, 3]).tolist()
        raise ValueError(
            f"probabilities outside [0, 1] (or NaN) in batch item(s) {rows[:8]}: pass "
            "sigmoid(logits), not logits."
        )
    return stats[:, :3]


def dice_iou_from_counts(inter, pred, target) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU from pixel counts (arrays or scalars); both empty -> 1.0."""
    inter = np.asarray(inter, dtype=np.float64)
    denom = np.asarray(pred, dtype=np.float64) + np.asarray(target, dtype=np.float64)
    union = denom - inter
    empty = denom == 0
    safe = np.where(empty, 1.0, denom)
    dice = np.where(empty, 1.0, 2.0 * inter / safe)
    iou = np.where(empty, 1.0, inter / np.where(empty, 1.0, union))
    return dice, iou


def per_image_scores(probs, targets, threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU of every image in a batch (per-image convention)."""
    c = confusion_counts(probs, targets, threshold)
    return dice_iou_from_counts(c[:, 0], c[:, 1], c[:, 2])


def global_scores(probs, targets, threshold: float = THRESHOLD) -> tuple[float, float]:
    """Dice and IoU with pixel counts pooled over the batch (global convention)."""
    c = confusion_counts(probs, targets, threshold).sum(0)
    d, i = dice_iou_from_counts(c[0], c[1], c[2])
    return float(d), float(i)


class MetricAccumulator:
    """Collects per-image pixel counts with case names; reports both conventions.

    ``update`` takes probabilities in [0, 1] and targets, as numpy arrays or torch tensors
    on any device; only four integers per image are copied to the host.
    """

    def __init__(self, threshold: float = THRESHOLD):
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        self._names: list[str] = []
        self._counts: list[tuple[int, int, int]] = []

    def __len__(self) -> int:
        return len(self._names)

    def update(self, probs, targets, names: Sequence[str] | None = None) -> None:
        """Add a batch: probabilities (B[,1],H,W) in [0, 1], targets of the same shape."""
        counts = confusion_counts(probs, targets, self.threshold)
        if names is None:
            start = len(self._names)
            names = [f"#{start + i}" for i in range(len(counts))]
        elif isinstance(names, str):
            names = [names]
        names = [str(n) for n in names]
        if len(names) != len(counts):
            raise ValueError(f"{len(names)} names for a batch of {len(counts)} images.")
        self._names.extend(names)
        self._counts.extend((int(a), int(b), int(c)) for a, b, c in counts)

    def state(self) -> dict:
        """Plain-Python state (picklable, JSON-able) for gathering across DDP ranks."""
        return {
            "version": _STATE_VERSION,
            "threshold": self.threshold,
            "names": list(self._names),
            "counts": [list(c) for c in self._counts],
        }

    @classmethod
    def from_state(cls, state: dict) -> MetricAccumulator:
        acc = cls(state["threshold"])
        acc.merge(state)
        return acc

    def merge(self, other: dict | MetricAccumulator, drop_duplicate_names: bool = False) -> MetricAccumulator:
        """Append another accumulator's (or ``state()``'s) images; returns self.

        ``drop_duplicate_names`` skips images whose name is already present: DDP's
        DistributedSampler pads ranks by repeating samples, which would otherwise count twice.
        """
        state = other.state() if isinstance(other, MetricAccumulator) else other
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"metric state version {state.get('version')!r}, expected {_STATE_VERSION}.")
        if float(state["threshold"]) != self.threshold:
            raise ValueError(
                f"cannot merge threshold {state['threshold']} into threshold {self.threshold}."
            )
        if len(state["names"]) != len(state["counts"]):
            raise ValueError("metric state has different numbers of names and counts.")
        seen = set(self._names) if drop_duplicate_names else None
        for name, c in zip(state["names"], state["counts"]):
            if seen is not None:
                if name in seen:
                    continue
                seen.add(name)
            self._names.append(str(name))
            self._counts.append((int(c[0]), int(c[1]), int(c[2])))
        return self

    def report(self) -> dict:
        """Both conventions, labelled, plus every image's scores (None where n == 0)."""
        n = len(self._counts)
        counts = np.asarray(self._counts, dtype=np.int64).reshape(n, 3)
        dice, iou = dice_iou_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])
        tot = counts.sum(0)
        gd, gi = dice_iou_from_counts(tot[0], tot[1], tot[2])
        both_empty = int(((counts[:, 1] == 0) & (counts[:, 2] == 0)).sum())
        return {
            "per_image": {
                "dice": float(dice.mean()) if n else None,
                "iou": float(iou.mean()) if n else None,
                "threshold": self.threshold,
                "n": n,
                "both_empty": both_empty,
                "convention": PER_IMAGE_CONVENTION,
            },
            "global": {
                "dice": float(gd) if n else None,
                "iou": float(gi) if n else None,
                "threshold": self.threshold,
                "n": n,
                "pixels": {"intersection": int(tot[0]), "predicted": int(tot[1]), "target": int(tot[2])},
                "convention": GLOBAL_CONVENTION,
            },
            "cases": [
                {"name": nm, "dice": float(d), "iou": float(i)}
                for nm, d, i in zip(self._names, dice, iou)
            ],
        }
