"""The stable import path of the data readers: every public name they had when they lived
in this one module, re-exported from the modules that now hold them, so code written
against ``engine.data.readers`` keeps working.

New code imports from the homes: ``cases`` (Case, DatasetSplits, DatasetError, pixel
access), ``index`` (folder listings and index files), ``layouts`` (open_dataset,
detect_layout and the QaTa-COV19 layouts) and ``annotations`` (AnnotationStore, the writer
of the plugin's annotation folder).
"""

from __future__ import annotations

from .annotations import VAL_EVERY, AnnotationStore, safe_case_name, split_for_new_case
from .cases import (
    SPLITS,
    Case,
    DatasetError,
    DatasetSplits,
    check_case_sizes,
    image_size,
    load_case,
    load_image,
    load_mask,
)
from .index import IMAGE_SUFFIXES, MASK_PREFIX
from .layouts import LAYOUTS, detect_layout, open_dataset

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "MASK_PREFIX",
    "SPLITS",
    "VAL_EVERY",
    "AnnotationStore",
    "Case",
    "DatasetError",
    "DatasetSplits",
    "check_case_sizes",
    "detect_layout",
    "image_size",
    "load_case",
    "load_image",
    "load_mask",
    "open_dataset",
    "safe_case_name",
    "split_for_new_case",
]
