"""bf16 throughput of the fast model and the reference on an accelerator (run.py's last part)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import build_models, clock, cpu_model, inputs, log
from napari_causalseg.engine import NoteTokenizer
from napari_causalseg.engine.objective import causal_objective
from napari_causalseg.engine.optim import adam


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

    def train(m, optimizer=torch.optim.Adam) -> Callable[[], None]:
        m.train()
        imgs, toks, masks = (t.to(dev) for t in inputs(tokenizer, train_batch, size, seed=5))
        opt = optimizer(m.parameters(), lr=3e-5)

        def run() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                terms = causal_objective(m, imgs, toks, masks, 0.05)
            terms.backward.backward()
            opt.step()
        return run

    result["train_images_per_s"] = throughput(train(model, adam), train_batch)  # the Trainer's
    result["reference_train_images_per_s"] = throughput(train(ref), train_batch)
    log(f"  {name}: training {result['train_images_per_s']:.1f} img/s, "
        f"reference {result['reference_train_images_per_s']:.1f} img/s")
    return result
