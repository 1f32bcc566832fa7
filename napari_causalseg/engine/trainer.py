"""Training as an iterator of progress events, so a CLI and a GUI share one loop.

`Trainer.run()` yields a `TrainEvent` after every optimisation step and every epoch;
the consumer shows progress and may call `cancel()` (or simply stop iterating) between
steps. Checkpoints are written atomically by rank 0 only: `best.safetensors` (highest
validation Dice), `last.safetensors` and `last.state.safetensors` (optimiser,
scheduler, epoch and RNG states for `resume`), plus one JSON line per epoch in
`metrics.jsonl`. Under torchrun the same loop runs with DistributedDataParallel.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .. import __version__
from .atomic import atomic_write, atomic_write_text
from .augment import NO_AUGMENTATION, AugmentConfig, augment_batch
from .checkpoint import save_checkpoint
from .data.dataset import CaseDataset
from .data.readers import Case
from .device import resolve_device
from .evaluate import evaluate_dataset
from .model import CausalCLIPSeg
from .objective import causal_objective
from .tokenizer import NoteTokenizer


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


@dataclass
class _Progress:
    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_score: float = -math.inf  # validation Dice, or -training L_c without validation
    best_dice: float | None = None  # per-image validation Dice of the best epoch
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may use the global RNG
    torch.manual_seed(seed)


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def freeze_clip_towers(model: CausalCLIPSeg) -> None:
    """Freeze the pretrained CLIP parts; the new residual branch stays trainable."""
    for name, p in model.named_parameters():
        if name.startswith("text.") or (
            name.startswith("vision.backbone.") and ".attnpool.connect." not in name
        ):
            p.requires_grad_(False)


def _frozen_bn_eval(model: CausalCLIPSeg) -> None:
    """Frozen towers keep their BatchNorm statistics: small fine-tuning batches would
    otherwise drag the pretrained running means around."""
    for module in model.vision.backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()


class Trainer:
    def __init__(
        self,
        model: CausalCLIPSeg,
        train_cases: Sequence[Case],
        val_cases: Sequence[Case],
        config: TrainConfig = TrainConfig(),
        out_dir: str | Path | None = None,
        provenance: dict[str, Any] | None = None,
    ):
        if not train_cases:
            raise ValueError("no training cases: add at least one image with its mask and note")
        self.config = config
        self.model = model
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.provenance = dict(provenance or {})
        self.rank, self.world = _dist()
        self.device = resolve_device(config.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        tokenizer = NoteTokenizer(model.config.text.context_length, truncate=config.truncate_notes)
        size = model.config.image_size
        self.train_set = CaseDataset(train_cases, tokenizer, size)
        self.val_set = CaseDataset(val_cases, tokenizer, size) if val_cases else None
        truncated = {**self.train_set.truncated, **(self.val_set.truncated if self.val_set else {})}
        if truncated:
            dropped = sorted(set(truncated.values()))
            self.provenance["truncated_notes"] = {"count": len(truncated), "dropped": dropped[:10]}
        self._cancel = threading.Event()
        self.progress = _Progress()

        seed_everything(config.seed)
        if config.freeze_encoders:
            freeze_clip_towers(model)
        model.to(self.device)
        self.net: torch.nn.Module = model
        if self.world > 1:
            if config.sync_batchnorm and self.device.type == "cuda":
                self.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(config.epochs, 1)
        )
        self._loader_generator = torch.Generator().manual_seed(config.seed)
        self._augment_generator = torch.Generator().manual_seed(config.seed + 1)

    # control -----------------------------------------------------------------
    def cancel(self) -> None:
        """Stop after the current step; the best/last checkpoints stay intact."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # data --------------------------------------------------------------------
    def _train_loader(self, epoch: int) -> DataLoader:
        sampler = None
        if self.world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(
                self.train_set, self.world, self.rank, shuffle=True, seed=self.config.seed
            )
            sampler.set_epoch(epoch)
        return DataLoader(
            self.train_set,
            batch_size=self.config.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=self.config.num_workers,
            generator=self._loader_generator,
            drop_last=len(self.train_set) > self.config.batch_size * self.world,
        )

    def steps_per_epoch(self) -> int:
        per_rank = math.ceil(len(self.train_set) / self.world)
        full = len(self.train_set) > self.config.batch_size * self.world
        steps = per_rank // self.config.batch_size if full else math.ceil(per_rank / self.config.batch_size)
        steps = max(steps, 1)
        if self.config.steps_per_epoch:
            steps = min(steps, self.config.steps_per_epoch)
        return steps

    # evaluation --------------------------------------------------------------
    def evaluate(self, dataset: CaseDataset | None = None) -> dict[str, Any] | None:
        """Dice/IoU of D_c on `dataset` (default: validation), sharded over ranks."""
        dataset = dataset or self.val_set
        if dataset is None or len(dataset) == 0:
            return None
        return evaluate_dataset(
            self.model, dataset, self.config.batch_size, self.device, bf16=self.config.bf16,
            num_workers=self.config.num_workers, rank=self.rank, world=self.world,
        )

    def _autocast(self):
        enabled = self.config.bf16 and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # the loop ----------------------------------------------------------------
    def run(self) -> Iterator[TrainEvent]:
        cfg = self.config
        steps = self.steps_per_epoch()
        start = time.perf_counter()
        step_times: list[float] = []
        stopped = "max_epochs"
        best_path = None
        p = self.progress
        for epoch in range(p.epoch, cfg.epochs):
            self.net.train()
            if cfg.freeze_encoders:
                _frozen_bn_eval(self.model)
            sums = np.zeros(3)
            seen = 0
            for step, batch in enumerate(self._train_loader(epoch)):
                if step >= steps:
                    break
                if self.cancelled or self._out_of_time(start):
                    break
                if cfg.time_budget_s:
                    self._set_budget_lr(time.perf_counter() - start, p.global_step)
                t0 = time.perf_counter()
                images, masks, tokens = augment_batch(
                    batch["image"].to(self.device), batch["mask"].to(self.device),
                    batch["tokens"].to(self.device), batch["mirrored_tokens"].to(self.device),
                    batch["can_flip"], cfg.augment, self._augment_generator,
                )
                with self._autocast():
                    terms = causal_objective(self.net, images, tokens, masks, cfg.lam)
                self.optimizer.zero_grad(set_to_none=True)
                terms.backward.backward()
                self.optimizer.step()
                p.global_step += 1
                losses = np.array([terms.objective.item(), terms.causal.item(), terms.confounding.item()])
                sums += losses
                seen += 1
                step_times.append(time.perf_counter() - t0)
                remaining = (steps - step - 1) + steps * (cfg.epochs - epoch - 1)
                yield TrainEvent(
                    "step", epoch + 1, cfg.epochs, step + 1, steps, p.global_step,
                    *losses.tolist(), lr=self.optimizer.param_groups[0]["lr"],
                    best_dice=p.best_dice,
                    eta_s=float(np.median(step_times[-20:])) * remaining,
                    elapsed_s=time.perf_counter() - start,
                )
            if self.cancelled:
                stopped = "cancelled"
                break
            out_of_time = self._out_of_time(start)
            self._sync_buffers()
            lr = self.optimizer.param_groups[0]["lr"]
            if not cfg.time_budget_s:
                self.scheduler.step()
            p.epoch = epoch + 1
            due = p.epoch % max(cfg.val_every, 1) == 0 or p.epoch == cfg.epochs or out_of_time
            val = self.evaluate() if due else None
            if due or not self.val_set:
                score = val["per_image"]["dice"] if val else -sums[1] / max(seen, 1)
            else:
                score = -math.inf  # not validated this epoch: cannot become the best
            improved = score > p.best_score
            if improved:
                p.best_score, p.best_epoch = score, p.epoch
                p.best_dice = val["per_image"]["dice"] if val else None
            record = {
                "epoch": p.epoch, "global_step": p.global_step, "lr": lr,
                "loss": sums[0] / max(seen, 1), "loss_c": sums[1] / max(seen, 1),
                "loss_s": sums[2] / max(seen, 1),
                "val": {k: val[k] for k in ("per_image", "global")} if val else None,
                "best_dice": p.best_dice, "best_epoch": p.best_epoch,
                "elapsed_s": time.perf_counter() - start,
            }
            p.history.append(record)
            best_path = self._write_epoch(record, improved) or best_path
            yield TrainEvent(
                "epoch", p.epoch, cfg.epochs, steps, steps, p.global_step,
                record["loss"], record["loss_c"], record["loss_s"], lr, val=val,
                best_dice=p.best_dice, elapsed_s=record["elapsed_s"],
                eta_s=float(np.median(step_times[-20:])) * steps * (cfg.epochs - p.epoch) if step_times else None,
            )
            if out_of_time:
                stopped = "time_limit"
                break
            if p.epoch - max(p.best_epoch, 0) >= cfg.patience:  # epochs since the best (or the start)
                stopped = "early"
                break
        if self.out_dir is not None and self.rank == 0:
            best_path = self.out_dir / "best.safetensors"
            best_path = best_path if best_path.is_file() else None
        yield TrainEvent(
            "done", p.epoch, cfg.epochs, global_step=p.global_step,
            best_dice=p.best_dice,
            elapsed_s=time.perf_counter() - start, stopped=stopped, best_path=best_path,
        )

    def _out_of_time(self, start: float) -> bool:
        limit = self.config.time_budget_s
        return limit is not None and time.perf_counter() - start > limit

    def _set_budget_lr(self, elapsed: float, step: int, warmup_steps: int = 10) -> None:
        """Cosine from lr to 0 over the time budget, after a linear warm-up of a few steps."""
        frac = min(elapsed / self.config.time_budget_s, 1.0)
        lr = self.config.lr * 0.5 * (1.0 + math.cos(math.pi * frac)) * min(1.0, (step + 1) / warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _sync_buffers(self) -> None:
        """BatchNorm running statistics are per rank under DDP (each saw its own last
        batches); take rank 0's so evaluation and checkpoints agree everywhere."""
        if self.world > 1:
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)

    # files -------------------------------------------------------------------
    def _provenance(self) -> dict[str, Any]:
        p = self.progress
        return {
            **self.provenance,
            "package_version": __version__,
            "train_config": asdict(self.config),
            "epochs_completed": p.epoch,
            "global_step": p.global_step,
            "best_val_dice_per_image": p.best_dice,
            "selection": "val_dice_per_image" if self.val_set else "train_loss_c",
            "best_epoch": p.best_epoch,
            "train_cases": len(self.train_set),
            "val_cases": len(self.val_set) if self.val_set else 0,
            "world_size": self.world,
        }

    def _write_epoch(self, record: dict[str, Any], improved: bool) -> Path | None:
        if self.out_dir is None or self.rank != 0:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        provenance = self._provenance()
        best = None
        if improved:
            best = save_checkpoint(self.out_dir / "best.safetensors", self.model, provenance).path
        if self.config.save_last:
            save_checkpoint(self.out_dir / "last.safetensors", self.model, provenance)
            self.save_state(self.out_dir / "last.state.safetensors")
        return best

    def save_state(self, path: Path) -> None:
        """Optimiser, scheduler, progress and RNG states, without pickle."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        tensors["rng.loader"] = self._loader_generator.get_state()
        tensors["rng.augment"] = self._augment_generator.get_state()
        opt = self.optimizer.state_dict()
        for idx, state in opt["state"].items():
            for name, value in state.items():
                tensors[f"optimizer.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        meta = {
            "format": "napari-causalseg.train-state/1",
            "param_groups": opt["param_groups"],
            "scheduler": self.scheduler.state_dict(),
            "progress": asdict(self.progress),
            "python_random": _jsonable_random_state(),
            "numpy_random": _jsonable_numpy_state(),
            "train_config": asdict(self.config),
        }
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)}))
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1, default=str) + "\n")

    def load_state(self, path: str | Path) -> None:
        """Continue where `save_state` left off (the model weights come from last.safetensors)."""
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
                opt_state.setdefault(int(idx), {})[name] = value.to(self.device) if name != "step" else value
        groups = meta["param_groups"]
        for group in groups:
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        self.scheduler.load_state_dict(meta["scheduler"])
        self.progress = _Progress(**meta["progress"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self._loader_generator.set_state(tensors["rng.loader"])
        if "rng.augment" in tensors:  # states written before augmentation existed lack it
            self._augment_generator.set_state(tensors["rng.augment"])
        random.setstate(_restore_random_state(meta["python_random"]))
        name, keys, pos, has_gauss, cached = meta["numpy_random"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002


def _jsonable_random_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_random_state(state: list[Any]) -> tuple[Any, ...]:
    return (state[0], tuple(state[1]), state[2])


def _jsonable_numpy_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]
