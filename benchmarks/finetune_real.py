"""Does fine-tuning on a user's few corrections help on real X-rays? Measured, not assumed.

    python benchmarks/finetune_real.py /path/to/QaTa        # any layout the readers know
    python benchmarks/finetune_real.py /path/to/QaTa --minutes 5 --threads 2 --cases 64

Takes the first `--cases` cases of the training split as "the user's corrections" and adds
them one by one to a fresh annotation folder, as the Fine-tune widget does (so every
fifth is held out for validation), then fine-tunes the shipped default model through the
same `finetune` workflow the widget, the CLI and the demo use, on the CPU. It evaluates
on `--test` cases spread evenly over the test split, in both metric conventions, and
reports in the same run the floor a model must beat: the caption-only prior (the mean mask
of the corrections with the same caption, else of all of them, at 0.3 as in method.md),
which uses no image at all. Writes benchmarks/FINETUNE.md. Not part of the test suite:
it needs the real data (never committed) and minutes of CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file: the package and benchmarks/ importable

from benchmarks.provenance import git_commit  # noqa: E402


def _spread(cases: list, n: int) -> list:
    if n >= len(cases):
        return list(cases)
    step = (len(cases) - 1) / (n - 1) if n > 1 else 0
    return [cases[round(i * step)] for i in range(n)]


def caption_prior(train, test, size: int, threshold: float = 0.3) -> dict:
    """Dice of the note alone: the mean training mask per caption (no pixels used)."""
    import numpy as np
    import torch

    from napari_causalseg.engine.data.cases import load_mask
    from napari_causalseg.engine.data.dataset import mask_to_model
    from napari_causalseg.engine.metrics import MetricAccumulator
    from napari_causalseg.engine.tokenizer import normalize_note

    by_note: dict[str, list] = {}
    for case in train:
        by_note.setdefault(normalize_note(case.note), []).append(
            mask_to_model(load_mask(case.mask_path), size)[0].numpy())
    everything = np.mean([m for ms in by_note.values() for m in ms], axis=0)
    acc = MetricAccumulator()
    for case in test:
        masks = by_note.get(normalize_note(case.note))
        prior = np.mean(masks, axis=0) if masks else everything
        target = mask_to_model(load_mask(case.mask_path), size)
        acc.update(torch.from_numpy((prior >= threshold).astype(np.float32))[None], target[None], [case.name])
    return acc.report()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data_dir", type=Path)
    p.add_argument("--cases", type=int, default=64, help="corrections taken from the training split")
    p.add_argument("--test", type=int, default=200, help="test cases, spread over the test split")
    p.add_argument("--minutes", type=float, default=5.0, help="fine-tuning time budget")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--checkpoint", type=Path, default=None, help="start model (default: the shipped default)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "FINETUNE.md")
    p.add_argument("--no-augment", action="store_true", help="fine-tune without augmentation (ablation)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from napari_causalseg.engine.checkpoint import load_checkpoint
    from napari_causalseg.engine.data.annotations import AnnotationStore
    from napari_causalseg.engine.data.cases import load_case
    from napari_causalseg.engine.data.layouts import open_dataset
    from napari_causalseg.engine.demo import demo_checkpoint
    from napari_causalseg.engine.evaluate import evaluate_cases
    from napari_causalseg.engine.finetune import Finetune, FinetuneConfig

    splits = open_dataset(args.data_dir, validate=False)
    corrections = splits.train[: args.cases]
    test = _spread(splits.test, args.test)
    if not corrections or not test:
        sys.exit(f"{args.data_dir} needs a training and a test split (found {splits.sizes()})")

    t0 = time.perf_counter()
    start = args.checkpoint or demo_checkpoint(progress=True)
    default_s = time.perf_counter() - t0
    model, info = load_checkpoint(start)
    size = model.config.image_size
    floor = caption_prior(corrections, test, size)
    floor_all = caption_prior(splits.train, test, size) if len(splits.train) > len(corrections) else None
    zero_shot = evaluate_cases(model, test, batch_size=16)

    with tempfile.TemporaryDirectory(prefix="finetune-real-") as tmp:
        store = AnnotationStore(Path(tmp) / "annotations")
        for case in corrections:  # as a user adds them, one at a time
            image, mask = load_case(case)
            store.add_case(case.name, image, mask, case.note)
        config = FinetuneConfig(checkpoint=Path(start), minutes=args.minutes, device="cpu",
                                augment=not args.no_augment)
        job = Finetune(store.root, config)
        t1 = time.perf_counter()
        result, epochs = None, []
        for event in job.run():
            if event.kind == "plan":
                print(f"plan: {event.message}", file=sys.stderr)
            elif event.kind == "epoch":
                epochs.append(event.epoch)
                if event.val:
                    print(f"epoch {event.epoch}: val Dice {event.val['per_image']['dice']:.3f}", file=sys.stderr)
            elif event.kind == "finished":
                result = event.result
        wall = time.perf_counter() - t1
        tuned, _ = load_checkpoint(result.checkpoint)
        after = evaluate_cases(tuned, test, batch_size=16)

    def both(report):
        return {"per_image_dice": report["per_image"]["dice"], "per_image_iou": report["per_image"]["iou"],
                "global_dice": report["global"]["dice"], "global_iou": report["global"]["iou"]}

    figures = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{args.threads} threads",
        "data": str(args.data_dir), "corrections": len(corrections), "test_cases": len(test),
        "train_cases": len(result.train_cases), "val_cases": len(result.val_cases),
        "start": str(start), "start_recipe": info.provenance.get("demo_recipe"),
        "default_model_seconds": round(default_s, 1), "finetune_wall_seconds": round(wall, 1),
        "budget_minutes": args.minutes, "plan": result.to_dict()["plan"], "verdict": result.summary,
        "floor_caption_prior": both(floor),
        "floor_caption_prior_full_train": both(floor_all) if floor_all else None,
        "zero_shot": both(zero_shot), "after": both(after),
        "median_case_dice_after": float(np.median([c["dice"] for c in after["cases"]])),
    }
    _write(args.out, figures)
    print(json.dumps(figures, indent=2) if args.json else args.out.read_text())
    return 0


def _write(path: Path, f: dict) -> None:
    def row(name, r):
        return (f"| {name} | {r['per_image_dice']:.3f} | {r['per_image_iou']:.3f} | "
                f"{r['global_dice']:.3f} | {r['global_iou']:.3f} |")

    lines = [
        "# Fine-tuning on real X-rays: `benchmarks/finetune_real.py`", "",
        f"{f['date']}, commit {f['commit']}, {f['machine']}.", "",
        (f"Data: {f['corrections']} corrections (the first cases of the training split; added to an "
        f"annotation folder as the widget does: {f['train_cases']} train, {f['val_cases']} held out for "
        f"validation), evaluated on {f['test_cases']} test cases spread over the test split."),
        (f"Start: the shipped default ({f['start_recipe']}), made in {f['default_model_seconds']} s "
        "(0 when cached)."),
        (f"Fine-tuning: {f['finetune_wall_seconds']} s wall for a {f['budget_minutes']:g}-minute budget "
        f"(validation and before/after scoring included); plan: {f['plan']}."),
        f"Workflow verdict on its own validation cases: {f['verdict']}.", "",
        "| on the test cases | Dice per image | IoU per image | Dice global | IoU global |",
        "|---|---|---|---|---|",
        row("floor: caption-only prior of the corrections", f["floor_caption_prior"]),
    ]
    if f["floor_caption_prior_full_train"]:
        lines.append(row("caption-only prior of the whole training split", f["floor_caption_prior_full_train"]))
    lines += [row("shipped default, zero-shot", f["zero_shot"]),
              row(f"after fine-tuning ({f['budget_minutes']:g} min)", f["after"]), "",
              ("Per image: threshold 0.5, Dice/IoU per image, mean over images (LViT's protocol). Global: "
              "pixel counts pooled over the test cases. The caption prior is thresholded at 0.3 "
              "(method.md's text-only floor)."), ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
