"""The synthetic QaTa-like generator (data/synth): notes must be true of the masks.

Expected facts are checked against the pixels (where the mask lies in the lung field),
not against the generator's own bookkeeping alone.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque

import numpy as np
import pytest

from napari_causalseg.engine.data.synth import (
    ZONE_CODES,
    SynthCase,
    SynthConfig,
    generate,
    synth_case,
)
from napari_causalseg.engine.notes import (
    HEALTHY_NOTE,
    NUMBER_WORDS,
    SIDES,
    ZONES,
    mirror_zones,
    parse_note,
)

ZONE_RE = r"(?:upper|middle|lower)(?: (?:upper|middle|lower))*"
NOTE_RE = re.compile(
    rf"^(Unilateral|Bilateral) pulmonary infection, ({'|'.join(NUMBER_WORDS)}) infected "
    rf"(area|areas), ({ZONE_RE}) (left|right) lung(?: and ({ZONE_RE}) (left|right) lung)?\.$"
)


@pytest.fixture(scope="module")
def cases() -> list[SynthCase]:
    return generate(40, seed=11, cfg=SynthConfig(keep_clean=True, p_healthy=0.1))


def _n_components(m: np.ndarray) -> int:
    """4-connected components by plain BFS (independent of the generator's own labelling)."""
    seen = np.zeros_like(m)
    h, w = m.shape
    n = 0
    for y, x in zip(*np.nonzero(m)):
        if seen[y, x]:
            continue
        n += 1
        seen[y, x] = True
        q = deque([(y, x)])
        while q:
            a, b = q.popleft()
            for c, d in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                if 0 <= c < h and 0 <= d < w and m[c, d] and not seen[c, d]:
                    seen[c, d] = True
                    q.append((c, d))
    return n


def _lung_side(case: SynthCase, side: str) -> np.ndarray:
    """A lung field found from geometry: patient's right lung = image LEFT half."""
    half = np.zeros(case.lung.shape, bool)
    w = half.shape[1]
    if side == "right":
        half[:, : w // 2] = True
    else:
        half[:, w // 2 :] = True
    return case.lung & half


# ------------------------------------------------------------------ basic contract


def test_shapes_and_dtypes(cases):
    for c in cases:
        assert c.image.shape == (224, 224) and c.image.dtype == np.uint8
        assert c.mask.shape == (224, 224) and c.mask.dtype == bool
        assert c.zone_map.shape == (224, 224) and c.zone_map.dtype == np.uint8
        assert c.clean is not None and c.clean.shape == c.image.shape
        assert isinstance(c.note, str) and c.split == "train"
        assert c.image.std() > 20  # a picture, not a constant


def test_other_sizes():
    c = synth_case(np.random.default_rng(0), SynthConfig(size=96))
    assert c.image.shape == c.mask.shape == (96, 96)
    assert c.mask.any() and c.lung.any()


def test_same_seed_same_case_different_seed_different():
    cfg = SynthConfig()
    a, b = generate(3, seed=5, cfg=cfg), generate(3, seed=5, cfg=cfg)
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
        assert x.note == y.note
    c = generate(3, seed=6, cfg=cfg)
    assert not np.array_equal(a[0].image, c[0].image)
    # a case does not depend on how many were generated before it
    assert np.array_equal(generate(5, seed=5, cfg=cfg)[2].image, a[2].image)
    # seed falls back to cfg.seed
    assert np.array_equal(generate(1, cfg=SynthConfig(seed=5))[0].image, a[0].image)


def test_looks_like_a_radiograph():
    """Air-filled lungs are darker than the mediastinum and the abdomen."""
    for c in generate(12, seed=1, cfg=SynthConfig(p_healthy=1.0, p_collimation=0.0)):
        img = c.image.astype(float)
        lung = img[c.lung].mean()
        s = img.shape[0]
        mediastinum = img[int(0.45 * s) : int(0.65 * s), int(0.47 * s) : int(0.53 * s)].mean()
        abdomen = img[int(0.9 * s) :, int(0.35 * s) : int(0.65 * s)].mean()
        assert mediastinum > lung + 40 and abdomen > lung + 40


# ------------------------------------------------------------------ notes


def test_note_grammar_and_structured_fields(cases):
    for c in cases:
        lat, count, zones = parse_note(c.note)
        assert zones == c.note_zones and lat == c.laterality
        if not c.zones:
            assert c.note == HEALTHY_NOTE and not c.mask.any()
            continue
        m = NOTE_RE.match(c.note)
        assert m, c.note
        assert count == len(c.zones) == NUMBER_WORDS.index(m.group(2)) + 1
        assert m.group(3) == ("area" if count == 1 else "areas")
        sides = {s for s, _ in c.zones}
        assert m.group(1) == ("Bilateral" if len(sides) == 2 else "Unilateral")
        if m.group(6):  # two sides: left listed first, as in the QaTa examples
            assert (m.group(5), m.group(7)) == ("left", "right")


def test_notes_name_image_sides_as_qata_does_unless_asked_for_patient_sides():
    """QaTa-COV19's captions say "right lung" for the lung on the image's right."""
    for note_sides in ("image", "patient"):
        for c in generate(12, seed=5, cfg=SynthConfig(note_sides=note_sides)):
            if c.laterality != "unilateral":
                continue
            named = parse_note(c.note)[2][0][0]
            w = c.mask.shape[1] // 2
            on_image_right = c.mask[:, w:].sum() > c.mask[:, :w].sum()
            assert (named == "right") == (on_image_right == (note_sides == "image")), (note_sides, c.note)
            assert c.note_zones == (mirror_zones(c.zones) if note_sides == "image" else c.zones)
    with pytest.raises(ValueError, match="note_sides"):
        SynthConfig(note_sides="viewer")


# ------------------------------------------------------------------ note vs mask


def test_mask_inside_lung_fields(cases):
    for c in cases:
        assert not (c.mask & ~c.lung).any()


def test_mask_is_where_the_note_says(cases):
    """Per side (image half) and per third of that lung's height: named -> largely covered,
    unnamed -> untouched (away from the wavy border)."""
    for c in cases:
        for side in SIDES:
            lung = _lung_side(c, side)
            rows = np.flatnonzero(lung.any(1))
            top, h = rows[0], rows[-1] + 1 - rows[0]
            tol = 0.06 * h  # the zone borders wave by up to 2.5% of the height
            r = np.arange(lung.shape[0])[:, None]
            for k, zone in enumerate(ZONES):
                lo, hi = top + k * h / 3, top + (k + 1) * h / 3
                core = lung & (r >= lo + tol) & (r < hi - tol)
                if (side, zone) in c.zones:
                    assert (c.mask & core).sum() > 0.3 * core.sum(), (c.note, side, zone)
                else:
                    assert not (c.mask & core).any(), (c.note, side, zone)
            # mask on this side lies only in bands of named zones
            named = [k for k, z in enumerate(ZONES) if (side, z) in c.zones]
            allowed = np.zeros_like(lung)
            for k in named:
                allowed |= (r >= top + k * h / 3 - tol) & (r < top + (k + 1) * h / 3 + tol)
            assert not (c.mask & lung & ~allowed).any(), (c.note, side)
            assert bool((c.mask & lung).any()) == bool(named)


def test_each_named_zone_is_one_contiguous_area(cases):
    for c in cases:
        for sz in c.zones:
            zone = c.zone_map == ZONE_CODES[sz]
            assert _n_components(c.mask & zone) == 1, (c.note, sz)
    for c in cases[:10]:
        for code in range(1, 7):
            assert _n_components(c.zone_map == code) == 1


def test_lesion_is_more_opaque_than_the_same_lung_without_it(cases):
    n = 0
    for c in cases:
        if not c.mask.any():
            assert np.array_equal(c.image, c.clean)
            continue
        n += 1
        diff = c.image.astype(float) - c.clean.astype(float)
        assert diff[c.mask].mean() > 15, c.note
        # lesion pixels are brighter than the rest of the (lesion-free) lung in the image
        rest = c.lung & ~c.mask
        if rest.sum() > 500:
            assert c.image[c.mask].mean() > c.image[rest].mean(), c.note
        # far from the lesion nothing changed
        far = np.ones_like(c.mask)
        ys, xs = np.nonzero(c.mask)
        far[max(0, ys.min() - 20) : ys.max() + 21, max(0, xs.min() - 20) : xs.max() + 21] = False
        assert np.abs(diff[far]).max() <= 1
    assert n > 20


def test_healthy_cases():
    cs = generate(4, seed=2, cfg=SynthConfig(p_healthy=1.0))
    for c in cs:
        assert c.note == HEALTHY_NOTE and not c.mask.any() and c.zones == []
        assert c.laterality == "none"


def test_zone_distribution_has_variety():
    cs = generate(60, seed=4, cfg=SynthConfig(size=64))
    counts = {len(c.zones) for c in cs}
    assert {1, 2, 3, 4} <= counts
    assert {"unilateral", "bilateral"} == {c.laterality for c in cs}
    seen = {sz for c in cs for sz in c.zones}
    assert seen == set(itertools.product(SIDES, ZONES))


# ------------------------------------------------------------------ confounder


def _marker_box(img: np.ndarray) -> np.ndarray:
    s = img.shape[0]
    return img[: int(0.2 * s), int(0.8 * s) :]  # default corner: top-right


def test_marker_confounder_follows_lesions_in_train_only():
    base = {"p_healthy": 0.4, "p_collimation": 0.0, "p_text": 0.0}
    cfg = SynthConfig(confounder="marker", **base)
    plain = SynthConfig(**base)
    train = generate(16, seed=9, cfg=cfg, split="train")
    train_plain = generate(16, seed=9, cfg=plain, split="train")
    assert {bool(c.zones) for c in train} == {True, False}
    for c, p in zip(train, train_plain):
        assert c.confounder == bool(c.zones)
        # the artefact is the only difference, and it sits in the fixed corner
        diff = c.image != p.image
        assert diff.any() == c.confounder
        if c.confounder:
            assert diff.sum() == _marker_box(diff).sum()
            assert (_marker_box(c.image) >= 240).sum() > 20
        assert np.array_equal(c.mask, p.mask) and c.note == p.note
    test = generate(32, seed=9, cfg=cfg, split="test")
    pairs = {(bool(c.zones), c.confounder) for c in test}
    assert pairs == {(True, True), (True, False), (False, True), (False, False)}


def test_lead_confounder_sits_on_the_lesion_in_train():
    cfg = SynthConfig(confounder="lead", p_healthy=0.3)
    plain = SynthConfig(p_healthy=0.3)
    for split in ("train", "test"):
        cs = generate(16, seed=3, cfg=cfg, split=split)
        ps = generate(16, seed=3, cfg=plain, split=split)
        on_lesion = []
        for c, p in zip(cs, ps):
            if split == "train":
                assert c.confounder == bool(c.zones)
            changed = np.abs(c.image.astype(int) - p.image.astype(int)) > 40
            assert changed.any() == c.confounder
            if c.confounder and c.zones:
                on_lesion.append((changed & c.mask).sum() > 10)
        if split == "train":
            assert on_lesion and all(on_lesion)
        else:
            assert any(c.confounder for c in cs) and not all(c.confounder for c in cs)


def test_bad_config_rejected():
    with pytest.raises(ValueError):
        SynthConfig(confounder="tube")
    with pytest.raises(ValueError):
        SynthConfig(marker_text="Z")
    with pytest.raises(ValueError):
        SynthConfig(marker_corner="middle")


def test_speed():
    cfg = SynthConfig()
    generate(1, seed=0, cfg=cfg)  # warm-up
    t = time.perf_counter()
    generate(10, seed=1, cfg=cfg)
    per_case = (time.perf_counter() - t) / 10
    assert per_case < 0.25, f"{per_case * 1000:.0f} ms per 224x224 case"
