"""`synth`, `evaluate`, `segment` and `info`: data, scores, masks and model facts."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .common import CLIError, open_splits


def cmd_synth(args: argparse.Namespace) -> int:
    from ..engine.data.synth import SynthConfig, write_lvit_dataset

    if args.count < 3:
        raise CLIError("--count must be at least 3 (one case each for train, val and test)")
    n_test = max(1, round(args.count * 0.2))
    n_val = max(1, round(args.count * 0.1))
    n_train = args.count - n_test - n_val
    cfg = SynthConfig(confounder="marker" if args.confounder else None)
    root = write_lvit_dataset(args.out_dir, n_train, n_val, n_test, seed=args.seed, cfg=cfg)
    print(json.dumps({"out_dir": str(root), "train": n_train, "val": n_val, "test": n_test}))
    return 0


def _segmenter(checkpoint: Path | None, device: str, threshold: float = 0.5):
    from ..engine.model_sources import CHECKPOINT, DEMO, ModelSource, open_segmenter
    from ..engine.segmenter import SegmenterConfig

    source = ModelSource(DEMO) if checkpoint is None else ModelSource(CHECKPOINT, checkpoint)
    return open_segmenter(source, SegmenterConfig(device=device, threshold=threshold), progress=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..engine.evaluate import evaluate_cases

    splits = open_splits(args.data_dir)
    cases = splits.split(args.split)
    if not cases:
        raise CLIError(f"the {args.split} split of {args.data_dir} is empty")
    segmenter, path = _segmenter(args.checkpoint, args.device)
    report = evaluate_cases(segmenter.model, cases, batch_size=args.batch_size, device=segmenter.device)
    report = {"checkpoint": str(path), "data": str(splits.root), "layout": splits.layout,
              "split": args.split, **report}
    text = json.dumps(report, indent=2)
    if args.out:
        from ..engine.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..engine.agreement import agreement_report
    from ..engine.batch import BatchConfig, plan_batch, run_batch

    config = BatchConfig(out_dir=args.out, fmt=args.format, overwrite=args.overwrite,
                         default_note=args.note, notes_csv=args.notes)
    plan = plan_batch(args.images, config)  # every input problem is found before the model loads
    for row in plan.unused_notes:
        print(f"causalseg segment: note: {args.notes} {row} matches no image", file=sys.stderr)
    segmenter, path = None, args.checkpoint
    if plan.pending(args.overwrite):  # a finished batch reruns without loading (or training) a model
        segmenter, path = _segmenter(args.checkpoint, args.device, args.threshold)
        config = dataclasses.replace(config, model=Path(path).name if path else None)
    results, failures = [], []
    with tqdm(total=len(plan.items), desc="segment", unit="image", file=sys.stderr) as bar:
        for outcome in run_batch(segmenter, plan, config, on_progress=lambda *_: bar.update(1)):
            item, read, result = outcome.item, outcome.loaded, outcome.result
            if outcome.error is not None or outcome.skipped:
                if outcome.error is not None:
                    failures.append(outcome.error)
                    if len(plan.items) > 1:  # a lone image's error is the run's one line below
                        tqdm.write(f"causalseg segment: error: {outcome.error}", file=sys.stderr)
                results.append({"image": str(item.image), "mask": str(item.mask_path),
                                "confounders": str(item.confounder_path), "skipped": outcome.skipped,
                                "error": outcome.error})
                continue
            for text in read.metadata.get("notes", []):  # e.g. pages of a stack left out
                tqdm.write(f"causalseg segment: note: {item.image}: {text}", file=sys.stderr)
            results.append({"image": str(item.image), "mask": str(item.mask_path),
                            "confounders": str(item.confounder_path),
                            "lesion_fraction": float(result.mask.mean()), "shape": list(result.mask.shape),
                            "read_notes": list(read.metadata.get("notes", [])), "note": item.note,
                            "kept": [str(p) for p in outcome.kept],
                            "agreement": agreement_report(read.data, result.mask, item.note)})
    print(json.dumps({"checkpoint": str(path) if path else None, "format": args.format, "note": args.note,
                      "results": results}, indent=2))
    if len(failures) == len(plan.items) == 1:
        raise CLIError(failures[0])
    if failures:
        raise CLIError(f"{len(failures)} of {len(plan.items)} image(s) failed; the first: {failures[0]}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..engine.checkpoint import read_checkpoint_info
    from ..engine.config import get_config
    from ..engine.factory import build_model
    from ..engine.model import count_parameters

    if args.checkpoint is not None:
        info = read_checkpoint_info(args.checkpoint)
        cfg, extra = info.config, info.to_dict()
    else:
        cfg, extra = get_config(args.model or "rn101"), {}
    import torch

    with torch.device("meta"):
        model, _ = build_model(cfg)
    parts = {name: count_parameters(m) for name, m in model.named_children()}
    print(json.dumps({"config": cfg.to_dict(), "parameters": count_parameters(model),
                      "parameters_by_part": parts, **{k: v for k, v in extra.items() if k != "model"}},
                     indent=2))
    return 0
