"""napari sample data: a synthetic chest radiograph with the note that describes it.

The note travels in the layer metadata ("note") and "Segment from note" fills it in.
The reference lesion mask comes as a second, hidden layer so the result can be compared.
"""

from __future__ import annotations

from typing import Any

SAMPLE_SEED, SAMPLE_INDEX = 2024, 6  # a bilateral, two-area case


def synthetic_case():
    from .engine.data.synth import SynthConfig, case_rng, synth_case

    return synth_case(case_rng(SAMPLE_SEED, "test", SAMPLE_INDEX), SynthConfig(), split="test")


def make_sample_data() -> list[tuple[Any, dict[str, Any], str]]:
    case = synthetic_case()
    source = ("synthetic radiograph from napari-causalseg's generator "
              f"(seed {SAMPLE_SEED}, case {SAMPLE_INDEX}); not a real patient")
    return [
        (case.image, {"name": "synthetic chest X-ray",
                      "metadata": {"note": case.note, "source": source}}, "image"),
        (case.mask.astype("uint8"), {"name": "synthetic chest X-ray reference lesion",
                                     "visible": False, "opacity": 0.4,
                                     "metadata": {"note": case.note, "source": source}}, "labels"),
    ]
