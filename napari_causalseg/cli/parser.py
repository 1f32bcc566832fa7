"""The command line's grammar: every subcommand, option and argument type."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    from ..engine.segmenter import check_threshold

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
    t.add_argument("--minutes", type=float, default=None,
                   help="train for this long (then validate and stop; --epochs still caps it); the "
                        "learning rate follows a cosine over the time. One process only")
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

    _add_segment_parser(sub)

    i = sub.add_parser("info", help="configuration, parameter count and provenance, as JSON")
    grp = i.add_mutually_exclusive_group()
    grp.add_argument("--model", default=None, help="a configuration name (tiny, rn101)")
    grp.add_argument("--checkpoint", type=Path, default=None)
    return p


def _output_format(text: str) -> str:
    """argparse type for --format (checked here so --help does not import the engine)."""
    from ..engine.images.export import check_format

    try:
        return check_format(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_segment_parser(sub) -> None:
    g = sub.add_parser("segment", help="segment images from their notes; writes mask and confounder map")
    g.add_argument("images", nargs="+", type=Path,
                   help="image files and folders (a folder: every PNG, JPEG, TIFF or DICOM file in it)")
    g.add_argument("--note", default=None, help="the radiology note for every image (with --notes: for "
                   "images the CSV does not list), e.g. 'Unilateral pulmonary infection, one infected "
                   "area, lower right lung.'")
    g.add_argument("--notes", type=Path, default=None, metavar="CSV",
                   help="per-image notes: a CSV with the columns image (file name or path) and note")
    g.add_argument("--format", default="png", type=_output_format,
                   help="png (default), tiff, nifti or dicom-seg; dicom-seg needs DICOM inputs and "
                        "writes SEG objects that reference them; tiff and nifti keep the pixel spacing")
    g.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: keep them and skip images already done)")
    g.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled demo model")
    g.add_argument("--out", type=Path, required=True, help="output folder")
    g.add_argument("--threshold", type=_threshold, default=0.5,
                   help="lesion probability at or above which a pixel is in the mask (0-1, default 0.5)")
    g.add_argument("--device", default="auto")
