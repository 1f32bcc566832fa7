"""Dice and IoU of D_c over a set of cases, in both conventions (see metrics.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from .data.cases import Case
from .data.dataset import CaseDataset
from .metrics import MetricAccumulator
from .model import CausalCLIPSeg
from .tokenizer import NoteTokenizer


@torch.no_grad()
def evaluate_dataset(
    model: CausalCLIPSeg,
    dataset: CaseDataset,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    num_workers: int = 0,
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]:
    """Eval-mode pass; with world > 1 each rank takes every world-th case and the
    per-image counts are gathered, so the report is exact (no padded duplicates)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator()
    subset = Subset(dataset, list(range(rank, len(dataset), world)))
    for batch in DataLoader(subset, batch_size=batch_size, num_workers=num_workers):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            out = model(batch["image"].to(device), batch["tokens"].to(device), with_confounding=False)
        names = [dataset.cases[i].name for i in batch["index"].tolist()]
        acc.update(torch.sigmoid(out.causal_logits.float()), batch["mask"].to(device), names)
    if world > 1:
        states: list[Any] = [None] * world
        dist.all_gather_object(states, acc.state())
        acc = MetricAccumulator()
        for state in states:
            acc.merge(state)
    model.train(was_training)
    return acc.report()


def evaluate_cases(
    model: CausalCLIPSeg, cases: Sequence[Case], batch_size: int = 8, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    dataset = CaseDataset(cases, NoteTokenizer(model.config.text.context_length), model.config.image_size)
    return evaluate_dataset(model.to(device), dataset, batch_size=batch_size, device=device)
