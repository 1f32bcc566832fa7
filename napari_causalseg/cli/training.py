"""`train` (one process, or DDP under torchrun) and `finetune`, with terminal progress."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from .common import CLIError, open_splits


def cmd_train(args: argparse.Namespace) -> int:
    if args.minutes is not None:
        if not args.minutes > 0:
            raise CLIError(f"--minutes must be positive, got {args.minutes:g}")
        if args.nproc > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise CLIError("--minutes needs one process: under DDP each rank would stop at its own "
                           "step; use --epochs with --nproc/torchrun")
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(args.nproc, args.argv)
    import torch

    from ..engine.augment import NO_AUGMENTATION, AugmentConfig
    from ..engine.checkpoint import load_checkpoint
    from ..engine.config import get_config
    from ..engine.factory import build_model
    from ..engine.train_config import TrainConfig
    from ..engine.trainer import Trainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    try:
        splits = open_splits(args.data_dir, args.val_fraction)
        if args.resume:
            last = args.out / "last.safetensors"
            if not last.is_file():
                raise CLIError(f"--resume: no {last} to continue from")
            model, _ = load_checkpoint(last)
            provenance: dict[str, Any] = {"resumed_from": str(last)}
        elif args.checkpoint is not None:
            expected = get_config(args.model) if args.model else None
            model, info = load_checkpoint(args.checkpoint, expected=expected)
            provenance = {"init_checkpoint": str(args.checkpoint), "init_provenance": info.provenance}
        else:
            cfg = get_config(args.model or "rn101")
            pretrained = args.pretrained or ("openai" if cfg.clip_name else "none")
            model, clip_weights = build_model(cfg, pretrained, context_length=args.context_length)
            provenance = {"clip_weights": clip_weights}
        provenance["data"] = {"root": str(splits.root), "layout": splits.layout, **splits.sizes()}
        given = {name: value for name, value in (
            ("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
            ("lam", args.lam), ("patience", args.patience)) if value is not None}
        config = TrainConfig(
            **given,  # an explicit 0 is the user's value, not "use the default"
            freeze_encoders=args.freeze_encoders,
            seed=args.seed,
            device=args.device,
            num_workers=args.workers,
            steps_per_epoch=args.steps_per_epoch,
            time_budget_s=None if args.minutes is None else 60 * args.minutes,
            truncate_notes=args.truncate_notes,
            augment=AugmentConfig() if args.augment else NO_AUGMENTATION,
        )
        trainer = Trainer(model, splits.train, splits.val, config, out_dir=args.out, provenance=provenance)
        if args.resume:
            trainer.load_state(args.out / "last.state.safetensors")
        _train_with_progress(trainer, show=rank == 0)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..engine.finetune import Finetune, FinetuneConfig

    if not args.data_dir.exists():
        raise CLIError(f"data folder not found: {args.data_dir}")
    try:
        config = FinetuneConfig(
            checkpoint=args.checkpoint, out_dir=args.out, minutes=args.minutes, epochs=args.epochs,
            lr=args.lr, batch_size=args.batch_size, freeze_encoders=args.freeze_encoders,
            lam=args.lam, augment=not args.no_augment, device=args.device, seed=args.seed,
            name=args.name,
        )
        job = Finetune(args.data_dir, config)
        _ = job.out_dir  # a data set without --out fails now, not after training
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(f"fine-tuning on {len(job.splits.train)} case(s), validating on {len(job.splits.val)} "
          f"({job.splits.layout} layout)", file=sys.stderr)
    result = None
    for event in _show_progress(job.run(), job.cancel, show=True, summary=sys.stderr):
        if event.kind in ("baseline", "plan", "prepare", "finished") and event.message:
            print(event.message, file=sys.stderr)
        if event.kind == "finished":
            result = event.result
    if result is None or result.checkpoint is None:
        raise CLIError("fine-tuning was cancelled; no model was written")
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _train_with_progress(trainer, show: bool) -> None:
    for _event in _show_progress(trainer.run(), trainer.cancel, show):
        pass


def _show_progress(events, cancel, show: bool, summary=None):
    """Terminal progress for trainer events (a bar per epoch, a line per epoch, the
    trainer's JSON summary on `summary`, default stdout); passes every event on. Ctrl-C
    cancels between steps."""
    from tqdm import tqdm

    from ..engine.progress import EPOCH_STEPS, EventBar

    bar = EventBar(lambda total, desc: tqdm(total=total, desc=desc, unit="step", leave=False,
                                            file=sys.stderr), EPOCH_STEPS, "train")
    try:
        for event in events:
            yield event
            if not show:
                continue
            line = bar.feed(event)
            if line:
                print(line, file=sys.stderr)
            if event.kind == "done":
                print(json.dumps({"stopped": event.stopped, "epochs": event.epoch,
                                  "best_val_dice_per_image": event.best_dice,
                                  "best": str(event.best_path) if event.best_path else None,
                                  "elapsed_s": round(event.elapsed_s, 1)}), file=summary or sys.stdout)
    except KeyboardInterrupt:
        cancel()
        raise CLIError("interrupted; no finished epoch or model was lost") from None
    finally:
        bar.close()


def _launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Re-run this very command under torchrun with `nproc` processes."""
    cleaned: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next or arg.startswith("--nproc="):
            skip_next = False
            continue
        skip_next = arg == "--nproc"
        if not skip_next:
            cleaned.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "napari_causalseg.cli", *cleaned]
    return subprocess.call(cmd)
