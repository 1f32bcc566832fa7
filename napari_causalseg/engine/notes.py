"""The QaTa-COV19 note grammar: compose a note from lung zones, or read zones back.

"Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
The count word is the number of (side, zone) areas; laterality follows from the sides.
Deriving both from the zones keeps a composed note true to itself.

Which side is "left": QaTa-COV19's captions name the sides as the image shows them (the
viewer's left and right), not the patient's as radiology reports do. On SGSeg's copy, of
237 unilateral training cases 223 have their mask on the image half the caption names.
Models trained on QaTa (and this package's synthetic data, which follows QaTa) read notes
that way; `NOTE_SIDES` names the convention and `mirror_zones` converts.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

SIDES = ("left", "right")  # in note order
NOTE_SIDES = "image"  # QaTa-COV19's convention: "left lung" = the lung on the image's left
ZONES = ("upper", "middle", "lower")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six")
HEALTHY_NOTE = "No pulmonary infection, no infected area."


def make_note(zones: Sequence[tuple[str, str]]) -> str:
    """QaTa sentence for a set of (side, zone) areas; the inverse of :func:`parse_note`."""
    zones = sorted_zones(zones)
    if not zones:
        return HEALTHY_NOTE
    if len(zones) > len(NUMBER_WORDS):
        raise ValueError("at most six areas")
    sides = [s for s in SIDES if any(zs == s for zs, _ in zones)]
    lat = "Bilateral" if len(sides) == 2 else "Unilateral"
    n = len(zones)
    area = "area" if n == 1 else "areas"
    parts = [" ".join([z for zs, z in zones if zs == s] + [f"{s} lung"]) for s in sides]
    return (
        f"{lat} pulmonary infection, {NUMBER_WORDS[n - 1]} infected {area}, {' and '.join(parts)}."
    )


def all_notes() -> list[str]:
    """Every note of the grammar: the healthy one and one per non-empty set of areas (63),
    the finite set a user picking zones can produce (a text-feature cache can hold them all)."""
    areas = [(side, zone) for side in SIDES for zone in ZONES]
    return [make_note(c) for n in range(len(areas) + 1) for c in combinations(areas, n)]


def parse_note(note: str) -> tuple[str, int, list[tuple[str, str]]]:
    """(laterality, count, zones) of a QaTa-grammar note; raises ValueError otherwise."""
    text = note.strip().lower().rstrip(".")
    if text == HEALTHY_NOTE.lower().rstrip("."):
        return "none", 0, []
    try:
        head, count_part, where = (p.strip() for p in text.split(",", 2))
    except ValueError as e:
        raise ValueError(f"not a QaTa note: {note!r}") from e
    lat = head.removesuffix(" pulmonary infection")
    if lat not in ("unilateral", "bilateral") or lat == head:
        raise ValueError(f"bad laterality in {note!r}")
    words = count_part.split()
    if (
        len(words) != 3
        or words[0] not in NUMBER_WORDS
        or words[1] != "infected"
        or words[2] not in ("area", "areas")
    ):
        raise ValueError(f"bad count phrase in {note!r}")
    count = NUMBER_WORDS.index(words[0]) + 1
    zones: list[tuple[str, str]] = []
    for part in where.split(" and "):
        toks = part.split()
        if len(toks) < 3 or toks[-1] != "lung" or toks[-2] not in SIDES:
            raise ValueError(f"bad location {part!r} in {note!r}")
        if not toks[:-2] or any(t not in ZONES for t in toks[:-2]):
            raise ValueError(f"bad zones {part!r} in {note!r}")
        zones += [(toks[-2], z) for z in toks[:-2]]
    return lat, count, sorted_zones(zones)


def laterality(zones: Sequence[tuple[str, str]]) -> str:
    n_sides = len({side for side, _ in zones})
    return ("none", "unilateral", "bilateral")[n_sides]


def sorted_zones(zones: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted(set(zones), key=lambda sz: (SIDES.index(sz[0]), ZONES.index(sz[1])))


def mirror_zones(zones: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The same areas with left and right swapped: a horizontal flip of the image, or
    patient sides to image sides (a PA radiograph shows the patient's right on the left)."""
    return sorted_zones([("right" if side == "left" else "left", zone) for side, zone in zones])


def mirror_note(note: str) -> str:
    """The note of the horizontally flipped image (QaTa grammar; ValueError otherwise)."""
    return make_note(mirror_zones(parse_note(note)[2]))
