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
from .augment import augment_batch
from .checkpoint import save_checkpoint
from .data.cases import Case
from .data.dataset import CaseDataset
from .device import resolve_device
from .evaluate import evaluate_dataset
from .events import TrainEvent
from .host_memory import keep_freed_memory
from .model import CausalCLIPSeg
from .objective import causal_objective
from .optim import adam
from .tokenizer import NoteTokenizer
from .train_config import TrainConfig
from .train_state import Resumable, read_train_state, write_train_state


@dataclass
class _Progress:
    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_score: float = -math.inf  # validation Dice, or -training L_c without validation
    best_dice: float | None = None  # per-image validation Dice of the best epoch
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Clock:
    """Wall time since the run started and recent step times, for ETAs and the budget."""

    start: float
    step_times: list[float] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def step_time(self) -> float:
        return float(np.median(self.step_times[-20:])) if self.step_times else 0.0


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
        config: TrainConfig | None = None,
        out_dir: str | Path | None = None,
        provenance: dict[str, Any] | None = None,
    ):
        if not train_cases:
            raise ValueError("no training cases: add at least one image with its mask and note")
        config = config if config is not None else TrainConfig()
        self.config = config
        self.model = model
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.provenance = dict(provenance or {})
        self.rank, self.world = _dist()
        if self.world > 1 and config.time_budget_s:
            # each rank's clock would end the run at its own step, and the budget's learning
            # rate would differ between ranks: the next all-reduce would hang
            raise ValueError("a time budget needs one process; under DDP set the epochs instead")
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
        self.optimizer = adam(params, lr=config.lr)
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
        """Progress events until done; on the CPU, freed memory is reused across steps."""
        keep = self.config.keep_freed_memory and self.device.type == "cpu"
        with keep_freed_memory(keep):
            yield from self._run()

    def _run(self) -> Iterator[TrainEvent]:
        cfg = self.config
        steps = self.steps_per_epoch()
        clock = _Clock(time.perf_counter())
        stopped = "max_epochs"
        best_path = None
        p = self.progress
        for epoch in range(p.epoch, cfg.epochs):
            sums = np.zeros(3)  # L, L_c, L_s summed over the epoch's steps
            seen = 0
            for event in self._train_epoch(epoch, steps, clock):
                sums += (event.loss, event.loss_c, event.loss_s)
                seen += 1
                yield event
            if self.cancelled:
                stopped = "cancelled"
                break
            out_of_time = self._out_of_time(clock.start)
            event, path = self._end_epoch(epoch, steps, sums / max(seen, 1), out_of_time, clock)
            best_path = path or best_path
            yield event
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
            elapsed_s=clock.elapsed(), stopped=stopped, best_path=best_path,
        )

    def _train_epoch(self, epoch: int, steps: int, clock: _Clock) -> Iterator[TrainEvent]:
        """One epoch's optimisation steps, a 'step' event each; stops early on cancel or time."""
        cfg = self.config
        p = self.progress
        self.net.train()
        if cfg.freeze_encoders:
            _frozen_bn_eval(self.model)
        for step, batch in enumerate(self._train_loader(epoch)):
            if step >= steps or self.cancelled or self._out_of_time(clock.start):
                break
            if cfg.time_budget_s:
                self._set_budget_lr(clock.elapsed(), p.global_step)
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
            losses = [terms.objective.item(), terms.causal.item(), terms.confounding.item()]
            clock.step_times.append(time.perf_counter() - t0)
            remaining = (steps - step - 1) + steps * (cfg.epochs - epoch - 1)
            yield TrainEvent(
                "step", epoch + 1, cfg.epochs, step + 1, steps, p.global_step,
                *losses, lr=self.optimizer.param_groups[0]["lr"], best_dice=p.best_dice,
                eta_s=clock.step_time() * remaining, elapsed_s=clock.elapsed(),
            )

    def _end_epoch(self, epoch: int, steps: int, means: np.ndarray, out_of_time: bool,
                   clock: _Clock) -> tuple[TrainEvent, Path | None]:
        """Validate when due, pick the best epoch, write checkpoints and metrics."""
        cfg = self.config
        p = self.progress
        self._sync_buffers()
        lr = self.optimizer.param_groups[0]["lr"]
        if not cfg.time_budget_s:
            self.scheduler.step()
        p.epoch = epoch + 1
        due = p.epoch % max(cfg.val_every, 1) == 0 or p.epoch == cfg.epochs or out_of_time
        val = self.evaluate() if due else None
        if due or not self.val_set:
            score = val["per_image"]["dice"] if val else -means[1]
        else:
            score = -math.inf  # not validated this epoch: cannot become the best
        improved = score > p.best_score
        if improved:
            p.best_score, p.best_epoch = score, p.epoch
            p.best_dice = val["per_image"]["dice"] if val else None
        record = {
            "epoch": p.epoch, "global_step": p.global_step, "lr": lr,
            "loss": means[0], "loss_c": means[1], "loss_s": means[2],
            "val": {k: val[k] for k in ("per_image", "global")} if val else None,
            "best_dice": p.best_dice, "best_epoch": p.best_epoch,
            "elapsed_s": clock.elapsed(),
        }
        p.history.append(record)
        best_path = self._write_epoch(record, improved)
        event = TrainEvent(
            "epoch", p.epoch, cfg.epochs, steps, steps, p.global_step,
            record["loss"], record["loss_c"], record["loss_s"], lr, val=val,
            best_dice=p.best_dice, elapsed_s=record["elapsed_s"],
            eta_s=clock.step_time() * steps * (cfg.epochs - p.epoch) if clock.step_times else None,
        )
        return event, best_path

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
        """Optimiser, scheduler, progress and RNG states, without pickle (for ``--resume``)."""
        write_train_state(path, self._resumable(), asdict(self.progress), asdict(self.config))

    def load_state(self, path: str | Path) -> None:
        """Continue where `save_state` left off (the model weights come from last.safetensors)."""
        self.progress = _Progress(**read_train_state(path, self._resumable()))

    def _resumable(self) -> Resumable:
        return Resumable(self.optimizer, self.scheduler, self.device,
                         {"loader": self._loader_generator, "augment": self._augment_generator})
