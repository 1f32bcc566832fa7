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
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.notes import notes_for  # noqa: E402
from napari_causalseg.engine import (  # noqa: E402
    CausalCLIPSeg,
    NoteTokenizer,
    Segmenter,
    SegmenterConfig,
    build_model,
    save_checkpoint,
)
from napari_causalseg.engine.objective import causal_objective  # noqa: E402
from napari_causalseg.testing.reference import reference_from, with_batchnorm_statistics  # noqa: E402

TARGETS = {
    "first_prompt_ratio": 0.25,  # first prompt / reference forward, at most
    "reprompt_s": 0.040,  # median on 2 cores, at most
    "train_speedup": 3.0,  # reference step / fast step, at least
    "peak_rss_mb": 1.5e9 / 2**20,  # 1.5 GB (10^9 bytes) = 1430.5 MiB, at most
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# machine ----------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return commit + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
        if hasattr(os, "sysconf") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# timing -----------------------------------------------------------------------------
def clock(fn: Callable[[], Any], sync: Callable[[], None] = lambda: None) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "samples": [round(s, 4) for s in samples],
    }


# models -----------------------------------------------------------------------------
def build_models(config: str, seed: int = 0) -> tuple[CausalCLIPSeg, torch.nn.Module]:
    """Random weights, with non-trivial BatchNorm statistics in the decoders (so that
    eval-mode folding is exercised), and the reference holding a copy of them."""
    torch.manual_seed(seed)
    model = build_model(config)[0].eval()
    for i, dec in enumerate((model.causal_decoder, model.confounding_decoder)):
        with_batchnorm_statistics(dec, seed=seed + i)
    return model, reference_from(model).eval()


def inputs(tokenizer: NoteTokenizer, batch: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    tokens = tokenizer(notes_for(tokenizer, batch))
    masks = (torch.rand(batch, 1, size, size, generator=g) > 0.7).float()
    return images, tokens, masks


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
    for _ in range(repeats):  # interleaved, so that load changes hit both
        ref_s.append(clock(ref_forward))
        image, note = new_image(), next(notes)
        first.append(clock(lambda image=image, note=note: seg.segment(image, note)))
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
    for _ in range(5):
        note = next(notes)
        large_reprompt.append(clock(lambda note=note: seg.segment(big, note)))
    return {
        "first_prompt": summary(first),
        "first_prompt_known_note": summary(first_known),
        "reference_forward": summary(ref_s),
        "reference_forward_causal_only": summary(ref_causal_s),
        "reprompt": summary(reprompt),
        "reprompt_text_encoder": summary(text_s),
        "reprompt_without_text": summary(rest_s),
        "image_features_once_s": features_s,
        "large_image": {"shape": list(large), "dtype": "uint16", "first_prompt": summary(large_first),
                        "reprompt": summary(large_reprompt)},
    }


def train_step_fn(model, tokenizer, batch: int, size: int, lam: float = 0.05):
    images, tokens, masks = inputs(tokenizer, batch, size, seed=3)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-5)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        terms = causal_objective(model, images, tokens, masks, lam)
        terms.backward.backward()
        opt.step()

    return step, opt


def bench_training(model, ref, tokenizer, size: int, batch: int, rounds: int) -> dict[str, Any]:
    model.train(), ref.train()
    fast_step, fast_opt = train_step_fn(model, tokenizer, batch, size)
    ref_step, ref_opt = train_step_fn(ref, tokenizer, batch, size)
    fast_step(), ref_step()  # warm-up (and Adam's state allocation)
    fast, slow = [], []
    for _ in range(rounds):  # interleaved
        slow.append(clock(ref_step) / batch)
        fast.extend(clock(fast_step) / batch for _ in range(2))
        log(f"  train step per image: reference {slow[-1]:.2f} s, fast {fast[-1]:.3f} s")
    model.eval(), ref.eval()
    del fast_opt, ref_opt
    return {"train_step_per_image": summary(fast), "reference_train_step_per_image": summary(slow),
            "batch": batch}


