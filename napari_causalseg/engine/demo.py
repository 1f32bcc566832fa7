"""The bundled demo model: `tiny` trained on the synthetic generator, on first use.

No weights ship with the package. The first call trains the model from a fixed recipe
(reproducible from its seed, a few minutes on a laptop CPU) and caches it in the
user's cache directory; later calls return the cached checkpoint at once.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .events import TrainEvent


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that determines the demo model; its hash names the cache entry."""

    version: int = 2
    seed: int = 0
    n_train: int = 800
    n_val: int = 40
    n_test: int = 80
    epochs: int = 3
    batch_size: int = 8
    lr: float = 1e-3  # from scratch; the paper's 3e-5 is for CLIP-initialised encoders
    lam: float = 0.05
    pose_jitter: float = 2.0  # real films vary in positioning far more than the default
    zoom: float = 1.0
    # QaTa-COV19's masks fill the zones their captions name, often where the film shows
    # little: zone-filling lesions of faint to moderate opacity teach the model to follow
    # the note over the lung fields instead of waiting for a bright opacity. Zero-shot on
    # 200 real QaTa test cases (per-image Dice): default lesions 0.406, fainter 0.426,
    # fainter and zone-filling 0.461 (benchmarks/FINETUNE.md has the current figures).
    zone_cover: tuple[float, float] = (1.1, 1.8)
    lesion_strength: tuple[float, float] = (0.1, 0.6)
    augment: bool = True  # note-preserving flips, pose and exposure (augment.py)

    @property
    def tag(self) -> str:
        """Cache folder name; the hash changes with any field, so a changed recipe retrains."""
        import hashlib
        import json

        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"demo-v{self.version}-s{self.seed}-n{self.n_train}-e{self.epochs}-{digest}"

    def synth_config(self):
        from .data.synth import SynthConfig

        return SynthConfig(pose_jitter=self.pose_jitter, zoom=self.zoom, zone_cover=self.zone_cover,
                           lesion_strength=self.lesion_strength)


def cache_root() -> Path:
    override = os.environ.get("NAPARI_CAUSALSEG_CACHE")
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-causalseg"))


def demo_checkpoint_path(recipe: DemoRecipe = DemoRecipe()) -> Path:
    return cache_root() / recipe.tag / "best.safetensors"


def demo_checkpoint(
    progress: bool | Callable[[TrainEvent], None] = False, recipe: DemoRecipe = DemoRecipe()
) -> Path:
    """Path of the demo checkpoint, training it first if it is not cached yet."""
    path = demo_checkpoint_path(recipe)
    if path.is_file():
        return path
    return train_demo_model(path.parent, recipe, progress)


def train_demo_model(
    out_dir: Path,
    recipe: DemoRecipe = DemoRecipe(),
    progress: bool | Callable[[TrainEvent], None] = False,
) -> Path:
    """Synthesise data, train `tiny`, evaluate on the synthetic test split.

    Training happens in a temporary folder that is renamed into place at the end, so an
    interrupted first run leaves nothing half-made behind.
    """
    from .checkpoint import load_checkpoint, save_checkpoint
    from .data.layouts import open_dataset
    from .data.synth import write_lvit_dataset
    from .evaluate import evaluate_cases
    from .factory import build_model
    from .finetune import Finetune, FinetuneConfig, FinetunePlan
    from .trainer import seed_everything

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    report = _reporter(progress)
    with tempfile.TemporaryDirectory(prefix=".demo-", dir=out_dir.parent) as tmp:
        tmp = Path(tmp)
        report(None, f"creating {recipe.n_train + recipe.n_val + recipe.n_test} synthetic radiographs")
        data = write_lvit_dataset(tmp / "data", recipe.n_train, recipe.n_val, recipe.n_test,
                                  seed=recipe.seed, cfg=recipe.synth_config())
        splits = open_dataset(data)
        seed_everything(recipe.seed)
        model, _ = build_model("tiny")
        # the fixed recipe, through the same workflow as a user's fine-tuning
        plan = FinetunePlan(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                            freeze_encoders=False, augment=recipe.augment, val_every=1,
                            step_seconds=0.0, budget_seconds=None, reasons=("demo recipe",))
        config = FinetuneConfig(out_dir=tmp / "final", name="best", lam=recipe.lam,
                                device="cpu", seed=recipe.seed)
        job = Finetune(splits, config, model=model, plan=plan)
        for event in job.run():
            report(event, None)
        final = tmp / "final"
        best, info = load_checkpoint(final / "best.safetensors")
        test = evaluate_cases(best, splits.test, batch_size=recipe.batch_size)
        summary = {k: test[k] for k in ("per_image", "global")}
        provenance = {**info.provenance, "demo_recipe": asdict(recipe),
                      "data": "synthetic (LViT layout)", "synthetic_test": summary}
        save_checkpoint(final / "best.safetensors", best, provenance)
        report(None, "demo model synthetic test Dice: per-image "
               f"{summary['per_image']['dice']:.3f}, global {summary['global']['dice']:.3f}")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(final, out_dir)
    return out_dir / "best.safetensors"


def _reporter(progress: bool | Callable[[TrainEvent], None]) -> Callable[[Any, str | None], None]:
    """A tqdm bar on stderr for `True`, the caller's callback for a callable."""
    if callable(progress):
        return lambda event, message: progress(event) if event is not None else None
    if not progress:
        return lambda event, message: None
    from tqdm import tqdm

    from .progress import RUN_STEPS, EventBar

    bar = EventBar(lambda total, desc: tqdm(total=total, desc=desc, unit="step", file=sys.stderr),
                   RUN_STEPS, "[demo model] training (first use only)")

    def show(event: TrainEvent | None, message: str | None) -> None:
        if message:
            print(f"[demo model] {message}", file=sys.stderr)
        else:
            bar.feed(event)

    return show
