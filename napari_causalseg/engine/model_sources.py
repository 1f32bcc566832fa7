"""Where a Segmenter's model comes from: the demo, OpenAI CLIP RN101, or a checkpoint.

One description (`ModelSource`) is what front ends pass around; `open_segmenter`
turns it into a ready Segmenter, training the demo model on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .events import TrainEvent
from .segmenter import Segmenter, SegmenterConfig

DEMO, OPENAI, CHECKPOINT = "demo", "openai", "checkpoint"
SOURCE_LABELS = {
    DEMO: "Demo model (tiny, synthetic data)",
    OPENAI: "CLIP RN101, OpenAI weights (untrained head)",
    CHECKPOINT: "Checkpoint file",
}


@dataclass(frozen=True)
class ModelSource:
    kind: str = DEMO
    path: Path | None = None  # for CHECKPOINT

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_LABELS:
            raise ValueError(f"unknown model source {self.kind!r}; use one of {sorted(SOURCE_LABELS)}")
        if self.kind == CHECKPOINT and (self.path is None or not str(self.path).strip()):
            raise ValueError("choose a checkpoint file (.safetensors) for the 'Checkpoint file' model")

    @property
    def label(self) -> str:
        return f"{SOURCE_LABELS[self.kind]}: {self.path}" if self.kind == CHECKPOINT else SOURCE_LABELS[self.kind]


def source_checkpoint(
    source: ModelSource,
    progress: Callable[[TrainEvent], None] | bool = False,
    train_in_child: bool = False,
) -> Path | None:
    """The checkpoint file behind `source`: the demo model's (trained on first use), the
    chosen file, or None for OpenAI CLIP (built, not loaded). The one place that answers
    "demo or checkpoint?" for the CLI, the widgets and fine-tuning.
    `train_in_child`: the demo's first-use training runs in a child process (GUIs);
    `progress` then gets each event as a dict."""
    if source.kind == OPENAI:
        return None
    if source.kind == CHECKPOINT:
        return Path(source.path)
    if train_in_child:
        from .finetune_process import demo_checkpoint_in_child

        return demo_checkpoint_in_child(progress if callable(progress) else None)
    from .demo import demo_checkpoint

    return demo_checkpoint(progress=progress)


def open_segmenter(
    source: ModelSource,
    config: SegmenterConfig | None = None,
    progress: Callable[[TrainEvent], None] | bool = False,
    train_in_child: bool = False,
) -> tuple[Segmenter, Path | None]:
    """The Segmenter for `source`, and the checkpoint it was loaded from (if any)."""
    config = config or SegmenterConfig()
    path = source_checkpoint(source, progress, train_in_child)
    if path is None:
        return Segmenter.from_config("rn101", pretrained="openai", config=config), None
    return Segmenter.from_checkpoint(path, config), path
