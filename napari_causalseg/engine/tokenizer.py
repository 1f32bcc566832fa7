"""Radiology notes to CLIP tokens, never cutting a note silently.

CLIP's own tokenizer truncates anything past its context and swaps the last token for
[EOS]; for a 20-token context that can drop a lung zone from a QaTa note without
anyone noticing. Here a note that does not fit is an error, unless the caller opts in
to truncation, and then the dropped words are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .bpe import BPE, clean_text


class NoteError(ValueError):
    """A note that cannot be used as it is (empty, or too long for the model)."""


def normalize_note(note: str) -> str:
    """The form CLIP was trained on: fixed unicode, single spaces, lower case."""
    if not isinstance(note, str):
        raise NoteError(f"the note must be text, got {type(note).__name__}")
    return clean_text(note)


@dataclass(frozen=True)
class TokenizedNote:
    """Token ids padded to the context, and what (if anything) was cut off."""

    note: str  # normalised note
    ids: torch.Tensor  # (context_length,) int64, [SOS] ... [EOS] 0 ...
    n_tokens: int  # tokens used, [SOS]/[EOS] included
    dropped: str | None = None  # text removed by an explicit truncation


class NoteTokenizer:
    """CLIP BPE (49,152 merges) with a hard context limit and [SOS]/[EOS] brackets."""

    def __init__(self, context_length: int = 20, truncate: bool = False):
        if context_length < 3:
            raise ValueError("context_length must leave room for [SOS], a word and [EOS]")
        self.context_length = context_length
        self.truncate = truncate
        self._bpe = BPE()
        self.sot_id = self._bpe.vocab.sot_id
        self.eot_id = self._bpe.vocab.eot_id

    def encode(self, note: str, truncate: bool | None = None) -> TokenizedNote:
        truncate = self.truncate if truncate is None else truncate
        text = normalize_note(note)
        if not text:
            raise NoteError(
                "the note is empty: describe the finding, e.g. 'Bilateral pulmonary "
                "infection, two infected areas, upper left lung and lower right lung.'"
            )
        body = self._bpe.encode(text)
        room = self.context_length - 2
        dropped = None
        if len(body) > room:
            if not truncate:
                raise NoteError(
                    f"the note has {len(body) + 2} tokens with [SOS]/[EOS] but the model "
                    f"reads at most {self.context_length}; it would lose "
                    f"'{self._bpe.decode(body[room:]).strip()}'. Shorten the note, or "
                    "enable truncation explicitly to drop the end."
                )
            dropped = self._bpe.decode(body[room:]).strip()
            body = body[:room]
        tokens = [self.sot_id, *body, self.eot_id]
        ids = torch.zeros(self.context_length, dtype=torch.long)
        ids[: len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return TokenizedNote(note=text, ids=ids, n_tokens=len(tokens), dropped=dropped)

    def __call__(self, notes: list[str] | str, truncate: bool | None = None) -> torch.Tensor:
        """Batch of notes -> (B, context_length) token ids."""
        if isinstance(notes, str):
            notes = [notes]
        return torch.stack([self.encode(n, truncate=truncate).ids for n in notes])
