"""The generator's knobs (`SynthConfig`), what it returns (`SynthCase`) and the shared
constants: split names, zone codes and which image side each lung lies on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...notes import NOTE_SIDES, SIDES, ZONES
from .text import CORNERS, GLYPHS

SPLITS = ("train", "val", "test")
#: zone_map codes: 1..3 left lung (image right) upper..lower, 4..6 right lung (image left).
ZONE_CODES = {(s, z): 1 + 3 * i + j for i, s in enumerate(SIDES) for j, z in enumerate(ZONES)}
#: +1: the patient's left lung lies at image x > centre; -1: the right lung at x < centre.
IMAGE_SIGN = {"left": 1.0, "right": -1.0}


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator; defaults mimic QaTa-COV19 (224 px, every case has a lesion)."""

    size: int = 224
    seed: int = 0
    # which zones are involved; QaTa-COV19's training captions: 81 % bilateral, a named
    # side has 1, 2 or 3 zones in 45 / 11 / 44 % of cases, lower zones the most often
    p_bilateral: float = 0.8
    p_zones_per_side: tuple[float, float, float] = (0.45, 0.11, 0.44)
    zone_weights: tuple[float, float, float] = (0.15, 0.25, 0.60)  # upper, middle, lower
    p_healthy: float = 0.0
    # lesion look
    lesion_strength: tuple[float, float] = (0.45, 0.85)  # fraction of lung air made opaque
    zone_cover: tuple[float, float] = (0.8, 1.5)  # lesion extent relative to its zone
    lesion_softness_px: tuple[float, float] = (2.5, 5.0)
    # acquisition
    pose_jitter: float = 1.0  # scales rotation / shift / zoom ranges
    zoom: float = 1.0  # mean scale of the anatomy; < 1 shows more neck, shoulders, abdomen
    noise: float = 0.018  # quantum-like noise std on the 0..1 display scale
    blur_px: tuple[float, float] = (0.4, 1.0)
    p_collimation: float = 0.35
    p_text: float = 0.35  # random burned-in letters, independent of lesions
    p_breasts: float = 0.35
    # confounder (see the package docstring)
    confounder: str | None = None  # None | "marker" | "lead"
    confounder_p: float = 1.0
    confounder_p_test: float = 0.5
    coupled_splits: tuple[str, ...] = ("train", "val")
    marker_text: str = "D"
    marker_corner: str = "top-right"  # top-left | top-right | bottom-left | bottom-right
    keep_clean: bool = False  # also render the same case without lesions (for tests/figures)
    note_sides: str = NOTE_SIDES  # "image" (QaTa-COV19's captions) or "patient"

    def __post_init__(self) -> None:
        if not 0.3 <= self.zoom <= 2.0:
            raise ValueError(f"zoom must be in [0.3, 2], got {self.zoom}")
        if self.size < 32:
            raise ValueError("size must be >= 32")
        if self.note_sides not in ("image", "patient"):
            raise ValueError(f"note_sides must be 'image' or 'patient', got {self.note_sides!r}")
        if self.confounder not in (None, "marker", "lead"):
            raise ValueError(f"unknown confounder {self.confounder!r}")
        if self.marker_corner not in CORNERS:
            raise ValueError(f"unknown marker_corner {self.marker_corner!r}")
        if not all(c in GLYPHS for c in self.marker_text.upper()):
            raise ValueError(f"marker_text uses letters outside {''.join(sorted(GLYPHS))}")


@dataclass
class SynthCase:
    """One radiograph, its lesion mask, its note, and the facts the note was written from."""

    image: np.ndarray  # uint8 (H, W)
    mask: np.ndarray  # bool (H, W), lesion
    note: str
    laterality: str  # "unilateral" | "bilateral" | "none"
    zones: list[tuple[str, str]]  # (side, zone), PATIENT sides, note order
    note_zones: list[tuple[str, str]]  # the same areas as the note names them (note_sides)
    zone_map: np.ndarray  # uint8 (H, W): 0 outside lungs, else ZONE_CODES[(side, zone)]
    confounder: bool = False  # the planted artefact is drawn
    split: str = "train"
    clean: np.ndarray | None = field(default=None, repr=False)  # lesion-free twin

    @property
    def lung(self) -> np.ndarray:
        """Both lung fields (bool)."""
        return self.zone_map > 0
