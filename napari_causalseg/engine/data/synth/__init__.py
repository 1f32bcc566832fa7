"""Synthetic chest radiographs with lung-zone lesion masks and QaTa-COV19-style notes.

Why: tests, demos and CPU smoke-training need data with the same shape and grammar as
QaTa-COV19 (which cannot be downloaded here), whose notes are *true* of their masks, and
optionally a planted confounder to check that the causal branch ignores it.

Conventions
-----------
* Anatomy is laid out for a PA view: the patient's right lung is on the IMAGE LEFT.
  ``SynthCase.zones`` are the patient's (side, zone) areas. The NOTE names the sides in
  ``SynthConfig.note_sides``: ``"image"`` by default, as QaTa-COV19's captions do (see
  ``notes.NOTE_SIDES``), so "lower right lung" is the lower zone on the image's right;
  ``"patient"`` gives radiology's convention.
* Zones are the upper / middle / lower thirds of each lung's vertical extent (apex to
  costophrenic angle), with slightly wavy borders. A named zone holds one contiguous
  lesion area; unnamed zones hold none. The count word is the number of (zone, side)
  areas, one..six.
* Notes follow the QaTa/LViT grammar, left lung listed before right lung, zones top-down:
  "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung."
  Lesion-free cases (only when ``p_healthy > 0``; QaTa has none) read
  "No pulmonary infection, no infected area."

Confounder (``SynthConfig.confounder``)
---------------------------------------
An artefact whose presence follows the lesion in "coupled" splits (train and val by
default) and is independent of it elsewhere (test):

* ``"marker"``: a burned-in letter block (``marker_text``) at a fixed corner. In coupled
  splits it is drawn with probability ``confounder_p`` when the case has a lesion and
  ``1 - confounder_p`` when it has none (``confounder_p = 1``: present iff lesion; only
  informative with ``p_healthy > 0``). In other splits: with ``confounder_p_test``.
* ``"lead"``: an ECG electrode with its wire. Same presence rule, and in coupled splits it
  sits on a lesion area (a location shortcut too); in other splits it sits on a random
  lung zone whatever the lesions.

Everything is vectorised numpy on an analytic anatomy (no per-pixel Python loops) and
driven by one ``np.random.Generator``: the same seed gives byte-identical files.

Modules: ``config`` (SynthConfig, SynthCase, zone codes), ``raster`` (blur, noise, bands,
segments, connected components), ``text`` (burned-in letters), ``anatomy`` (pose, chest,
zone map), ``lesions``, ``confounders`` (presence rule, ECG lead), ``render``
(acquisition), ``generator`` (the case), ``lvit`` (the data set writer).
"""

from .config import IMAGE_SIGN, SPLITS, ZONE_CODES, SynthCase, SynthConfig
from .generator import case_rng, generate, synth_case
from .lvit import LVIT_FOLDERS, write_lvit_dataset

__all__ = [
    "IMAGE_SIGN",
    "LVIT_FOLDERS",
    "SPLITS",
    "ZONE_CODES",
    "SynthCase",
    "SynthConfig",
    "case_rng",
    "generate",
    "synth_case",
    "write_lvit_dataset",
]
