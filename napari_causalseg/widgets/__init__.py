"""Thin napari views over the engine: "Segment from note" and "Fine-tune"."""

from .finetune import FineTuneWidget
from .segment import SegmentWidget

__all__ = ["FineTuneWidget", "SegmentWidget"]
