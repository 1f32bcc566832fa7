"""Augmentation keeps notes true: a flip mirrors the mask and swaps the note's sides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_causalseg.engine.augment import NO_AUGMENTATION, AugmentConfig, augment_batch
from napari_causalseg.engine.data.annotations import AnnotationStore
from napari_causalseg.engine.data.dataset import CaseDataset
from napari_causalseg.engine.notes import make_note, mirror_note, mirror_zones, parse_note
from napari_causalseg.engine.preprocess import PreprocessConfig, prepare_image
from napari_causalseg.engine.tokenizer import NoteTokenizer

FLIP_ONLY = AugmentConfig(flip=1.0, rotate_deg=0, zoom=0, shift=0, gamma=0, contrast=0, brightness=0)


def test_mirror_note_swaps_sides_and_round_trips():
    note = "Bilateral pulmonary infection, three infected areas, upper left lung and middle lower right lung."
    mirrored = mirror_note(note)
    assert parse_note(mirrored)[2] == [("left", "middle"), ("left", "lower"), ("right", "upper")]
    assert mirror_note(mirrored) == note
    assert mirror_zones([("right", "lower")]) == [("left", "lower")]
    assert mirror_note("unilateral pulmonary infection, one infected area, lower right lung.") == make_note(
        [("left", "lower")])
    with pytest.raises(ValueError):
        mirror_note("a free-text note")


def _batch(notes: list[str], size: int = 32):
    tok = NoteTokenizer(24)
    rng = np.random.default_rng(0)
    images = torch.cat([prepare_image(rng.integers(0, 256, (size, size), dtype=np.uint8),
                                      PreprocessConfig(size=size)) for _ in notes])
    masks = torch.zeros(len(notes), 1, size, size)
    masks[:, :, 4:12, 2:10] = 1  # image left
    tokens = torch.stack([tok.encode(n).ids for n in notes])
    mirrored, can = [], []
    for n in notes:
        try:
            mirrored.append(tok.encode(mirror_note(n)).ids)
            can.append(True)
        except ValueError:
            mirrored.append(tok.encode(n).ids)
            can.append(False)
    return images, masks, tokens, torch.stack(mirrored), torch.tensor(can), tok


def test_flip_moves_image_mask_and_note_together():
    notes = ["Unilateral pulmonary infection, one infected area, upper left lung.", "free text: patchy opacity"]
    images, masks, tokens, mirrored, can, tok = _batch(notes)
    x, m, t = augment_batch(images, masks, tokens, mirrored, can, FLIP_ONLY, torch.Generator().manual_seed(0))
    # the QaTa note is flipped with its image and mask ...
    torch.testing.assert_close(x[0], images[0].flip(-1))
    assert m[0, 0, 4:12, -10:-2].all() and m[0].sum() == masks[0].sum()
    assert torch.equal(t[0], tok.encode("Unilateral pulmonary infection, one infected area, upper right lung.").ids)
    # ... a note without a mirror never is
    torch.testing.assert_close(x[1], images[1])
    assert torch.equal(m[1], masks[1]) and torch.equal(t[1], tokens[1])


def test_no_augmentation_is_the_identity_and_augmentation_is_seeded():
    images, masks, tokens, mirrored, can, _ = _batch(["Unilateral pulmonary infection, one infected area, lower right lung."] * 4)
    out = augment_batch(images, masks, tokens, mirrored, can, NO_AUGMENTATION, torch.Generator())
    assert out[0] is images and out[1] is masks and out[2] is tokens
    a = augment_batch(images, masks, tokens, mirrored, can, AugmentConfig(), torch.Generator().manual_seed(5))
    b = augment_batch(images, masks, tokens, mirrored, can, AugmentConfig(), torch.Generator().manual_seed(5))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], images)
    assert set(torch.unique(a[1]).tolist()) <= {0.0, 1.0}  # masks stay binary


def test_augment_config_rejects_nonsense():
    with pytest.raises(ValueError, match="flip"):
        AugmentConfig(flip=1.5)
    with pytest.raises(ValueError, match="zoom"):
        AugmentConfig(zoom=1.0)
    with pytest.raises(ValueError, match="negative"):
        AugmentConfig(gamma=-0.1)


def test_dataset_tokenises_each_notes_mirror(tmp_path):
    store = AnnotationStore(tmp_path)
    img, mask = np.zeros((32, 32), np.uint8), np.zeros((32, 32), bool)
    a = store.add_case("a", img, mask, "Unilateral pulmonary infection, one infected area, lower right lung.")
    b = store.add_case("b", img, mask, "ground-glass opacity at the right base")
    ds = CaseDataset([a, b], NoteTokenizer(24), 32)
    assert ds.can_flip == [True, False]
    tok = NoteTokenizer(24)
    assert torch.equal(ds[0]["mirrored_tokens"], tok.encode(mirror_note(a.note)).ids)
    assert torch.equal(ds[1]["mirrored_tokens"], ds[1]["tokens"])
