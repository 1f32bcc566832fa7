"""Dice / IoU in both conventions on hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_causalseg.engine.metrics import (
    GLOBAL_CONVENTION,
    PER_IMAGE_CONVENTION,
    MetricAccumulator,
    confusion_counts,
    dice_iou_from_counts,
    global_scores,
    per_image_scores,
)

# Two 2x2 images.
# Image 1: p >= 0.5 gives pred [[1,1],[0,0]] (0.6 counts, 0.4 does not); target [[1,0],[1,0]].
#   I = 1, P = 2, T = 2 -> Dice = 2*1/(2+2) = 1/2, IoU = 1/(2+2-1) = 1/3.
# Image 2: all p = 0.5 -> pred all 1 (the threshold is inclusive, as in LViT); target 3 pixels.
#   I = 3, P = 4, T = 3 -> Dice = 6/7, IoU = 3/(4+3-3) = 3/4.
# Per-image: Dice (1/2 + 6/7)/2 = 19/28, IoU (1/3 + 3/4)/2 = 13/24.
# Global: I = 4, P = 6, T = 5 -> Dice = 8/11, IoU = 4/(6+5-4) = 4/7.
PROBS = np.array(
    [[[0.9, 0.6], [0.4, 0.1]],
     [[0.5, 0.5], [0.5, 0.5]]],
    np.float32,
)
TARGETS = np.array(
    [[[1, 0], [1, 0]],
     [[1, 1], [1, 0]]],
    np.uint8,
)


def test_hand_computed_counts_and_scores():
    np.testing.assert_array_equal(confusion_counts(PROBS, TARGETS), [[1, 2, 2], [3, 4, 3]])
    dice, iou = per_image_scores(PROBS, TARGETS)
    np.testing.assert_allclose(dice, [1 / 2, 6 / 7])
    np.testing.assert_allclose(iou, [1 / 3, 3 / 4])
    gd, gi = global_scores(PROBS, TARGETS)
    assert gd == pytest.approx(8 / 11) and gi == pytest.approx(4 / 7)

    acc = MetricAccumulator()
    acc.update(PROBS, TARGETS, names=["a", "b"])
    r = acc.report()
    assert r["per_image"]["dice"] == pytest.approx(19 / 28)
    assert r["per_image"]["iou"] == pytest.approx(13 / 24)
    assert r["per_image"]["threshold"] == 0.5 and r["per_image"]["n"] == 2
    assert r["global"]["dice"] == pytest.approx(8 / 11)
    assert r["global"]["iou"] == pytest.approx(4 / 7)
    assert r["global"]["pixels"] == {"intersection": 4, "predicted": 6, "target": 5}
    assert r["per_image"]["convention"] == PER_IMAGE_CONVENTION
    assert r["global"]["convention"] == GLOBAL_CONVENTION
    assert [c["name"] for c in r["cases"]] == ["a", "b"]
    assert r["cases"][1]["dice"] == pytest.approx(6 / 7)
    assert r["cases"][0]["iou"] == pytest.approx(1 / 3)
    json.dumps(r)  # the report is plain JSON


def test_conventions_differ_when_lesion_sizes_differ():
    # Image A: 1 lesion pixel out of 100, the model predicts nothing -> Dice 0, IoU 0.
    # Image B: 50 lesion pixels, predicted exactly -> Dice 1, IoU 1.
    # Per-image: Dice (0+1)/2 = 0.5, IoU 0.5.
    # Global: I = 50, P = 50, T = 51 -> Dice = 100/101 = 0.990..., IoU = 50/51 = 0.980...
    t = np.zeros((2, 10, 10), bool)
    t[0, 0, 0] = True
    t[1, :5] = True
    p = np.where(t, 0.9, 0.1).astype(np.float32)
    p[0, 0, 0] = 0.2  # the missed pixel
    acc = MetricAccumulator()
    acc.update(p, t)
    r = acc.report()
    assert r["per_image"]["dice"] == pytest.approx(0.5)
    assert r["per_image"]["iou"] == pytest.approx(0.5)
    assert r["global"]["dice"] == pytest.approx(100 / 101)
    assert r["global"]["iou"] == pytest.approx(50 / 51)
    assert [c["name"] for c in r["cases"]] == ["#0", "#1"]


def test_empty_mask_convention():
    # both empty -> 1.0 / 1.0; only target empty -> 0 / 0; only prediction empty -> 0 / 0.
    dice, iou = dice_iou_from_counts([0, 0, 0], [0, 3, 0], [0, 0, 2])
    np.testing.assert_array_equal(dice, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(iou, [1.0, 0.0, 0.0])
    acc = MetricAccumulator()
    z = np.zeros((1, 4, 4), np.float32)
    acc.update(z, z, names=["clear"])  # nothing predicted, nothing there
    r = acc.report()
    assert r["per_image"]["dice"] == 1.0 and r["per_image"]["iou"] == 1.0
    assert r["per_image"]["both_empty"] == 1
    assert r["global"]["dice"] == 1.0 and r["global"]["iou"] == 1.0  # no foreground anywhere
    # Add a false-positive image: per-image Dice (1 + 0)/2 = 0.5; global I=0, P=16 -> 0.
    acc.update(np.ones((1, 4, 4), np.float32), z, names=["fp"])
    r = acc.report()
    assert r["per_image"]["dice"] == 0.5 and r["global"]["dice"] == 0.0
    assert r["per_image"]["both_empty"] == 1


def test_empty_accumulator_reports_none():
    r = MetricAccumulator().report()
    assert r["per_image"]["dice"] is None and r["global"]["iou"] is None
    assert r["per_image"]["n"] == 0 and r["cases"] == []


def test_rejects_logits_and_nan():
    with pytest.raises(ValueError, match="sigmoid"):
        confusion_counts(PROBS * 4 - 2, TARGETS)  # logits
    bad = PROBS.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"\[1\]"):
        confusion_counts(bad, TARGETS)
    with pytest.raises(ValueError, match="sigmoid"):
        confusion_counts(torch.tensor(PROBS) - 0.5, torch.tensor(TARGETS))
    with pytest.raises(ValueError, match=r"\[1\]"):
        confusion_counts(torch.from_numpy(bad), torch.from_numpy(TARGETS))


def test_shapes_and_target_encodings():
    # (B,1,H,W) predictions against (B,H,W) masks in {0,255}, and a single (H,W) image.
    c = confusion_counts(PROBS[:, None], TARGETS * 255)
    np.testing.assert_array_equal(c, [[1, 2, 2], [3, 4, 3]])
    np.testing.assert_array_equal(confusion_counts(PROBS[0], TARGETS[0].astype(bool)), [[1, 2, 2]])
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_counts(PROBS, TARGETS.transpose(0, 2, 1)[:, :1])
    acc = MetricAccumulator()
    with pytest.raises(ValueError, match="1 names for a batch of 2"):
        acc.update(PROBS, TARGETS, names=["only_one"])
    assert len(acc) == 0


def test_threshold_is_configurable():
    # At 0.55, image 2 (all 0.5) predicts nothing: I=0, P=0, T=3 -> Dice 0.
    acc = MetricAccumulator(threshold=0.55)
    acc.update(PROBS, TARGETS)
    assert acc.report()["cases"][1]["dice"] == 0.0
    assert acc.report()["per_image"]["threshold"] == 0.55


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_torch_matches_numpy(device):
    p = torch.tensor(PROBS, device=device).half()  # fp16 holds 0.5 exactly
    t = torch.tensor(TARGETS, device=device).bool()
    acc_t, acc_n = MetricAccumulator(), MetricAccumulator()
    acc_t.update(p.unsqueeze(1), t, names=["a", "b"])
    acc_n.update(PROBS, TARGETS, names=["a", "b"])
    assert acc_t.report() == acc_n.report()
    # Targets may live on the CPU while predictions sit on the device.
    np.testing.assert_array_equal(confusion_counts(p, torch.tensor(TARGETS)), [[1, 2, 2], [3, 4, 3]])


def _random_batches(seed=0, n_batches=6, b=4, size=16):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_batches):
        t = rng.random((b, size, size)) < rng.random((b, 1, 1)) * 0.5
        p = np.clip(t * 0.7 + rng.random((b, size, size)) * 0.9 - 0.35, 0, 1).astype(np.float32)
        out.append((p, t, [f"case{i * b + j}" for j in range(b)]))
    return out


def test_merge_equals_single_pass():
    batches = _random_batches()
    single = MetricAccumulator()
    for p, t, names in batches:
        single.update(p, t, names)
    ranks = [MetricAccumulator() for _ in range(3)]
    for i, (p, t, names) in enumerate(batches):
        ranks[i // 2].update(torch.from_numpy(p), torch.from_numpy(t), names)
    # States go through JSON to prove they are plain data (what all_gather_object ships).
    states = [json.loads(json.dumps(r.state())) for r in ranks]
    merged = MetricAccumulator.from_state(states[0])
    for s in states[1:]:
        merged.merge(s)
    assert merged.report() == single.report()
    assert len(merged) == 24
    # The two conventions really differ on this data.
    r = single.report()
    assert abs(r["per_image"]["dice"] - r["global"]["dice"]) > 1e-3


def test_merge_drops_ddp_padding_duplicates_when_asked():
    batches = _random_batches(seed=1, n_batches=2)
    a, b = MetricAccumulator(), MetricAccumulator()
    a.update(*batches[0])
    b.update(*batches[1])
    b.update(batches[0][0][:1], batches[0][1][:1], batches[0][2][:1])  # padded repeat of case0
    dup = MetricAccumulator().merge(a).merge(b)
    assert len(dup) == 9
    dedup = MetricAccumulator().merge(a).merge(b, drop_duplicate_names=True)
    single = MetricAccumulator()
    for p, t, n in batches:
        single.update(p, t, n)
    assert dedup.report() == single.report()


def test_merge_rejects_different_threshold():
    with pytest.raises(ValueError, match="threshold"):
        MetricAccumulator(0.5).merge(MetricAccumulator(0.4).state())
