"""Thin napari views over the engine: "Segment from note", "Fine-tune" and "Worklist"."""

from .finetune import FineTuneWidget
from .segment import SegmentWidget
from .worklist import WorklistWidget

__all__ = ["FineTuneWidget", "SegmentWidget", "WorklistWidget"]
