"""The case generator: one radiograph, its lesion mask and a note that is true of it, from
one random stream per case."""

from __future__ import annotations

import numpy as np

from ...notes import laterality, make_note, mirror_zones
from .anatomy import draw_anatomy, draw_zone_map
from .config import ZONE_CODES, SynthCase, SynthConfig
from .confounders import confounder_on, place_lead
from .lesions import draw_zones, lesion_density, lesion_mask
from .render import draw_acquisition, draw_text, render

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def synth_case(
    rng: np.random.Generator, cfg: SynthConfig | None = None, split: str = "train"
) -> SynthCase:
    """Draw one radiograph + lesion mask + true note (split only matters for the confounder)."""
    cfg = cfg or SynthConfig()
    s = cfg.size
    zones = draw_zones(rng, cfg)
    an = draw_anatomy(rng, cfg)
    zmap = draw_zone_map(rng, an.lungs, s)

    mask = np.zeros((s, s), bool)
    for side, zone in zones:
        mask |= lesion_mask(rng, zmap == ZONE_CODES[(side, zone)], side, cfg)
    lesion_d = lesion_density(rng, cfg, mask, an)

    # confounder and nuisance artefacts (drawn identically in the clean twin). The lead
    # has its own stream, so switching the confounder on changes nothing else in the case.
    has_conf = confounder_on(rng, cfg, split, bool(zones))
    art_rng = np.random.default_rng(rng.integers(2**63))
    lead = None
    if has_conf and cfg.confounder == "lead":
        lead = place_lead(art_rng, cfg, split, zones, mask, zmap, an)
    text = draw_text(rng, cfg)
    acq = draw_acquisition(rng, cfg, zmap)
    marker = has_conf and cfg.confounder == "marker"

    image = render(an.density + lesion_d, an, cfg, acq, lead, text, marker)
    note_zones = mirror_zones(zones) if cfg.note_sides == "image" else zones
    clean = render(an.density, an, cfg, acq, lead, text, marker) if cfg.keep_clean else None
    return SynthCase(
        image=image,
        mask=mask,
        note=make_note(note_zones),
        laterality=laterality(zones),
        zones=zones,
        note_zones=note_zones,
        zone_map=zmap,
        confounder=has_conf,
        split=split,
        clean=clean,
    )


def case_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, index): a case never depends on how many precede it."""
    return np.random.default_rng([int(seed), _SPLIT_CODE.get(split, 3), int(index)])


def generate(
    n: int, seed: int | None = None, cfg: SynthConfig | None = None, split: str = "train"
) -> list[SynthCase]:
    """``n`` cases in memory (seed defaults to ``cfg.seed``)."""
    cfg = cfg or SynthConfig()
    seed = cfg.seed if seed is None else seed
    return [synth_case(case_rng(seed, split, i), cfg, split) for i in range(n)]
