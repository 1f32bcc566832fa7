"""What ``--resume`` needs beyond the model weights: optimiser, scheduler, progress and
every random generator, in a safetensors file with JSON metadata (never a pickle)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write, atomic_write_text

STATE_FORMAT = "napari-causalseg.train-state/1"


@dataclass
class Resumable:
    """The live training objects a state file is written from and restored into."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    generators: dict[str, torch.Generator]  # by name: "loader", "augment"


def write_train_state(path: Path, live: Resumable, progress: dict[str, Any],
                      train_config: dict[str, Any]) -> None:
    """Write the state atomically, plus a readable ``.json`` copy of its metadata."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and live.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(live.device)
    for name, generator in live.generators.items():
        tensors[f"rng.{name}"] = generator.get_state()
    opt = live.optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    meta = {
        "format": STATE_FORMAT,
        "param_groups": opt["param_groups"],
        "scheduler": live.scheduler.state_dict(),
        "progress": progress,
        "python_random": _jsonable_random_state(),
        "numpy_random": _jsonable_numpy_state(),
        "train_config": train_config,
    }
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)}))
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1, default=str) + "\n")


def read_train_state(path: str | Path, live: Resumable) -> dict[str, Any]:
    """Restore optimiser, scheduler and generators in place; returns the stored progress."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state to resume from: {path}")
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["state"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open API
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value.to(live.device) if name != "step" else value
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    live.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    live.scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and live.device.type == "cuda":
        torch.cuda.set_rng_state(tensors["rng.cuda"], live.device)
    for name, generator in live.generators.items():
        if f"rng.{name}" in tensors:  # states written before augmentation existed lack it
            generator.set_state(tensors[f"rng.{name}"])
    random.setstate(_restore_random_state(meta["python_random"]))
    name, keys, pos, has_gauss, cached = meta["numpy_random"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    return meta["progress"]


def _jsonable_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_random_state(state: list[Any]) -> tuple[Any, ...]:
    return (state[0], tuple(state[1]), state[2])


def _jsonable_numpy_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
