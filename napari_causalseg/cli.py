"""`causalseg`: synthesise data, train, evaluate, segment and inspect from a shell.

Every subcommand prints a one-line error (no traceback) and exits non-zero on bad
input; `--debug` shows the traceback. Training under torchrun uses DDP:
    torchrun --nproc_per_node 2 -m napari_causalseg.cli train DATA --out RUN
or `causalseg train DATA --out RUN --nproc 2`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _threshold(text: str) -> float:
    """argparse type: a usage error (exit 2) naming the bad value."""
    from .engine.segmenter import check_threshold

    try:
        return check_threshold(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="causalseg",
        description="Text-guided lesion segmentation of chest X-rays (CausalCLIPSeg).",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads for torch (default: one per core); lower it when other "
                        "heavy processes share the cores, which otherwise slow each other badly")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="write a synthetic chest X-ray data set (LViT layout)")
    s.add_argument("out_dir", type=Path)
    s.add_argument("--count", type=int, default=200, help="cases in total (default 200)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--confounder", action="store_true",
                   help="add a marker that co-occurs with lesions in train but not in test")

    t = sub.add_parser("train", help="train or fine-tune on a data set folder")
    t.add_argument("data_dir", type=Path, help="QaTa-COV19 (LViT/MMI-UNet/SGSeg layout), synth or annotation folder")
    t.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and metrics")
    t.add_argument("--model", default=None, help="configuration: tiny or rn101 (default: rn101, or the checkpoint's)")
    t.add_argument("--pretrained", default=None,
                   help="CLIP weights: openai, a local open_clip/OpenAI file, or none (default: openai for rn101)")
    t.add_argument("--checkpoint", type=Path, default=None, help="start from this checkpoint (fine-tuning)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    t.add_argument("--epochs", type=int, default=None, help="maximum epochs (paper: 2000)")
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--lr", type=float, default=None, help="initial learning rate (paper: 3e-5)")
    t.add_argument("--lambda", dest="lam", type=float, default=None, help="weight of L_s (paper: 0.05)")
    t.add_argument("--patience", type=int, default=None, help="early-stopping patience in epochs (paper: 100)")
    t.add_argument("--steps-per-epoch", type=int, default=None, help="cap steps per epoch (quick runs)")
    t.add_argument("--freeze-encoders", action="store_true", help="keep the CLIP towers fixed")
    t.add_argument("--augment", action="store_true",
                   help="flips with mirrored notes, small pose and exposure changes (as finetune does)")
    t.add_argument("--context-length", type=int, default=None,
                   help="text context of a new model (paper: 20; QaTa notes need up to 22)")
    t.add_argument("--truncate-notes", action="store_true",
                   help="cut notes longer than the context instead of stopping (reported)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="val share when the data has no val split")
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    t.add_argument("--nproc", type=int, default=1, help="processes for DDP on this machine (uses torchrun)")

    f = sub.add_parser("finetune", help="fine-tune on corrected cases within a time budget (the GUI's workflow)")
    f.add_argument("data_dir", type=Path, help="an annotation folder or any data set layout")
    f.add_argument("--checkpoint", type=Path, default=None, help="start model (default: the bundled demo model)")
    f.add_argument("--out", type=Path, default=None,
                   help="folder for the new checkpoint (default: <annotation folder>/models)")
    f.add_argument("--minutes", type=float, default=5.0, help="training time budget (default 5)")
    f.add_argument("--epochs", type=_positive_int, default=None, help="a fixed number of epochs instead of the time budget")
    f.add_argument("--lr", type=float, default=None, help="default: 1e-3 (no CLIP weights) or 1e-4")
    f.add_argument("--batch-size", type=_positive_int, default=None, help="default: up to 8")
    f.add_argument("--freeze-encoders", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the CLIP towers fixed (default: when CLIP-initialised and < 500 cases)")
    f.add_argument("--lambda", dest="lam", type=float, default=0.05, help="weight of L_s (paper: 0.05)")
    f.add_argument("--no-augment", action="store_true", help="no flips (with mirrored notes), pose or exposure changes")
    f.add_argument("--name", default=None, help="name of the new checkpoint (default: finetuned-<time>)")
    f.add_argument("--device", default="auto")
    f.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("evaluate", help="Dice/IoU (per-image and global) on a split, as JSON")
    e.add_argument("data_dir", type=Path)
    e.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled demo model")
    e.add_argument("--split", default="test", help="train, val or test (default test)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--device", default="auto")
    e.add_argument("--out", type=Path, default=None, help="also write the report here")

    g = sub.add_parser("segment", help="segment images from a note; writes mask and confounder map")
    g.add_argument("images", nargs="+", type=Path)
    g.add_argument("--note", required=True, help="the radiology note, e.g. 'Unilateral pulmonary infection, one infected area, lower right lung.'")
    g.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled demo model")
    g.add_argument("--out", type=Path, required=True, help="output folder")
    g.add_argument("--threshold", type=_threshold, default=0.5,
                   help="lesion probability at or above which a pixel is in the mask (0-1, default 0.5)")
    g.add_argument("--device", default="auto")

    i = sub.add_parser("info", help="configuration, parameter count and provenance, as JSON")
    grp = i.add_mutually_exclusive_group()
    grp.add_argument("--model", default=None, help="a configuration name (tiny, rn101)")
    grp.add_argument("--checkpoint", type=Path, default=None)
    return p


# commands ---------------------------------------------------------------------


def cmd_synth(args: argparse.Namespace) -> int:
    from .engine.data.synth import SynthConfig, write_lvit_dataset

    if args.count < 3:
        raise CLIError("--count must be at least 3 (one case each for train, val and test)")
    n_test = max(1, round(args.count * 0.2))
    n_val = max(1, round(args.count * 0.1))
    n_train = args.count - n_test - n_val
    cfg = SynthConfig(confounder="marker" if args.confounder else None)
    root = write_lvit_dataset(args.out_dir, n_train, n_val, n_test, seed=args.seed, cfg=cfg)
    print(json.dumps({"out_dir": str(root), "train": n_train, "val": n_val, "test": n_test}))
    return 0


def _open_splits(data_dir: Path, val_fraction: float = 0.2):
    from .engine.data.layouts import open_dataset

    if not data_dir.exists():
        raise CLIError(f"data folder not found: {data_dir}")
    return open_dataset(data_dir, val_fraction=val_fraction)


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(args.nproc, args.argv)
    import torch

    from .engine.augment import NO_AUGMENTATION, AugmentConfig
    from .engine.checkpoint import load_checkpoint
    from .engine.config import get_config
    from .engine.model import CausalCLIPSeg
    from .engine.train_config import TrainConfig
    from .engine.trainer import Trainer
    from .engine.weights import load_clip_weights

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    try:
        splits = _open_splits(args.data_dir, args.val_fraction)
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
            if args.context_length:
                cfg = dataclasses.replace(
                    cfg, text=dataclasses.replace(cfg.text, context_length=args.context_length)
                )
            pretrained = args.pretrained or ("openai" if cfg.clip_name else "none")
            model = CausalCLIPSeg(cfg)
            provenance = {"clip_weights": load_clip_weights(model, pretrained)}
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
    from .engine.finetune import Finetune, FinetuneConfig

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

    bar = None
    try:
        for event in events:
            yield event
            if not show:
                continue
            if event.kind == "step":
                if bar is None or bar.total != event.steps or event.step == 1:
                    if bar is not None:
                        bar.close()
                    bar = tqdm(total=event.steps, desc=f"epoch {event.epoch}/{event.epochs}",
                               unit="step", leave=False, file=sys.stderr)
                bar.update(1)
                bar.set_postfix(L_c=f"{event.loss_c:.4f}", L_s=f"{event.loss_s:.4f}", lr=f"{event.lr:.2e}")
            elif event.kind == "epoch":
                if bar is not None:
                    bar.close()
                    bar = None
                val = event.val or {}
                dice = val.get("per_image", {}).get("dice")
                gdice = val.get("global", {}).get("dice")
                print(f"epoch {event.epoch}: L={event.loss:.4f} L_c={event.loss_c:.4f} L_s={event.loss_s:.4f}"
                      + (f" val Dice per-image={dice:.4f} global={gdice:.4f}" if dice is not None else ""),
                      file=sys.stderr)
            elif event.kind == "done":
                print(json.dumps({"stopped": event.stopped, "epochs": event.epoch,
                                  "best_val_dice_per_image": event.best_dice,
                                  "best": str(event.best_path) if event.best_path else None,
                                  "elapsed_s": round(event.elapsed_s, 1)}), file=summary or sys.stdout)
    except KeyboardInterrupt:
        cancel()
        raise CLIError("interrupted; no finished epoch or model was lost") from None
    finally:
        if bar is not None:
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


def _segmenter(checkpoint: Path | None, device: str, threshold: float = 0.5):
    from .engine.demo import demo_checkpoint
    from .engine.segmenter import Segmenter, SegmenterConfig

    path = checkpoint if checkpoint is not None else demo_checkpoint(progress=True)
    return Segmenter.from_checkpoint(path, SegmenterConfig(device=device, threshold=threshold)), path


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .engine.evaluate import evaluate_cases

    splits = _open_splits(args.data_dir)
    cases = splits.split(args.split)
    if not cases:
        raise CLIError(f"the {args.split} split of {args.data_dir} is empty")
    segmenter, path = _segmenter(args.checkpoint, args.device)
    report = evaluate_cases(segmenter.model, cases, batch_size=args.batch_size, device=segmenter.device)
    report = {"checkpoint": str(path), "data": str(splits.root), "layout": splits.layout,
              "split": args.split, **report}
    text = json.dumps(report, indent=2)
    if args.out:
        from .engine.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from .engine.images import read_image, write_mask

    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise CLIError(f"image not found: {', '.join(missing)}")
    segmenter, path = _segmenter(args.checkpoint, args.device, args.threshold)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for image_path in args.images:
        read = read_image(image_path)
        for text in read.metadata.get("notes", []):  # e.g. pages of a stack left out
            print(f"causalseg segment: note: {image_path}: {text}", file=sys.stderr)
        result = segmenter.segment(read.data, args.note)
        stem = image_path.stem
        mask_path = args.out / f"{stem}_lesion.png"
        conf_path = args.out / f"{stem}_confounders.png"
        write_mask(mask_path, result.mask.astype(np.uint8) * 255)
        write_mask(conf_path, np.round(result.confounder * 255).astype(np.uint8))
        results.append({"image": str(image_path), "mask": str(mask_path), "confounders": str(conf_path),
                        "lesion_fraction": float(result.mask.mean()), "shape": list(result.mask.shape),
                        "read_notes": list(read.metadata.get("notes", []))})
    print(json.dumps({"checkpoint": str(path), "note": result.note, "results": results}, indent=2))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .engine.checkpoint import read_checkpoint_info
    from .engine.config import get_config
    from .engine.model import CausalCLIPSeg, count_parameters

    if args.checkpoint is not None:
        info = read_checkpoint_info(args.checkpoint)
        cfg, extra = info.config, info.to_dict()
    else:
        cfg, extra = get_config(args.model or "rn101"), {}
    import torch

    with torch.device("meta"):
        model = CausalCLIPSeg(cfg)
    parts = {name: count_parameters(m) for name, m in model.named_children()}
    print(json.dumps({"config": cfg.to_dict(), "parameters": count_parameters(model),
                      "parameters_by_part": parts, **{k: v for k, v in extra.items() if k != "model"}},
                     indent=2))
    return 0


COMMANDS = {"synth": cmd_synth, "train": cmd_train, "finetune": cmd_finetune, "evaluate": cmd_evaluate,
            "segment": cmd_segment, "info": cmd_info}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("causalseg: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: one clear line for users
        if args.debug:
            raise
        from .engine.errors import USER_ERRORS

        if isinstance(exc, (CLIError, *USER_ERRORS)):
            print(f"causalseg {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"causalseg {args.command}: unexpected error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