def bench_peak_rss(checkpoint: Path, config: str, threads: int, python: str = sys.executable) -> dict[str, Any]:
    """The child loads the checkpoint file, as a user's session does. `python`: another
    interpreter (e.g. a venv with a CPU-only torch build) to measure the same code with."""
    cmd = [python, str(ROOT / "benchmarks" / "peak_rss.py"), "--checkpoint", str(checkpoint),
           "--config", config, "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# accelerator ------------------------------------------------------------------------
def bench_accelerator(config: str, size: int, device: str, seconds: float = 3.0,
                      infer_batch: int = 32, train_batch: int = 8) -> dict[str, Any]:
    """bf16 autocast throughput of both models on `device` (images/s)."""
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    model, ref = build_models(config)
    model, ref = model.to(dev), ref.to(dev)
    tokenizer = NoteTokenizer(model.config.text.context_length)
    result: dict[str, Any] = {"device": name, "dtype": "bfloat16 (autocast)",
                              "infer_batch": infer_batch, "train_batch": train_batch}

    def throughput(fn: Callable[[], None], batch: int) -> float:
        fn(), fn()
        n, elapsed = 0, 0.0
        while elapsed < seconds or n < 3:
            elapsed += clock(fn, sync)
            n += 1
        return n * batch / elapsed

    images, tokens, _ = inputs(tokenizer, infer_batch, size, seed=4)
    images, tokens = images.to(dev), tokens.to(dev)
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():  # fp32 agreement on this device (no TF32), for the record
        a = model(images[:2], tokens[:2]).causal_logits
        b = ref(images[:2], tokens[:2]).causal_logits
        result["fp32_max_abs_diff"] = (a - b).abs().max().item()
        result["fp32_logit_scale"] = b.abs().max().item()
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    def infer(m, **kw) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
                m(images, tokens, **kw)
        return run

    result["inference_images_per_s"] = throughput(infer(model, with_confounding=False), infer_batch)
    result["reference_inference_images_per_s"] = throughput(infer(ref), infer_batch)
    log(f"  {name}: inference {result['inference_images_per_s']:.1f} img/s, "
        f"reference {result['reference_inference_images_per_s']:.1f} img/s")

    def train(m) -> Callable[[], None]:
        m.train()
        imgs, toks, masks = (t.to(dev) for t in inputs(tokenizer, train_batch, size, seed=5))
        opt = torch.optim.Adam(m.parameters(), lr=3e-5)

        def run() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                terms = causal_objective(m, imgs, toks, masks, 0.05)
            terms.backward.backward()
            opt.step()
        return run

    result["train_images_per_s"] = throughput(train(model), train_batch)
    result["reference_train_images_per_s"] = throughput(train(ref), train_batch)
    log(f"  {name}: training {result['train_images_per_s']:.1f} img/s, "
        f"reference {result['reference_train_images_per_s']:.1f} img/s")
    return result


# report -----------------------------------------------------------------------------
def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run.py` on {m['date']}, commit `{m['commit']}`.",
        "",
        (f"- Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs ({m['logical_cpus']} logical), "
        f"{m['memory_gb']} GB RAM; torch {m['torch']} with {m['torch_threads']} threads; "
        f"Python {m['python']}; {m['platform']}."),
        (f"- Load average (1/5/15 min) at start {m['load_average_at_start']}, at end "
        f"{m.get('load_average_at_end')}: other processes on the machine slow both models."),
        (f"- Model: `{r['config']}` with random weights at {r['size']}x{r['size']}, CPU, float32. "
        "Reference = tests/reference.py (upsample then convolve at full resolution, both "
        "decoders, as the method describes) holding the same weights, measured in the same run, "
        "interleaved with the fast model."),
        "",
    ]
    if "first_prompt_s" in r:
        ratio = r["first_prompt_s"] / r["reference_forward_s"]
        speedup = r["reference_train_step_per_image_s"] / r["train_step_per_image_s"]
        inf, tr = r["details"]["inference"], r["details"]["training"]
        lines += [
            "| measurement | fast | reference | target | |",
            "|---|---|---|---|---|",
            (f"| 1. first prompt on a new image (median of {len(inf['first_prompt']['samples'])}) | "
            f"{r['first_prompt_s'] * 1e3:.0f} ms | forward {r['reference_forward_s'] * 1e3:.0f} ms "
            f"| <= 0.25x reference forward | {ratio:.3f}x, {verdict(ratio <= TARGETS['first_prompt_ratio'])} |"),
            (f"| 2. re-prompt, same image, new note (median of {len(inf['reprompt']['samples'])}) | "
            f"{r['reprompt_s'] * 1e3:.1f} ms | (a full forward) | <= 40 ms | "
            f"{verdict(r['reprompt_s'] <= TARGETS['reprompt_s'])} |"),
            (f"| 3. training step per image, batch {tr['batch']} (median) | "
            f"{r['train_step_per_image_s']:.3f} s | {r['reference_train_step_per_image_s']:.2f} s | "
            f">= 3x faster | {speedup:.1f}x, {verdict(speedup >= TARGETS['train_speedup'])} |"),
            (f"| 4. peak RSS of inference (fresh process) | {r['peak_rss_mb']:.0f} MiB | | <= 1.5 GB (1430 MiB) | "
            f"{verdict(r['peak_rss_mb'] <= TARGETS['peak_rss_mb'])} |"),
            *(f"| 4. the same, with torch {o['torch']} | {o['peak_rss_mb']:.0f} MiB | | "
              f"<= 1.5 GB (1430 MiB) | {verdict(o['peak_rss_mb'] <= TARGETS['peak_rss_mb'])} |"
              for o in r["details"].get("peak_rss_other", [])),
            "",
            "Details (seconds unless noted; min / median):",
            "",
            (f"- Reference forward, both decoders: {inf['reference_forward']['min']:.3f} / "
            f"{inf['reference_forward']['median']:.3f}; D_c only: "
            f"{inf['reference_forward_causal_only']['min']:.3f} / "
            f"{inf['reference_forward_causal_only']['median']:.3f}."),
            (f"- First prompt (`Segmenter.segment`, new image, new note; preprocessing, both "
            f"encoders, D_c's visual path, the note's conv, sigmoid, resize): "
            f"{inf['first_prompt']['min']:.3f} / {inf['first_prompt']['median']:.3f}; "
            f"a new image with a note already encoded: "
            f"{inf['first_prompt_known_note']['min']:.3f} / {inf['first_prompt_known_note']['median']:.3f}."),
            (f"- Re-prompt: {inf['reprompt']['min'] * 1e3:.1f} / {inf['reprompt']['median'] * 1e3:.1f} ms, "
            f"of which the new note's text encoder {inf['reprompt_text_encoder']['median'] * 1e3:.1f} ms "
            f"and the rest (folded KxK conv C->1, sigmoid, resize, numpy) "
            f"{inf['reprompt_without_text']['median'] * 1e3:.1f} ms."),
            *([(f"- A {inf['large_image']['shape'][0]}x{inf['large_image']['shape'][1]} 16-bit "
                "radiograph (percentile window, resize, maps at full size; no target): first "
                f"prompt {inf['large_image']['first_prompt']['median']:.3f}, re-prompt "
                f"{inf['large_image']['reprompt']['median'] * 1e3:.0f} ms.")]
              if "large_image" in inf else []),
            (f"- Training (Adam, L_c + L_s through the gradient reversal, both decoders, batch "
            f"{tr['batch']}): per image {tr['train_step_per_image']['min']:.3f} / "
            f"{tr['train_step_per_image']['median']:.3f} fast, "
            f"{tr['reference_train_step_per_image']['min']:.2f} / "
            f"{tr['reference_train_step_per_image']['median']:.2f} reference."),
            (f"- Peak RSS: VmHWM (peak resident set) of a fresh child process that imports torch and "
             f"this package's engine, loads the model from a checkpoint file with "
             f"`Segmenter.from_checkpoint` ({r['details']['peak_rss']['parameters_mb']:.0f} MiB of "
             f"float32 parameters, memory-mapped copy-on-write), runs one first prompt and 5 "
             f"re-prompts and holds one cached image feature "
             f"({r['details']['peak_rss']['cached_image_features_mb']:.0f} MiB). RSS by stage, MiB "
             "(anon = the process's own memory, file = pages of libraries and of the mapped "
             "weights that were read): "
             + "; ".join(f"{stage} {v['total']:.0f} (anon {v['anon']:.0f}, file {v['file']:.0f})"
                         for stage, v in r["details"]["peak_rss"]["rss_mb"].items()) + "."),
            ("  File-backed pages after the first prompt: " + ", ".join(
                f"{k} {v:.0f} MiB" for k, v in
                r["details"]["peak_rss"].get("file_rss_after_first_prompt_mb", {}).items())
             + f" (torch {r['details']['peak_rss'].get('torch', torch.__version__)}). The libraries' "
             "share depends on the kernel's page cache, not on this code: right after pip has "
             "written torch's CUDA libraries they sit in large folios that a fault maps whole, "
             "and the same code has measured ~250 MiB more than after those pages were evicted."),
            ("  The weights the forward pass never reads (most of the 97 MiB token embedding, "
             "D_s) are never loaded; the engine does not import open_clip or torchvision. The "
             "target is 1.5 GB = 1.5e9 bytes = 1430 MiB."),
            "",
        ]
    eq = r["details"].get("equivalence")
    if eq:
        lines += [
            ("Equivalence in this run (same weights, max |fast - reference| of the logits; eval and "
             "train: the model, both decoders; inference: the Segmenter's model loaded from the "
             "checkpoint, BatchNorms folded, D_c):"),
            "",
            *(f"- {mode}: {v['max_abs_diff']:.2e} at logit scale {v['logit_scale']:.3g} "
              f"(relative {v['relative']:.1e}; tolerance 1e-4)" for mode, v in eq.items()),
            "",
        ]
    gpu = r.get("gpu")
    lines += ["## Accelerator", ""]
    if isinstance(gpu, dict):
        lines += [
            (f"{gpu['device']}, {gpu['dtype']}; inference batch {gpu['infer_batch']} "
            f"(fast: D_c only; reference: both decoders), training batch {gpu['train_batch']} "
            "(Adam, both decoders)."),
            "",
            "| | fast | reference |",
            "|---|---|---|",
            (f"| inference, images/s | {gpu['inference_images_per_s']:.1f} | "
            f"{gpu['reference_inference_images_per_s']:.1f} |"),
            (f"| training, images/s | {gpu['train_images_per_s']:.1f} | "
            f"{gpu['reference_train_images_per_s']:.1f} |"),
            "",
            (f"fp32 max |fast - reference| on this device: {gpu['fp32_max_abs_diff']:.2e} at logit "
            f"scale {gpu['fp32_logit_scale']:.3g}."),
        ]
    else:
        lines += [str(gpu)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--config", default="rn101")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPUs)")
    parser.add_argument("--repeats", type=int, default=7, help="first-prompt / reference-forward pairs")
    parser.add_argument("--reprompts", type=int, default=20)
    parser.add_argument("--train-rounds", type=int, default=2, help="rounds of 1 reference + 2 fast steps")
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--accelerator", default="cuda", help="device for the bf16 throughput part")
    parser.add_argument("--accel-seconds", type=float, default=3.0, help="time per throughput figure")
    parser.add_argument("--accel-batch", type=int, nargs=2, default=(32, 8), metavar=("INFER", "TRAIN"))
    parser.add_argument("--skip-cpu", action="store_true", help="only the accelerator part")
    parser.add_argument("--rss-python", action="append", default=[], metavar="PYTHON",
                        help="also measure peak RSS with this interpreter (e.g. a venv with a "
                             "CPU-only torch; it needs numpy, safetensors, ftfy and regex)")
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
            del seg
            log("peak RSS (child process) ...")
            rss = bench_peak_rss(checkpoint, args.config, threads)
            rss_other = [bench_peak_rss(checkpoint, args.config, threads, py) for py in args.rss_python]
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
