"""The QaTa-COV19 note grammar (engine/notes.py): composing and reading notes back."""

from __future__ import annotations

import itertools

import pytest

from napari_causalseg.engine.notes import (
    HEALTHY_NOTE,
    SIDES,
    ZONES,
    all_notes,
    make_note,
    parse_note,
)


def test_make_and_parse_note_round_trip_every_layout():
    areas = list(itertools.product(SIDES, ZONES))
    for k in range(1, 7):
        for zones in itertools.combinations(areas, k):
            note = make_note(zones)
            lat, count, parsed = parse_note(note)
            assert count == k and sorted(parsed) == sorted(zones)
            assert lat == ("bilateral" if len({s for s, _ in zones}) == 2 else "unilateral")


def test_all_notes_is_the_whole_grammar():
    notes = all_notes()
    assert len(notes) == len(set(notes)) == 64 and notes[0] == HEALTHY_NOTE
    assert sorted(len(parse_note(n)[2]) for n in notes) == sorted(
        k for k in range(7) for _ in itertools.combinations(range(6), k))


def test_examples_from_the_brief():
    assert make_note([("right", "lower")]) == (
        "Unilateral pulmonary infection, one infected area, lower right lung."
    )
    assert make_note([("right", "lower"), ("left", "upper")]) == (
        "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
    )
    zones = [("left", "upper"), ("left", "middle"), ("right", "middle"), ("right", "lower")]
    assert make_note(zones) == (
        "Bilateral pulmonary infection, four infected areas, upper middle left lung and "
        "middle lower right lung."
    )
    # real QaTa captions sometimes name the right lung first, in lower case
    _, _, z = parse_note(
        "bilateral pulmonary infection, two infected areas, upper right lung and upper left lung."
    )
    assert z == [("left", "upper"), ("right", "upper")]


@pytest.mark.parametrize(
    "bad",
    [
        "Pulmonary infection, one infected area, lower right lung.",
        "Unilateral pulmonary infection, seven infected areas, lower right lung.",
        "Unilateral pulmonary infection, one infected area, lower middle lung.",
        "Unilateral pulmonary infection, one infected area, right lung.",
        "Unilateral pulmonary infection, one sick area, lower right lung.",
        "lower right lung",
    ],
)
def test_parse_rejects_malformed(bad):
    with pytest.raises(ValueError):
        parse_note(bad)
