"""Lung fields from the image alone, checked against the synthetic generator's own lungs."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_causalseg.engine.data.synth import ZONE_CODES, SynthConfig, generate
from napari_causalseg.engine.lungs import (
    LungConfig,
    edges_from_masks,
    estimate_lung_fields,
    frame_lung_fields,
    gray_image,
    load_regression,
    lung_fields_from_mask,
    mirror_edges,
    save_regression,
)
from napari_causalseg.engine.notes import ZONES


def image_lungs(case) -> tuple[np.ndarray, np.ndarray]:
    """(image-left, image-right) lung masks of a synthetic case (PA: patient right = image left)."""
    codes = {side: [ZONE_CODES[(side, z)] for z in ZONES] for side in ("left", "right")}
    return np.isin(case.zone_map, codes["right"]), np.isin(case.zone_map, codes["left"])


def edges(fields) -> np.ndarray:
    return np.array([getattr(fields.box(s), k) for s in ("left", "right") for k in ("top", "bottom", "col0", "col1")])


@pytest.fixture(scope="module")
def cases():
    return generate(24, seed=11, cfg=SynthConfig(), split="test")


def test_estimate_finds_the_synthetic_lungs_far_better_than_the_frame(cases):
    est, frame = [], []
    for case in cases:
        truth = edges_from_masks(*image_lungs(case))
        est.append(np.abs(edges(estimate_lung_fields(case.image)) - truth))
        frame.append(np.abs(edges(frame_lung_fields()) - truth))
    est, frame = np.array(est), np.array(frame)
    rows = [0, 1, 4, 5]  # apex and base of both lungs: what the zones depend on
    assert np.median(est[:, rows]) < 0.07, np.median(est, axis=0)
    assert est[:, rows].mean() < 0.55 * frame[:, rows].mean()  # measured: 0.41x
    assert np.percentile(est, 90) < 0.15


def test_the_midline_separates_the_synthetic_lungs(cases):
    for case in cases:
        left, right = image_lungs(case)
        truth = lung_fields_from_mask(left, right)
        fields = estimate_lung_fields(case.image)
        assert truth.left.col1 - 0.06 < fields.midline < truth.right.col0 + 0.06
        assert fields.left.col1 <= fields.midline <= fields.right.col0


def test_a_mirrored_image_gets_mirrored_fields(cases):
    image = cases[0].image
    a, b = edges(estimate_lung_fields(image)), edges(estimate_lung_fields(image[:, ::-1]))
    np.testing.assert_allclose(mirror_edges(a), b, atol=1e-4)


def test_large_radiographs_are_read_fast_and_alike(cases):
    image = cases[1].image
    big = np.kron(image.astype(np.uint16) * 257, np.ones((12, 12), np.uint16))  # 2688 x 2688, 16-bit
    t0 = time.perf_counter()
    fields = estimate_lung_fields(big)
    assert time.perf_counter() - t0 < 0.5
    np.testing.assert_allclose(edges(fields), edges(estimate_lung_fields(image)), atol=0.02)
    estimate_lung_fields(image)  # warm
    t0 = time.perf_counter()
    for _ in range(10):
        estimate_lung_fields(image)
    assert (time.perf_counter() - t0) / 10 < 0.05  # well under 100 ms at 224 x 224


def test_rgb_and_odd_inputs(cases):
    image = cases[2].image
    rgb = np.stack([image] * 3, axis=-1)
    np.testing.assert_allclose(edges(estimate_lung_fields(rgb)), edges(estimate_lung_fields(image)), atol=2e-3)
    flat = estimate_lung_fields(np.full((100, 80), 7, np.uint8))  # no structure: still plausible boxes
    for box in (flat.left, flat.right):
        assert 0 <= box.top < box.bottom <= 1 and 0 <= box.col0 < box.col1 <= 1
    for bad in (np.zeros((5, 6, 7)), np.zeros(10), np.zeros((1, 40))):
        with pytest.raises(ValueError, match="2-D grey or RGB"):
            gray_image(bad)


def test_known_lungs_and_the_frame():
    left, right = np.zeros((100, 100), bool), np.zeros((100, 100), bool)
    left[20:80, 10:40], right[25:90, 60:95] = True, True
    f = lung_fields_from_mask(left, right)
    assert (f.left.top, f.left.bottom, f.left.col0, f.left.col1) == (0.2, 0.8, 0.1, 0.4)
    assert f.midline == pytest.approx(0.5) and f.source == "mask"
    assert frame_lung_fields().left.height == 1.0 and frame_lung_fields().source == "frame"
    with pytest.raises(ValueError, match="empty"):
        lung_fields_from_mask(left, np.zeros_like(right))
    with pytest.raises(ValueError, match="image side"):
        f.box("top")


def test_regression_file_round_trip_and_errors(tmp_path, cases):
    weights, size, info = load_regression(str(LungConfig().weights))
    assert weights.shape == (size * size + 1, 8) and "QaTa" in info["data"]
    out = tmp_path / "w.npz"
    save_regression(out, weights, size, {"data": "copy"})
    same = estimate_lung_fields(cases[0].image, LungConfig(weights=out))
    assert edges(same) == pytest.approx(edges(estimate_lung_fields(cases[0].image)))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="bad.npz"):
        estimate_lung_fields(cases[0].image, LungConfig(weights=bad))
