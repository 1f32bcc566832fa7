"""Do the mask and the note agree? Which lung zones the mask covers, against the zones the
note names.

Why: a text-guided model can follow the note's words and still paint the wrong lung, and a
corrected mask can drift from its note; both are easy to miss by eye. The check reads the
note (QaTa-COV19 grammar, :func:`notes.parse_note`), splits each lung field
(:mod:`lungs`) into upper / middle / lower bands, and measures each band's FILL: the share
of the band's box (band rows x the lung box's width, mask pixels on that side of the
midline) that the mask covers. A zone is

* "empty" when even the band widened by ``border_margin`` is filled less than
  ``empty_below``: a named zone that is empty is MISSING;
* "covered" when even the band narrowed by ``border_margin`` is filled at least
  ``covered_from``: an unnamed zone that is covered is EXTRA;
* "partial" otherwise, acceptable either way (a lesion spilling over a zone border, or
  a border the estimate got slightly wrong).

Sides follow the note convention ``note_sides`` (default :data:`notes.NOTE_SIDES`,
QaTa-COV19's: "left lung" is the lung on the IMAGE left); every message says which.
Defaults were tuned on the QaTa-COV19 training and validation splits (the test split only
reports, in benchmarks/zones_real.py). QaTa's annotators call a lesion "middle" well into
the lower half of the lung and "upper" only near the apex, hence the bands: upper = top
20 % of the lung height, lower = below 67 %, each border uncertain by 10 % of the height
(about twice the lung estimate's median error at apex and base).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .lungs import IMAGE_SIDES, LungFields, estimate_lung_fields
from .notes import NOTE_SIDES, SIDES, ZONES, parse_note, sorted_zones

NOT_QATA = "cannot check: note not in the QaTa grammar"


@dataclass(frozen=True)
class AgreementConfig:
    """Zone geometry and coverage thresholds (fractions; see the module docstring)."""

    zone_borders: tuple[float, float] = (0.20, 0.67)  # upper|middle, middle|lower, of lung height
    border_margin: float = 0.10  # uncertainty of a zone border, share of lung height
    empty_below: float = 0.02  # a named zone filled less than this has "nothing there"
    covered_from: float = 0.55  # an unnamed zone filled this much is "covered"
    note_sides: str = NOTE_SIDES  # "image" (QaTa-COV19) or "patient" (radiology, PA view)

    def __post_init__(self) -> None:
        a, b = self.zone_borders
        if not 0.0 < a < b < 1.0:
            raise ValueError(f"zone_borders must satisfy 0 < upper < lower < 1, got {self.zone_borders}")
        if not 0.0 <= self.border_margin < min(a, b - a, 1 - b) / 2 + 1e-9:
            raise ValueError(f"border_margin {self.border_margin} is too wide for zones {self.zone_borders}")
        if not 0.0 < self.empty_below < self.covered_from <= 1.0:
            raise ValueError("need 0 < empty_below < covered_from <= 1, got "
                             f"{self.empty_below} and {self.covered_from}")
        if self.note_sides not in ("image", "patient"):
            raise ValueError(f"note_sides must be 'image' or 'patient', got {self.note_sides!r}")


Zone = tuple[str, str]  # (side, zone) in the note's convention


@dataclass
class ZoneAgreement:
    """The verdict: ``agrees`` is False only when a check was made and found a mismatch."""

    checked: bool
    agrees: bool
    messages: list[str]
    note_sides: str
    note_zones: list[Zone] = field(default_factory=list)
    missing: list[Zone] = field(default_factory=list)  # named, nothing there
    extra: list[Zone] = field(default_factory=list)  # covered, not named
    coverage: dict[Zone, float] = field(default_factory=dict)  # fill of each zone's band
    states: dict[Zone, str] = field(default_factory=dict)  # empty | partial | covered
    lungs: LungFields | None = None

    @property
    def mask_zones(self) -> list[Zone]:
        """Zones the mask covers (not merely touches)."""
        return [z for z, s in self.states.items() if s == "covered"]

    @property
    def summary(self) -> str:
        """One line for a status bar."""
        if not self.checked:
            return self.messages[0]
        if self.agrees:
            return f"mask and note agree on the lung zones ({side_convention(self.note_sides)})"
        return "; ".join(self.messages)

    def to_dict(self) -> dict:
        """JSON-ready (zones as 'lower right' strings, in the note's convention)."""
        name = zone_key
        return {
            "checked": self.checked,
            "agrees": self.agrees,
            "messages": list(self.messages),
            "note_sides": self.note_sides,
            "note_zones": [name(z) for z in self.note_zones],
            "mask_zones": [name(z) for z in self.mask_zones],
            "missing": [name(z) for z in self.missing],
            "extra": [name(z) for z in self.extra],
            "coverage": {name(z): round(v, 4) for z, v in self.coverage.items()},
            "states": {name(z): s for z, s in self.states.items()},
            "lungs": self.lungs.to_dict() if self.lungs is not None else None,
        }


def zone_key(zone: Zone) -> str:
    return f"{zone[1]} {zone[0]}"


def side_convention(note_sides: str) -> str:
    return ("sides as the image shows them" if note_sides == "image"
            else "the patient's sides, PA view")


def zone_label(zone: Zone, note_sides: str) -> str:
    """'lower right lung (image right)' or '... (patient right, image left)'."""
    side, z = zone
    if note_sides == "image":
        return f"{z} {side} lung (image {side})"
    return f"{z} {side} lung (patient {side}, image {_image_side(side, note_sides)})"


def _image_side(note_side: str, note_sides: str) -> str:
    """The image side of a note side: the same in QaTa's convention, swapped for a PA patient."""
    if note_sides == "image":
        return note_side
    return "right" if note_side == "left" else "left"


def _band_fills(side_rows: np.ndarray, top: float, bottom: float, width_px: float,
                cfg: AgreementConfig, grow: float) -> np.ndarray:
    """Fill of the three bands of one lung, widened (grow=+1) or narrowed (-1) by the margin.
    ``side_rows`` is the cumulative mask count per row with a leading 0. Rows above the
    apex count to the upper band, rows below the base to the lower: a lesion the box
    estimate cut off still lands in a zone."""
    n = len(side_rows) - 1
    height = max(bottom - top, 1.0)
    a, b = (top + f * height for f in cfg.zone_borders)
    m = grow * cfg.border_margin * height
    bands = ((-np.inf, a + m, top, a + m), (a - m, b + m, a - m, b + m), (b - m, np.inf, b - m, bottom))
    fills = np.zeros(3)
    for z, (lo, hi, e0, e1) in enumerate(bands):
        r0, r1 = (int(round(float(np.clip(v, 0, n)))) for v in (lo, hi))
        fills[z] = (side_rows[max(r0, r1)] - side_rows[r0]) / (max(e1 - e0, 1.0) * max(width_px, 1.0))
    return fills


def zone_fills(mask: np.ndarray, lungs: LungFields, cfg: AgreementConfig = AgreementConfig()
               ) -> dict[str, np.ndarray]:
    """Per IMAGE side, the fills (3,) of the nominal, widened and narrowed bands."""
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    h, w = mask.shape
    split = int(np.clip(round(lungs.midline * w), 0, w))
    out = {}
    for side, cols in zip(IMAGE_SIDES, (slice(0, split), slice(split, w))):
        rows = np.concatenate([[0], np.cumsum(mask[:, cols].sum(1, dtype=np.int64))])
        box = lungs.box(side)
        geom = (rows, box.top * h, box.bottom * h, box.width * w)
        out[side] = np.stack([_band_fills(*geom, cfg, g) for g in (0.0, 1.0, -1.0)])
    return out


def check_agreement(mask: np.ndarray, note: str, image: np.ndarray | None = None,
                    lungs: LungFields | None = None, cfg: AgreementConfig = AgreementConfig()
                    ) -> ZoneAgreement:
    """Compare a lesion mask with its note. Give the radiograph (``image``, its lungs are
    estimated) or known ``lungs``. A note outside the QaTa grammar is not an error: the
    result says it could not be checked."""
    try:
        _, _, named = parse_note(note)
    except ValueError:
        return ZoneAgreement(False, True, [NOT_QATA], cfg.note_sides)
    if lungs is None:
        if image is None:
            raise ValueError("check_agreement needs the radiograph (image=) or its lung fields (lungs=)")
        lungs = estimate_lung_fields(image)
    fills = zone_fills(mask, lungs, cfg)
    coverage, states, missing, extra = {}, {}, [], []
    for zone in sorted_zones([(s, z) for s in SIDES for z in ZONES]):
        side, z = zone
        nominal, widened, narrowed = fills[_image_side(side, cfg.note_sides)][:, ZONES.index(z)]
        state = "empty" if widened < cfg.empty_below else "covered" if narrowed >= cfg.covered_from else "partial"
        coverage[zone], states[zone] = float(nominal), state
        if zone in named and state == "empty":
            missing.append(zone)
        elif zone not in named and state == "covered":
            extra.append(zone)
    messages = [f"the note names the {zone_label(z, cfg.note_sides)}, the mask has nothing there"
                for z in missing]
    messages += [f"the mask covers the {zone_label(z, cfg.note_sides)}, which the note does not name"
                 for z in extra]
    return ZoneAgreement(True, not messages, messages, cfg.note_sides, named, missing, extra,
                         coverage, states, lungs)


def agreement_report(image: np.ndarray, mask: np.ndarray, note: str,
                     cfg: AgreementConfig = AgreementConfig()) -> dict:
    """The JSON object `causalseg segment` writes per result (lungs estimated from ``image``)."""
    return check_agreement(mask, note, image=image, cfg=cfg).to_dict()
