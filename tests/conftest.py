"""Shared fixtures: tiny real models (random weights) built in the test itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_causalseg.engine import CausalCLIPSeg, get_config

NOTE = "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
OTHER_NOTE = "Unilateral pulmonary infection, one infected area, lower right lung."


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Never touch (or train into) the user's real cache from a test."""
    monkeypatch.setenv("NAPARI_CAUSALSEG_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tiny_model() -> CausalCLIPSeg:
    torch.manual_seed(0)
    return CausalCLIPSeg(get_config("tiny")).eval()


@pytest.fixture
def xray() -> np.ndarray:
    """A 16-bit, non-square image with some structure (not a constant)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:260]
    base = 20000 + 15000 * np.sin(xx / 30.0) * np.cos(yy / 40.0)
    return (base + rng.normal(0, 2000, base.shape)).clip(0, 65535).astype(np.uint16)
