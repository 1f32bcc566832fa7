"""Speed of the restructured decoder against the straightforward reference, in one run.

    python benchmarks/run.py          # prints a report, writes benchmarks/RESULTS.md
    python benchmarks/run.py --json   # prints one JSON object instead (still writes the file)

Both models hold the same random weights (no downloads needed): the production
`CausalCLIPSeg` and the oracle of napari_causalseg/testing/reference.py (upsample, then convolve, at full
resolution, both decoders, as the method describes). Every ratio is taken between numbers
measured in this run, with the two models' measurements interleaved so that a change in
machine load hits both. Measured on the CPU for the `rn101` configuration at 224x224:

1. first-prompt latency: `Segmenter.segment` (loaded from a checkpoint file, as users
   do, so with the image side's BatchNorms folded) on a new image with a new note (pre-
   processing, both encoders, D_c's visual path, the note's conv, sigmoid, resize);
2. re-prompt latency: the same image with a new note (text encoder + one conv);
3. training step time per image at batch 4 (Adam, the adversarial objective, both
   decoders), via `causal_objective` exactly as the Trainer calls it;
4. peak resident memory of inference, in a fresh child process (benchmarks/peak_rss.py).

With CUDA, it adds bf16 inference and training throughput (images/s) for both models.
Nothing here is a unit test; tests/test_fast_decoder.py checks the equivalence.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.accelerator import bench_accelerator  # noqa: E402
from benchmarks.batch_cli import bench_batch_cli  # noqa: E402
from benchmarks.common import (  # noqa: E402
    ROOT,
    build_models,
    clock,
    inputs,
    log,
    machine_info,
    summary,
)
from benchmarks.notes import notes_for  # noqa: E402
from benchmarks.report import render  # noqa: E402
from napari_causalseg.engine import (  # noqa: E402
    NoteTokenizer,
    Segmenter,
    SegmenterConfig,
    save_checkpoint,
)
from napari_causalseg.engine.host_memory import keep_freed_memory  # noqa: E402
from napari_causalseg.engine.notes import all_notes  # noqa: E402
from napari_causalseg.engine.objective import causal_objective  # noqa: E402
from napari_causalseg.engine.optim import adam  # noqa: E402


# CPU measurements -------------------------------------------------------------------
def equivalence(model, ref, tokenizer, size: int) -> dict[str, Any]:
    """Max |fast - reference| of both decoders' logits, eval (batch 1) and train (batch 2)
    mode; BN running statistics are restored after the train-mode pass."""
    result = {}
    for mode, batch in (("eval", 1), ("train", 2)):
        images, tokens, _ = inputs(tokenizer, batch, size, seed=1)
        saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in (model, ref)]
        model.train(mode == "train"), ref.train(mode == "train")
        with torch.no_grad():
            a, b = model(images, tokens), ref(images, tokens)
        diff = max((a.causal_logits - b.causal_logits).abs().max().item(),
                   (a.confounding_logits - b.confounding_logits).abs().max().item())
        scale = max(b.causal_logits.abs().max().item(), b.confounding_logits.abs().max().item())
        result[mode] = {"max_abs_diff": diff, "logit_scale": scale, "relative": diff / scale}
        for m, state in zip((model, ref), saved):
            m.load_state_dict(state)
            m.eval()
    return result


# CPU measurements -------------------------------------------------------------------
def segmenter_equivalence(seg: Segmenter, ref, tokenizer, size: int) -> dict[str, Any]:
    """The Segmenter's own model (BatchNorms folded, F^s skipped, D_c only) against the
    reference's D_c logits for the same input tensor, in eval mode."""
    images, tokens, _ = inputs(tokenizer, 1, size, seed=4)
    model = seg.model
    with torch.inference_mode():
        feats = model.encode_image(images, with_confounding=False)
        a = model.causal_decoder.logits(model.causal_decoder.features(feats.causal),
                                        model.encode_text(tokens))
        b = ref(images, tokens, with_confounding=False).causal_logits
    diff, scale = (a - b).abs().max().item(), b.abs().max().item()
    return {"max_abs_diff": diff, "logit_scale": scale, "relative": diff / scale}


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench_inference(seg: Segmenter, ref, size: int, repeats: int, reprompts: int,
                    large: tuple[int, int] = (3000, 2500)) -> dict[str, Any]:
    notes = iter(notes_for(seg.tokenizer, repeats + reprompts + 24))
    rng = np.random.default_rng(0)

    def new_image() -> np.ndarray:
        return rng.integers(0, 255, (size, size), dtype=np.uint8)

    images, tokens, _ = inputs(seg.tokenizer, 1, size, seed=2)

    def ref_forward() -> None:
        with torch.inference_mode():
            ref(images, tokens)  # the authors' model: both decoders, always

    def ref_forward_causal() -> None:
        with torch.inference_mode():
            ref(images, tokens, with_confounding=False)

    # warm-up: first calls pay for kernel selection and allocator growth
    for _ in range(2):
        seg.segment(new_image(), next(notes))
        ref_forward()
    first, ref_s, ref_causal_s = [], [], []
    faults = {"reference_forward": [], "first_prompt": []}  # minor page faults of each
    for _ in range(repeats):  # interleaved, so that load changes hit both
        before = minor_faults()
        ref_s.append(clock(ref_forward))
        faults["reference_forward"].append(minor_faults() - before)
        image, note = new_image(), next(notes)
        before = minor_faults()
        first.append(clock(lambda image=image, note=note: seg.segment(image, note)))
        faults["first_prompt"].append(minor_faults() - before)
    for _ in range(max(2, repeats // 2)):
        ref_causal_s.append(clock(ref_forward_causal))
    known = note  # a new image with the note already typed for the previous one
    first_known = []
    for _ in range(3):
        image = new_image()
        first_known.append(clock(lambda image=image: seg.segment(image, known)))
    log(f"  reference forward {statistics.median(ref_s):.3f} s, first prompt {statistics.median(first):.3f} s")

    image = new_image()
    seg.segment(image, next(notes))
    # the first prompt left D_c's full-resolution features unmade: the first re-prompt
    # makes them (the widget makes them ahead, as soon as an image is chosen)
    note = next(notes)
    reprompt_first = clock(lambda: seg.segment(image, note))
    reprompt = [clock(lambda note=note: seg.segment(image, note)) for note in
                (next(notes) for _ in range(reprompts))]
    # where a re-prompt's time goes: a new note's text feature, then the rest
    text_s, rest_s = [], []
    for _ in range(5):
        note = next(notes)
        text_s.append(clock(lambda note=note: seg.text_feature(note)))
        rest_s.append(clock(lambda note=note: seg.segment(image, note)))
    image2 = new_image()
    features_s = clock(lambda: seg.image_features(image2))
    log(f"  re-prompt {statistics.median(reprompt) * 1e3:.1f} ms")

    # A radiograph as it comes (16-bit, thousands of pixels a side): the window, the
    # resize and the full-size output maps add to the model's time.
    large_first, large_reprompt = [], []
    for _ in range(3):
        big, note = (rng.random(large) * 4095).astype(np.uint16), next(notes)
        large_first.append(clock(lambda big=big, note=note: seg.segment(big, note)))
    seg.image_features(big)  # as the widget does when an image is chosen
    for _ in range(5):
        note = next(notes)
        large_reprompt.append(clock(lambda note=note: seg.segment(big, note)))
    # warm: every QaTa note's text feature made in the background, then re-prompts with them
    prefetch_s = clock(lambda: seg.prefetch_notes().join())
    qata = [n for n in all_notes() if seg.tokenizer.encode(n, truncate=True).dropped is None]
    warm = [clock(lambda note=note: seg.segment(image, note)) for note in qata[:reprompts]]
    log(f"  warm re-prompt {statistics.median(warm) * 1e3:.1f} ms (prefetch {prefetch_s:.2f} s)")
    return {
        "reprompt_warm": summary(warm),
        "prefetch": {"notes": len(qata), "seconds": prefetch_s},
        "first_prompt": summary(first),
        "minor_faults": {k: statistics.median(v) for k, v in faults.items()},
        "first_prompt_known_note": summary(first_known),
        "reference_forward": summary(ref_s),
        "reference_forward_causal_only": summary(ref_causal_s),
        "reprompt": summary(reprompt),
        "reprompt_first_s": reprompt_first,
        "reprompt_text_encoder": summary(text_s),
        "reprompt_without_text": summary(rest_s),
        "image_features_once_s": features_s,
        "large_image": {"shape": list(large), "dtype": "uint16", "first_prompt": summary(large_first),
                        "reprompt": summary(large_reprompt)},
    }


def bench_session(seg: Segmenter, size: int, images: int = 60, tail: int = 20) -> dict[str, Any]:
    """A long session: first prompts on `images` new images with a note already encoded,
    the image cache growing; the last `tail` of them, with the minor page faults of each
    (a heap that gives a prompt's freed transients back to the system makes the next one
    fault them in again: host_memory.keep_heap_between_calls)."""
    rng = np.random.default_rng(5)
    note = notes_for(seg.tokenizer, 1)[0]
    seg.segment(rng.integers(0, 255, (size, size), dtype=np.uint8), note)
    times, faults = [], []
    for _ in range(images):
        image = rng.integers(0, 255, (size, size), dtype=np.uint8)
        before = minor_faults()
        times.append(clock(lambda image=image: seg.segment(image, note)))
        faults.append(minor_faults() - before)
    log(f"  session: first prompt {statistics.median(times[-tail:]) * 1e3:.0f} ms, "
        f"{statistics.median(faults[-tail:])} page faults (medians of the last {tail})")
    return {"images": images, "tail": tail, "first_prompt": summary(times[-tail:]),
            "minor_faults": faults[-tail:]}


def train_step_fn(model, tokenizer, batch: int, size: int, lam: float = 0.05, optimizer=torch.optim.Adam):
    """`optimizer`: the fast model gets the package Trainer's (`adam`: fused where torch
    has it), the reference torch's default Adam, as the authors' training would."""
    images, tokens, masks = inputs(tokenizer, batch, size, seed=3)
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=3e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        terms = causal_objective(model, images, tokens, masks, lam)
        terms.backward.backward()
        opt.step()

    return step, opt


def bench_training(model, ref, tokenizer, size: int, batch: int, rounds: int) -> dict[str, Any]:
    model.train(), ref.train()
    fast_step, fast_opt = train_step_fn(model, tokenizer, batch, size, optimizer=adam)
    ref_step, ref_opt = train_step_fn(ref, tokenizer, batch, size)
    fast_step()  # without kept memory first: glibc's default, each big tensor a fresh mmap
    default_malloc = [clock(fast_step) / batch for _ in range(2)]
    log(f"  train step per image, fast, malloc's defaults: {default_malloc[-1]:.3f} s")
    # Both models as the package's Trainer runs on the CPU: freed memory kept for reuse.
    with keep_freed_memory() as kept:
        for _ in range(2):  # warm-up: Adam's state, and the heap grows to what a step reuses
            fast_step(), ref_step()  # (the first steps of a run page-fault ~1-2 GB)
        fast, slow = [], []
        for _ in range(rounds):  # interleaved
            slow.append(clock(ref_step) / batch)
            fast.extend(clock(fast_step) / batch for _ in range(2))
            log(f"  train step per image: reference {slow[-1]:.2f} s, fast {fast[-1]:.3f} s")
    model.eval(), ref.eval()
    fused = bool(fast_opt.defaults.get("fused"))
    del fast_opt, ref_opt
    return {"train_step_per_image": summary(fast), "reference_train_step_per_image": summary(slow),
            "batch": batch, "freed_memory_kept": kept,
            "fast_optimizer": "fused Adam" if fused else "Adam",
            "train_step_per_image_default_malloc": summary(default_malloc)}


def bench_peak_rss(checkpoint: Path, config: str, threads: int, python: str = sys.executable) -> dict[str, Any]:
    """The child loads the checkpoint file, as a user's session does. `python`: another
    interpreter (e.g. a venv with a CPU-only torch build) to measure the same code with."""
    cmd = [python, str(ROOT / "benchmarks" / "peak_rss.py"), "--checkpoint", str(checkpoint),
           "--config", config, "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])



def bench_cpu(args: argparse.Namespace, threads: int, results: dict[str, Any]) -> None:
    """Every CPU measurement into `results` (both models built here, freed at the end)."""
    log(f"building {args.config} and its reference ...")
    model, ref = build_models(args.config)
    tokenizer = NoteTokenizer(model.config.text.context_length)
    log("equivalence ...")
    eq = equivalence(model, ref, tokenizer, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        # inference as users run it: a Segmenter loaded from a checkpoint file
        checkpoint = Path(tmp) / "model.safetensors"
        save_checkpoint(checkpoint, model, {"benchmark": "random weights"})
        seg = Segmenter.from_checkpoint(checkpoint, SegmenterConfig(device="cpu"))
        eq["inference"] = segmenter_equivalence(seg, ref, tokenizer, args.size)
        log("inference ...")
        inf = bench_inference(seg, ref, args.size, args.repeats, args.reprompts)
        inf["session"] = bench_session(seg, args.size, args.session_images)
        del seg
        log("peak RSS (child process) ...")
        rss = bench_peak_rss(checkpoint, args.config, threads)
        rss_other = [bench_peak_rss(checkpoint, args.config, threads, py) for py in args.rss_python]
        if args.batch_images > 0:
            log("causalseg segment over a folder (child processes) ...")
            results["details"]["batch_cli"] = bench_batch_cli(
                checkpoint, tokenizer, threads, args.batch_images, args.batch_singles, args.batch_large)
    log("training ...")
    tr = bench_training(model, ref, tokenizer, args.size, args.train_batch, args.train_rounds)
    del model, ref
    results["details"].update(equivalence=eq, inference=inf, training=tr, peak_rss=rss)
    if rss_other:
        results["details"]["peak_rss_other"] = rss_other
    results.update(
        first_prompt_s=inf["first_prompt"]["median"],
        reprompt_s=inf["reprompt"]["median"],
        train_step_per_image_s=tr["train_step_per_image"]["median"],
        peak_rss_mb=rss["peak_rss_mb"],
        reference_forward_s=inf["reference_forward"]["median"],
        reference_train_step_per_image_s=tr["reference_train_step_per_image"]["median"],
        max_abs_diff=max(eq["eval"]["max_abs_diff"], eq["inference"]["max_abs_diff"]),
        max_abs_diff_train=eq["train"]["max_abs_diff"],
        logit_scale=eq["eval"]["logit_scale"],
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--config", default="rn101")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPUs)")
    parser.add_argument("--repeats", type=int, default=11, help="first-prompt / reference-forward pairs")
    parser.add_argument("--reprompts", type=int, default=20)
    parser.add_argument("--session-images", type=int, default=60, help="new images in the long session")
    parser.add_argument("--train-rounds", type=int, default=3,
                        help="rounds of 1 reference + 2 fast steps (3: a median that one slow step cannot move)")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--accelerator", default="cuda", help="device for the bf16 throughput part")
    parser.add_argument("--accel-seconds", type=float, default=3.0, help="time per throughput figure")
    parser.add_argument("--accel-batch", type=int, nargs=2, default=(32, 8), metavar=("INFER", "TRAIN"))
    parser.add_argument("--skip-cpu", action="store_true", help="only the accelerator part")
    parser.add_argument("--rss-python", action="append", default=[], metavar="PYTHON",
                        help="also measure peak RSS with this interpreter (e.g. a venv with a "
                             "CPU-only torch; it needs numpy, safetensors, ftfy and regex)")
    parser.add_argument("--batch-images", type=int, default=100,
                        help="X-rays for the `causalseg segment` throughput (0: skip it)")
    parser.add_argument("--batch-singles", type=int, default=3, help="single-image invocations timed")
    parser.add_argument("--batch-large", type=int, default=5, help="large radiographs in one process")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args(argv)

    try:
        threads = args.threads or len(os.sched_getaffinity(0))
    except AttributeError:
        threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    results: dict[str, Any] = {"config": args.config, "size": args.size, "machine": machine_info(),
                               "details": {}}
    results["device"] = f"cpu: {results['machine']['cpu']} ({threads} threads)"
    if not args.skip_cpu:
        bench_cpu(args, threads, results)
    accel = torch.device(args.accelerator)
    if accel.type == "cuda" and not torch.cuda.is_available():
        results["gpu"] = "Skipped: CUDA is not available on this machine (no bf16 throughput numbers)."
    else:
        log(f"accelerator ({args.accelerator}) ...")
        results["gpu"] = bench_accelerator(args.config, args.size, args.accelerator,
                                           args.accel_seconds, *args.accel_batch)
        results["device"] += f"; {args.accelerator}: {results['gpu']['device']}"
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = render(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    if args.json:
        print(json.dumps(results))
    else:
        print(report)
    log(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
