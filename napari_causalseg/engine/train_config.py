"""The training recipe as one frozen dataclass: the paper's numbers by default, checked
when built so a bad value fails at once with its name, not hours into a run."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .augment import NO_AUGMENTATION, AugmentConfig


@dataclass(frozen=True)
class TrainConfig:
    """The paper's recipe by default: Adam, cosine from 3e-5, lambda 0.05, patience 100."""

    epochs: int = 2000  # maximum; early stopping usually ends sooner
    batch_size: int = 8
    lr: float = 3e-5
    lam: float = 0.05
    patience: int = 100  # epochs without validation-Dice improvement
    freeze_encoders: bool = False  # keep the CLIP towers fixed (fine-tuning on a laptop)
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored elsewhere)
    num_workers: int = 0
    steps_per_epoch: int | None = None  # cap, for quick runs; None = the whole split
    sync_batchnorm: bool = True  # under DDP on CUDA: BN statistics over all ranks
    truncate_notes: bool = False  # opt-in: cut notes longer than the context (reported)
    augment: AugmentConfig = NO_AUGMENTATION  # note-preserving flips, pose and exposure
    val_every: int = 1  # validate every N epochs (and after the last); validation costs time
    # Train for this many seconds: the learning rate follows a cosine over the time (after a
    # short warm-up) instead of over the epochs, and the run stops, validated, when it is
    # spent. For fine-tuning under a budget; not resumable to the same numbers.
    time_budget_s: float | None = None
    save_last: bool = True  # also write last.safetensors + state each epoch (for --resume)
    # On the CPU (Linux, glibc): freed memory stays in the process while training, so the
    # step's large tensors are reused instead of page-faulted anew (host_memory.py).
    keep_freed_memory: bool = True

    def __post_init__(self) -> None:
        """Refuse values that would silently train nothing or fail deep inside the loop."""
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch size must be at least 1, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"learning rate must be a positive number, got {self.lr}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            problems.append(f"lambda must be a non-negative number, got {self.lam}")
        if self.patience < 0:
            problems.append(f"patience must be 0 or more epochs, got {self.patience}")
        if self.val_every < 1:
            problems.append(f"val_every must be at least 1, got {self.val_every}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            problems.append(f"steps per epoch must be at least 1, got {self.steps_per_epoch}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            problems.append(f"the time budget must be positive, got {self.time_budget_s} s")
        if problems:
            raise ValueError("; ".join(problems))
