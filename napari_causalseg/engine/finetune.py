"""Fine-tuning on a user's corrected cases: one workflow for the GUI, the CLI and the demo.

`Finetune(data, config).run()` is an iterator of the trainer's progress events: it picks
the start model (default: the shipped demo model), scores it on the validation cases,
plans the run from the number of cases and a time budget, trains with the paper's
objective (L_c - lambda L_s, both decoders), scores the best epoch, and promotes it
atomically as a new checkpoint beside the earlier ones. The last event (kind
'finished') carries a `FinetuneResult`; a cancelled run writes no model.

Honest validation: cases keep the split they were given when added (data/annotations.py), and
the verdict compares the same validation cases before and after, image by image. With
fewer than `MIN_VALIDATION_CASES` there is nothing to judge and the result says so.
"""

from __future__ import annotations

import datetime as _dt
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .augment import NO_AUGMENTATION, AugmentConfig
from .checkpoint import load_checkpoint, save_checkpoint
from .data.annotations import AnnotationStore
from .data.cases import Case, DatasetSplits
from .data.layouts import open_dataset
from .events import TrainEvent
from .train_config import TrainConfig
from .trainer import Trainer

#: Below this many validation cases a before/after difference is noise: one image's Dice
#: spreads by ~0.25 on QaTa-COV19, so 5 paired cases give a standard error near 0.05.
MIN_VALIDATION_CASES = 5
#: Share of the time budget that validation may take (it runs every `val_every` epochs).
VALIDATION_SHARE = 0.1
#: Upper bound on epochs when the time budget decides how long a run trains.
MAX_EPOCHS = 2000


@dataclass(frozen=True)
class FinetuneConfig:
    """What a user chooses; None means "chosen from the cases and the budget" (see plan)."""

    checkpoint: Path | None = None  # start model; None: the shipped default (demo model)
    out_dir: Path | None = None  # models go here; None: <annotation folder>/models
    minutes: float = 5.0  # training time budget
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    freeze_encoders: bool | None = None
    lam: float = 0.05
    augment: bool = True
    device: str = "auto"
    seed: int = 0
    name: str | None = None  # of the new checkpoint (default: finetuned-<time>)

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise ValueError(f"the time budget must be positive, got {self.minutes} minutes")
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr}")


@dataclass(frozen=True)
class FinetunePlan:
    """The hyperparameters a run uses, with the reason for each; stored in provenance."""

    epochs: int
    batch_size: int
    lr: float
    freeze_encoders: bool
    augment: bool
    val_every: int
    step_seconds: float  # measured before training
    budget_seconds: float | None  # None: no time limit (a fixed recipe)
    reasons: tuple[str, ...] = ()

    def describe(self) -> str:
        length = (f"{self.budget_seconds / 60:g} min" if self.budget_seconds is not None
                  else f"{self.epochs} epochs")
        return (f"{length}, batch {self.batch_size}, lr {self.lr:g}, "
                f"{'CLIP towers frozen' if self.freeze_encoders else 'all weights trained'}, "
                f"augmentation {'on' if self.augment else 'off'}, validation every "
                f"{self.val_every} epoch(s); ~{self.step_seconds:.2f} s per step")


@dataclass
class FinetuneResult:
    checkpoint: Path | None  # the promoted model; None when cancelled
    start: Path | None  # what it started from
    plan: FinetunePlan | None
    before: dict[str, Any] | None  # validation report of the start model
    after: dict[str, Any] | None  # validation report of the promoted model
    verdict: str  # 'improved', 'worse', 'no clear change', 'too few validation cases', 'no validation cases', 'cancelled'
    summary: str  # one line for a status bar or a terminal
    stopped: str | None = None
    train_cases: list[str] = field(default_factory=list)
    val_cases: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "start": str(self.start) if self.start else None,
                "plan": asdict(self.plan) if self.plan else None,
                "before": _slim(self.before), "after": _slim(self.after), "verdict": self.verdict,
                "summary": self.summary, "stopped": self.stopped,
                "train_cases": len(self.train_cases), "val_cases": len(self.val_cases)}


