"""Cases (image, mask, note) to model tensors; notes are checked before training starts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..notes import mirror_note
from ..preprocess import PreprocessConfig, prepare_image
from ..tokenizer import NoteError, NoteTokenizer
from .cases import Case, DatasetError, load_case


def mask_to_model(mask: np.ndarray, size: int) -> torch.Tensor:
    """(1, size, size) float {0, 1}: area-resampled, then thresholded at one half."""
    m = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="area") >= 0.5
    return m[0].float()


class CaseDataset(torch.utils.data.Dataset):
    """A list of cases read lazily from disk; every note is tokenised up front so a bad
    note fails at once, naming its case, instead of hours into a run. Each note's mirror
    (for a horizontal flip, see augment.py) is tokenised too where the note has one."""

    def __init__(self, cases: Sequence[Case], tokenizer: NoteTokenizer, image_size: int):
        self.cases = list(cases)
        self.preprocess = PreprocessConfig(size=image_size)
        self.tokens = []
        self.mirrored_tokens = []
        self.can_flip = []
        self.truncated: dict[str, str] = {}  # case name -> dropped text (explicit opt-in only)
        for case in self.cases:
            try:
                encoded = tokenizer.encode(case.note)
            except NoteError as exc:
                hint = "" if tokenizer.truncate else " (or train with explicit note truncation)"
                raise DatasetError(f"case {case.name} ({case.mask_path}): {exc}{hint}") from None
            self.tokens.append(encoded.ids)
            mirrored = _mirrored_ids(tokenizer, case.note)
            self.can_flip.append(mirrored is not None)
            self.mirrored_tokens.append(encoded.ids if mirrored is None else mirrored)
            if encoded.dropped:
                self.truncated[case.name] = encoded.dropped

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        image, mask = load_case(self.cases[index])
        return {
            "image": prepare_image(image, self.preprocess)[0],
            "mask": mask_to_model(mask, self.preprocess.size),
            "tokens": self.tokens[index],
            "mirrored_tokens": self.mirrored_tokens[index],
            "can_flip": self.can_flip[index],
            "index": index,
        }


def _mirrored_ids(tokenizer: NoteTokenizer, note: str) -> torch.Tensor | None:
    """Token ids of the flipped image's note, or None where the note has no mirror (not
    in the QaTa grammar, or too long for the context even though the original fits)."""
    try:
        return tokenizer.encode(mirror_note(note), truncate=False).ids
    except (ValueError, NoteError):
        return None
