"""Where a model comes from: built fresh from a preset (with CLIP weights or without), or
loaded trained from a checkpoint. Every front end (CLI, widgets, demo, benchmarks) goes
through these two functions, so a preset, a weights source or a checkpoint means the same
thing everywhere."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .checkpoint import load_checkpoint
from .config import ModelConfig, get_config
from .model import CausalCLIPSeg
from .weights import load_clip_weights

__all__ = ["build_model", "load_checkpoint"]


def build_model(config: str | ModelConfig, pretrained: str | Path | None = None, *,
                context_length: int | None = None) -> tuple[CausalCLIPSeg, str | None]:
    """A fresh model from a preset name ("tiny", "rn101") or a configuration.

    `pretrained`: "openai", a local CLIP weights file, or None/"none" (random CLIP towers);
    the causal head and decoders always start from random initialisation, as in the paper.
    Returns the model (train mode) and the CLIP weights' provenance for checkpoint metadata.
    """
    cfg = get_config(config) if isinstance(config, str) else config
    if context_length:
        cfg = replace(cfg, text=replace(cfg.text, context_length=context_length))
    model = CausalCLIPSeg(cfg)
    return model, load_clip_weights(model, pretrained)
