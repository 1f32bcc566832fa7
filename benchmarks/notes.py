"""Distinct QaTa-style notes, so that every timed re-prompt misses the text cache."""

from __future__ import annotations

import itertools

LATERALITY = {1: "unilateral", 2: "bilateral"}
COUNTS = ["one infected area", "two infected areas", "three infected areas"]
ZONES = [
    "upper left lung", "middle left lung", "lower left lung",
    "upper right lung", "middle right lung", "lower right lung",
]


def qata_notes():
    """An endless supply of distinct notes in the QaTa caption grammar."""
    for first, second in itertools.chain(
        ((z, None) for z in ZONES), itertools.permutations(ZONES, 2)
    ):
        for count in COUNTS:
            if second is None:
                yield f"Unilateral pulmonary infection, {count}, {first}."
            else:
                side = LATERALITY[1 + (first.split()[1] != second.split()[1])]
                yield f"{side.capitalize()} pulmonary infection, {count}, {first} and {second}."


def notes_for(tokenizer, n: int) -> list[str]:
    """n distinct notes that fit the tokenizer's context."""
    out = []
    for note in qata_notes():
        if tokenizer.encode(note, truncate=True).dropped is None:
            out.append(note)
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} distinct notes fit a {tokenizer.context_length}-token context")