def judge(before: dict[str, Any] | None, after: dict[str, Any] | None) -> tuple[str, str]:
    """(verdict, sentence) from paired per-image Dice on the same validation cases: a change
    counts only where it exceeds twice its standard error over at least
    MIN_VALIDATION_CASES cases."""
    if not before or not after or not before["cases"]:
        return "no validation cases", "no validation cases: nothing measured the change"
    b = {c["name"]: c["dice"] for c in before["cases"]}
    diffs = np.array([c["dice"] - b[c["name"]] for c in after["cases"] if c["name"] in b])
    n = len(diffs)
    d0, d1 = before["per_image"]["dice"], after["per_image"]["dice"]
    scores = (f"validation Dice {d0:.3f} -> {d1:.3f} per image, "
              f"{before['global']['dice']:.3f} -> {after['global']['dice']:.3f} global, on {n} case(s)")
    if n < MIN_VALIDATION_CASES:
        return ("too few validation cases",
                (f"{scores}: too few to judge (at least {MIN_VALIDATION_CASES} needed; every "
                "fifth case you add is held out for validation)"))
    se = float(diffs.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    mean = float(diffs.mean())
    if mean > 2 * se:
        return "improved", f"{scores}: improved ({mean:+.3f} +/- {se:.3f})"
    if mean < -2 * se:
        return "worse", f"{scores}: worse ({mean:+.3f} +/- {se:.3f})"
    return "no clear change", f"{scores}: no clear change ({mean:+.3f} +/- {se:.3f})"


def plan_finetune(
    n_train: int, n_val: int, config: FinetuneConfig, clip_initialised: bool, step_seconds: float,
    eval_seconds_per_case: float,
) -> FinetunePlan:
    """Hyperparameters for `n_train` cases within `config.minutes` (explicit choices win).

    Few cases and a laptop: a CLIP-initialised model keeps its towers frozen below 500
    cases (the paper's 3e-5 for the head is far too slow for minutes) and trains the head
    at 1e-4; a model without CLIP weights (the demo) trains everything at 1e-3. The epochs
    fill the budget at the measured step time, validation included."""
    reasons = []
    batch = config.batch_size or max(1, min(8, n_train))
    freeze = config.freeze_encoders
    if freeze is None:
        freeze = clip_initialised and n_train < 500
        reasons.append("CLIP towers frozen: fewer than 500 cases" if freeze else
                       "all weights trained: " + ("500+ cases" if clip_initialised else
                                                  "the model has no CLIP weights to keep"))
    lr = config.lr
    if lr is None:
        lr = 1e-4 if clip_initialised else 1e-3
        reasons.append(f"lr {lr:g}: " + ("CLIP-initialised model" if clip_initialised
                                          else "model trained from scratch on synthetic data"))
    steps = n_train // batch if n_train > batch else 1  # the trainer drops a last partial batch
    epoch_s = steps * step_seconds
    val_s = n_val * eval_seconds_per_case
    if config.epochs is not None:  # a fixed number of epochs: no time limit
        epochs, budget, expected = config.epochs, None, config.epochs
        reasons.append(f"{epochs} epochs as asked (no time limit)")
    else:  # the budget governs: cosine over the time, stop when it is spent
        budget = config.minutes * 60.0
        expected = max(1, int(budget * (1 - VALIDATION_SHARE) / max(epoch_s, 1e-6)))
        epochs = MAX_EPOCHS
        reasons.append(f"{config.minutes:g} min of training (~{expected} epochs of {steps} step(s) "
                       "at the measured speed), learning rate on a cosine over the time")
    # validation every k epochs costs at most VALIDATION_SHARE of the time
    total = budget if budget is not None else expected * max(epoch_s, 1e-6) / (1 - VALIDATION_SHARE)
    runs_of_val = max(1.0, total * VALIDATION_SHARE / max(val_s, 1e-6))
    val_every = max(1, math.ceil(expected / runs_of_val)) if n_val else 1
    return FinetunePlan(epochs, batch, lr, bool(freeze), config.augment, val_every,
                        step_seconds, budget, tuple(reasons))


def measure_step_seconds(model: Any, cases: Sequence[Case], batch_size: int, lam: float,
                         device: torch.device, repeats: int = 2) -> float:
    """Seconds per training step (forward and backward of one batch), measured on the
    model itself without changing it: no optimizer step, BatchNorm statistics restored."""
    from .data.dataset import CaseDataset
    from .objective import causal_objective
    from .tokenizer import NoteTokenizer

    dataset = CaseDataset(list(cases)[:batch_size], NoteTokenizer(model.config.text.context_length,
                                                                   truncate=True), model.config.image_size)
    items = [dataset[i] for i in range(len(dataset))]
    images, masks, tokens = (torch.stack([it[k] for it in items]).to(device)
                             for k in ("image", "mask", "tokens"))
    model.to(device)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()
    times = []
    for _ in range(repeats + 1):  # the first one warms up
        t0 = time.perf_counter()
        causal_objective(model, images, tokens, masks, lam).backward.backward()
        times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    model.train(was_training)
    return float(np.median(times[1:]))


def _finished(result: FinetuneResult) -> TrainEvent:
    return TrainEvent("finished", 0, 0, message=result.summary, stopped=result.stopped, result=result)


class Finetune:
    """One fine-tuning run over a data folder (any layout the readers know)."""

    def __init__(self, data: str | Path | DatasetSplits, config: FinetuneConfig = FinetuneConfig(),
                 model: Any | None = None, plan: FinetunePlan | None = None):
        """`model`: start from this CausalCLIPSeg instead of a checkpoint (the demo recipe
        trains a fresh one); `plan`: use these hyperparameters as they are."""
        self.config = config
        if isinstance(data, DatasetSplits):
            self.splits = data
        else:
            root = Path(data)
            if (root / "cases").is_dir():  # an annotation folder: fix every case's split now
                AnnotationStore(root, create=False).assign_splits()
            self.splits = open_dataset(root)
        if not self.splits.train:
            found = "; ".join(self.splits.warnings[:3])
            raise ValueError(f"{self.splits.root} has no training cases"
                             + (f" ({found})" if found else "") + ": add corrected cases first")
        self._model = model
        self._plan = plan
        self.trainer: Trainer | None = None
        self._cancelled = False

    @property
    def out_dir(self) -> Path:
        if self.config.out_dir is not None:
            return Path(self.config.out_dir)
        if self.splits.layout == "annotations":
            return self.splits.root / "models"
        raise ValueError(f"say where the fine-tuned model goes (out_dir): {self.splits.root} "
                         "is a data set, not an annotation folder")

    def cancel(self) -> None:
        """Stop between steps; no model is written and the start model stays as it was."""
        self._cancelled = True
        if self.trainer is not None:
            self.trainer.cancel()

    def _start_model(self, progress) -> tuple[Any, Path | None, dict[str, Any]]:
        if self._model is not None:
            return self._model, None, {}
        from .model_sources import CHECKPOINT, DEMO, ModelSource, source_checkpoint

        start = self.config.checkpoint
        path = source_checkpoint(ModelSource(DEMO) if start is None else ModelSource(CHECKPOINT, start),
                                 progress=progress)
        model, info = load_checkpoint(path)
        return model, Path(path), info.provenance

    def run(self) -> Iterator[TrainEvent]:
        from .evaluate import evaluate_cases

        cfg, splits = self.config, self.splits
        out_dir = self.out_dir
        train, val = list(splits.train), list(splits.val)
        yield TrainEvent("prepare", 0, 0, message="loading the start model")
        events: list[TrainEvent] = []
        model, start, start_provenance = self._start_model(events.append)
        yield from events
        device = self._device()
        t_eval = time.perf_counter()
        before = evaluate_cases(model, val, device=device) if val else None
        per_case_eval = (time.perf_counter() - t_eval) / max(len(val), 1)
        if before is not None:
            yield TrainEvent("baseline", 0, 0, val=before,
                             message=f"start model: validation Dice {before['per_image']['dice']:.3f}")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = cfg.name or f"finetuned-{stamp}"
        run_dir = out_dir / f".run-{name}"
        clip_init = _has_clip_weights(start_provenance)
        plan = self._plan
        if plan is None:
            batch = cfg.batch_size or max(1, min(8, len(train)))
            step_s = measure_step_seconds(model, train, batch, cfg.lam, device)
            plan = plan_finetune(len(train), len(val), cfg, clip_init, step_s, per_case_eval)
        trainer = Trainer(model, train, val, self._train_config(plan), out_dir=run_dir)
        trainer.provenance = {
            "finetuned_from": str(start) if start else None, "init_provenance": start_provenance,
            "finetune_plan": asdict(plan),
            "data": {"root": str(splits.root), "layout": splits.layout, **splits.sizes()},
            "train_case_names": [c.name for c in train], "val_case_names": [c.name for c in val],
        }
        self.trainer = trainer
        if self._cancelled:
            trainer.cancel()
        yield TrainEvent("plan", 0, plan.epochs, message=plan.describe())
        try:
            done = None
            for event in trainer.run():
                done = event
                yield event
            if done is None or done.stopped == "cancelled" or done.best_path is None:
                result = FinetuneResult(None, start, plan, before, None, "cancelled",
                                        "cancelled: no model written, the previous one is kept",
                                        "cancelled", [c.name for c in train], [c.name for c in val])
                yield _finished(result)
                return
            best, info = load_checkpoint(done.best_path)
            after = evaluate_cases(best, val, device=device) if val else None
            verdict, sentence = judge(before, after)
            target = out_dir / f"{name}.safetensors"
            provenance = {**info.provenance, "finetune": {
                "verdict": verdict, "summary": sentence,
                "before": _slim(before), "after": _slim(after), "stopped": done.stopped}}
            save_checkpoint(target, best.cpu(), provenance)
            metrics = run_dir / "metrics.jsonl"
            if metrics.is_file():
                from .atomic import atomic_write

                atomic_write(out_dir / f"{name}.metrics.jsonl",
                             lambda tmp: shutil.copyfile(metrics, tmp))
            result = FinetuneResult(target, start, plan, before, after, verdict,
                                    f"saved {target.name}: {sentence}", done.stopped,
                                    [c.name for c in train], [c.name for c in val])
            yield _finished(result)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    def _device(self) -> torch.device:
        from .device import resolve_device

        return resolve_device(self.config.device)

    def _train_config(self, plan: FinetunePlan) -> TrainConfig:
        cfg = self.config
        return TrainConfig(
            epochs=plan.epochs, batch_size=plan.batch_size, lr=plan.lr, lam=cfg.lam,
            patience=plan.epochs, freeze_encoders=plan.freeze_encoders, seed=cfg.seed,
            device=cfg.device, augment=AugmentConfig() if plan.augment else NO_AUGMENTATION,
            val_every=plan.val_every, time_budget_s=plan.budget_seconds, save_last=False,
        )


def _has_clip_weights(provenance: dict[str, Any] | None) -> bool:
    """Whether a checkpoint's CLIP towers started from CLIP weights (not random), following
    the chain of checkpoints it was fine-tuned from."""
    while isinstance(provenance, dict):
        if provenance.get("clip_weights"):
            return True
        provenance = provenance.get("init_provenance")
    return False


def _slim(report: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if report is None else {k: report[k] for k in ("per_image", "global")}


def finetune(data: str | Path, config: FinetuneConfig = FinetuneConfig()) -> Iterator[TrainEvent]:
    """`Finetune(data, config).run()`."""
    return Finetune(data, config).run()


def result_of(events: Sequence[TrainEvent] | Iterator[TrainEvent]) -> FinetuneResult:
    """Run the events to the end and return the FinetuneResult of the last one."""
    last = None
    for event in events:
        last = event
    if last is None or last.kind != "finished":
        raise RuntimeError("fine-tuning ended without a result")
    return last.result  # type: ignore[attr-defined]


__all__ = ["FinetuneConfig", "FinetunePlan", "FinetuneResult", "Finetune", "finetune", "judge",
           "plan_finetune", "result_of", "MIN_VALIDATION_CASES"]
