"""What a training run reports as it goes: one event type for the trainer, the fine-tuning
workflow, the child process that runs it for napari, and every progress bar.

Its own module, free of torch, so code that only shows progress (the GUI side, model
sources) does not import the training machinery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrainEvent:
    """One progress report; `kind` is 'step', 'epoch' or 'done'."""

    kind: str
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    global_step: int = 0
    loss: float = math.nan  # L = L_c - lambda * L_s
    loss_c: float = math.nan
    loss_s: float = math.nan
    lr: float = math.nan
    val: dict[str, Any] | None = None  # per-image and global Dice/IoU
    best_dice: float | None = None
    eta_s: float | None = None
    elapsed_s: float = 0.0
    stopped: str | None = None  # 'early', 'cancelled', 'max_epochs', 'time_limit' on 'done'
    message: str | None = None  # what a workflow around the trainer is doing (finetune.py)
    result: Any = None  # on a workflow's 'finished' event: its result (finetune.FinetuneResult)
    best_path: Path | None = None
