"""Mask against note: zones the mask covers versus zones the note names."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_causalseg.engine.agreement import (
    NOT_QATA,
    AgreementConfig,
    agreement_report,
    check_agreement,
)
from napari_causalseg.engine.data.synth import SynthConfig, generate
from napari_causalseg.engine.lungs import (
    LungBox,
    LungFields,
    estimate_lung_fields,
    lung_fields_from_mask,
)
from napari_causalseg.engine.notes import HEALTHY_NOTE, ZONES, make_note, mirror_zones

from .test_lungs import image_lungs

SHAPE = (200, 200)
LUNGS = LungFields(LungBox(0.1, 0.9, 0.05, 0.45), LungBox(0.12, 0.88, 0.55, 0.95), 0.5, "mask")
_A, _B = AgreementConfig().zone_borders
BANDS = {"upper": (0.0, _A), "middle": (_A, _B), "lower": (_B, 1.0)}


def zone_mask(zones, note_sides="image", lungs=LUNGS, shape=SHAPE) -> np.ndarray:
    """A mask filling exactly the given (side, zone) bands of ``lungs``."""
    mask = np.zeros(shape, bool)
    h, w = shape
    for side, zone in zones:
        image_side = side if note_sides == "image" else ("right" if side == "left" else "left")
        box = lungs.box(image_side)
        lo, hi = (box.top + f * box.height for f in BANDS[zone])
        mask[round(lo * h):round(hi * h), round(box.col0 * w):round(box.col1 * w)] = True
    return mask


NAMED = [("left", "upper"), ("right", "lower")]
NOTE = make_note(NAMED)  # "Bilateral ..., upper left lung and lower right lung."


def test_a_mask_on_exactly_the_named_zones_agrees():
    r = check_agreement(zone_mask(NAMED), NOTE, lungs=LUNGS)
    assert r.checked and r.agrees and r.messages == []
    assert r.note_zones == NAMED and r.mask_zones == NAMED
    assert r.states[("left", "upper")] == r.states[("right", "lower")] == "covered"
    assert r.states[("left", "lower")] == r.states[("right", "upper")] == "empty"
    # the neighbours see the named lesions through the border margin: partial, never covered
    assert r.states[("left", "middle")] == r.states[("right", "middle")] == "partial"
    assert r.coverage[("right", "lower")] > 0.9 and r.coverage[("left", "middle")] == 0
    assert "agree" in r.summary and "image" in r.summary


def test_every_single_zone_note_agrees_with_its_own_mask():
    for side in ("left", "right"):
        for zone in ZONES:
            assert check_agreement(zone_mask([(side, zone)]), make_note([(side, zone)]), lungs=LUNGS).agrees


def test_a_missing_named_zone_is_reported():
    r = check_agreement(zone_mask(NAMED[:1]), NOTE, lungs=LUNGS)
    assert not r.agrees and r.missing == [("right", "lower")] and r.extra == []
    assert r.messages == ["the note names the lower right lung (image right), the mask has nothing there"]


def test_an_extra_zone_is_reported():
    r = check_agreement(zone_mask(NAMED + [("left", "lower")]), NOTE, lungs=LUNGS)
    assert not r.agrees and r.extra == [("left", "lower")] and r.missing == []
    assert r.messages == ["the mask covers the lower left lung (image left), which the note does not name"]
    r = check_agreement(zone_mask([("left", "lower")]), NOTE, lungs=LUNGS)  # both at once
    assert len(r.missing) == 2 and r.extra == [("left", "lower")] and len(r.messages) == 3


def test_specks_do_not_count():
    speck = np.zeros(SHAPE, bool)
    speck[150:153, 20:23] = True  # 9 pixels in the left lower zone
    r = check_agreement(zone_mask(NAMED) | speck, NOTE, lungs=LUNGS)
    assert r.agrees and r.states[("left", "lower")] == "empty" and r.coverage[("left", "lower")] > 0
    only = check_agreement(speck, make_note([("left", "lower")]), lungs=LUNGS)
    assert not only.agrees and only.missing == [("left", "lower")]  # a speck is nothing there


def test_a_lesion_spilling_over_a_border_is_accepted_but_a_filled_zone_is_not():
    mask = zone_mask(NAMED)
    box, h = LUNGS.right, SHAPE[0]
    border = round((box.top + _B * box.height) * h)
    mask[border - 10:border, round(box.col0 * 200):round(box.col1 * 200)] = True  # 10 rows into the middle
    r = check_agreement(mask, NOTE, lungs=LUNGS)
    assert r.agrees and r.states[("right", "middle")] == "partial"
    assert not check_agreement(zone_mask(NAMED + [("right", "middle")]), NOTE, lungs=LUNGS).agrees


def test_notes_outside_the_grammar_cannot_be_checked():
    for note in ("patchy opacity at the left base", "Bilateral pulmonary infection, lots of areas, everywhere."):
        r = check_agreement(zone_mask(NAMED), note, lungs=LUNGS)
        assert not r.checked and r.agrees and r.messages == [NOT_QATA] and r.summary == NOT_QATA
        assert r.to_dict()["checked"] is False


def test_healthy_note():
    assert check_agreement(np.zeros(SHAPE, bool), HEALTHY_NOTE, lungs=LUNGS).agrees
    r = check_agreement(zone_mask(NAMED), HEALTHY_NOTE, lungs=LUNGS)
    assert not r.agrees and sorted(r.extra) == sorted(NAMED)


def test_both_side_conventions():
    patient = [("left", "lower")]  # the patient's left lung = the image's right in a PA view
    mask = zone_mask(patient, note_sides="patient")
    as_patient = AgreementConfig(note_sides="patient")
    assert check_agreement(mask, make_note(patient), lungs=LUNGS, cfg=as_patient).agrees
    # QaTa's convention names the same lesion by the image side: mirror_zones converts
    assert check_agreement(mask, make_note(mirror_zones(patient)), lungs=LUNGS).agrees
    r = check_agreement(mask, make_note(patient), lungs=LUNGS)  # patient sides read as image sides
    assert not r.agrees
    assert "the note names the lower left lung (image left), the mask has nothing there" in r.messages
    assert "the mask covers the lower right lung (image right), which the note does not name" in r.messages
    r = check_agreement(mask, make_note(mirror_zones(patient)), lungs=LUNGS, cfg=as_patient)
    assert r.messages[0] == ("the note names the lower right lung (patient right, image left), "
                             "the mask has nothing there")


def test_the_verdict_does_not_depend_on_resolution():
    small = zone_mask(NAMED[:1])
    big = np.kron(small, np.ones((4, 4), bool))
    a, b = (check_agreement(m, NOTE, lungs=LUNGS).to_dict() for m in (small, big))
    assert a["missing"] == b["missing"] == ["lower right"]
    assert a["coverage"] == pytest.approx(b["coverage"], abs=0.02)


def test_config_and_input_errors():
    for bad in ({"zone_borders": (0.6, 0.3)}, {"empty_below": 0.6, "covered_from": 0.5},
                {"note_sides": "viewer"}, {"border_margin": 0.3}):
        with pytest.raises(ValueError):
            AgreementConfig(**bad)
    with pytest.raises(ValueError, match="image="):
        check_agreement(zone_mask(NAMED), NOTE)
    with pytest.raises(ValueError, match="2-D mask"):
        check_agreement(np.zeros((2, 3, 4)), NOTE, lungs=LUNGS)


@pytest.fixture(scope="module")
def synth_cases():
    return generate(30, seed=5, cfg=SynthConfig(), split="test")


def test_synthetic_truth_agrees_and_wrong_notes_are_flagged(synth_cases):
    own, estimated, flagged, wrong = 0, 0, 0, 0
    for case in synth_cases:
        own += check_agreement(case.mask, case.note, lungs=lung_fields_from_mask(*image_lungs(case))).agrees
        r = check_agreement(case.mask, case.note, image=case.image)
        estimated += r.agrees
        mirrored = mirror_zones(case.note_zones)
        if mirrored != case.note_zones:
            wrong += 1
            flagged += not check_agreement(case.mask, make_note(mirrored), lungs=r.lungs).agrees
    n = len(synth_cases)
    assert own >= 0.95 * n and estimated >= 0.9 * n, (own, estimated)
    assert wrong >= 10 and flagged >= 0.8 * wrong, (flagged, wrong)


def test_patient_side_synthetic_notes_need_the_patient_convention():
    cases = generate(16, seed=6, cfg=SynthConfig(note_sides="patient"), split="test")
    as_patient = AgreementConfig(note_sides="patient")
    asym = [c for c in cases if mirror_zones(c.zones) != c.zones]
    assert all(check_agreement(c.mask, c.note, image=c.image, cfg=as_patient).agrees for c in asym)
    wrong = sum(not check_agreement(c.mask, c.note, image=c.image).agrees for c in asym)
    assert len(asym) >= 6 and wrong >= 0.8 * len(asym), (wrong, len(asym))


def test_report_is_json(synth_cases):
    case = synth_cases[0]
    report = agreement_report(case.image, case.mask, case.note)
    again = json.loads(json.dumps(report))
    assert again["checked"] is True and again["note_sides"] == "image"
    assert set(again["coverage"]) == {f"{z} {s}" for s in ("left", "right") for z in ZONES}
    assert again["lungs"]["source"] == "estimate"
    assert again["lungs"]["left"] == pytest.approx(
        {k: getattr(estimate_lung_fields(case.image).left, k) for k in ("top", "bottom", "col0", "col1")}, abs=1e-4)


def test_cli_segment_reports_the_agreement(capsys, tmp_path, synth_cases):
    import torch
    from PIL import Image

    from napari_causalseg.cli import main
    from napari_causalseg.engine import CausalCLIPSeg, get_config, save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, CausalCLIPSeg(get_config("tiny")))
    image = tmp_path / "case.png"
    Image.fromarray(synth_cases[0].image).save(image)
    for note, checked in ((synth_cases[0].note, True), ("ground-glass opacity, both bases", False)):
        rc = main(["segment", str(image), "--note", note, "--checkpoint", str(ckpt),
                   "--out", str(tmp_path / "out"), "--device", "cpu", "--overwrite"])
        out, err = capsys.readouterr()
        assert rc == 0, err
        result = json.loads(out)["results"][0]
        agreement = result["agreement"]
        assert agreement["checked"] is checked
        mask = np.asarray(Image.open(result["mask"])) > 0
        expected = agreement_report(synth_cases[0].image, mask, note)  # the mask the CLI wrote
        assert agreement == json.loads(json.dumps(expected))
        if not checked:
            assert agreement["messages"] == [NOT_QATA]
