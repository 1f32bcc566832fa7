"""The fine-tuning workflow: fixed splits, a plan from cases and budget, an honest verdict,
atomic promotion, cancel without a trace, and the child process that runs it for napari."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_causalseg.engine import CausalCLIPSeg, get_config, save_checkpoint
from napari_causalseg.engine.checkpoint import read_checkpoint_info
from napari_causalseg.engine.data.annotations import AnnotationStore, split_for_new_case
from napari_causalseg.engine.data.layouts import open_dataset
from napari_causalseg.engine.data.synth import SynthConfig, generate
from napari_causalseg.engine.finetune import (
    MIN_VALIDATION_CASES,
    Finetune,
    FinetuneConfig,
    judge,
    plan_finetune,
    result_of,
)
from napari_causalseg.engine.finetune_process import (
    FinetuneCrashed,
    FinetuneFailed,
    FinetuneProcess,
)

SIZE = 64


def tiny(size: int = SIZE):
    cfg = get_config("tiny")
    return replace(cfg, vision=replace(cfg.vision, image_size=size))


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "start" / "tiny.safetensors"
    save_checkpoint(path, CausalCLIPSeg(tiny()), {"note": "random test model"})
    return path


def annotation_folder(root: Path, n: int, seed: int = 0) -> AnnotationStore:
    store = AnnotationStore(root)
    for i, case in enumerate(generate(n, seed=seed, cfg=SynthConfig(size=SIZE))):
        store.add_case(f"case{i:02d}", case.image, case.mask, case.note)
    return store


# ------------------------------------------------------------------ splits


def test_every_fifth_case_is_held_out_and_never_moves(tmp_path):
    assert [split_for_new_case(n, sum(1 for k in range(n) if (k + 1) % 5 == 0)) for n in range(10)] == \
        ["train"] * 4 + ["val"] + ["train"] * 4 + ["val"]
    store = annotation_folder(tmp_path / "ann", 7)
    first = store.splits()
    assert [k for k, v in first.items() if v == "val"] == ["case04"]
    assert all(store.meta(k)["split"] == v for k, v in first.items())  # stored when added
    # cases added later, even ones that sort first, leave earlier splits as they were
    img, mask = np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE, SIZE), bool)
    for name in ("aaa", "aab", "aac"):
        store.add_case(name, img, mask, "Unilateral pulmonary infection, one infected area, lower right lung.")
    later = store.splits()
    assert {k: later[k] for k in first} == first
    assert sorted(later.values()).count("val") == 2  # 10 cases, 2 held out
    ds = open_dataset(tmp_path / "ann")
    assert {c.name for c in ds.val} == {k for k, v in later.items() if v == "val"}


def test_cases_without_a_stored_split_get_one_once(tmp_path):
    store = annotation_folder(tmp_path / "ann", 6)
    for name in store.splits():
        (store.cases_dir / name / "meta.json").unlink()  # a folder from before splits were stored
    assert store.splits()["case04"] == "val"
    assert store.assign_splits() == [f"case{i:02d}" for i in range(6)]
    assert store.meta("case04")["split"] == "val" and store.assign_splits() == []


# ------------------------------------------------------------------ verdict and plan


def _report(scores: dict[str, float]) -> dict:
    mean = float(np.mean(list(scores.values())))
    return {"per_image": {"dice": mean}, "global": {"dice": mean},
            "cases": [{"name": k, "dice": v, "iou": v} for k, v in scores.items()]}


def test_judge_needs_enough_cases_and_a_change_beyond_its_noise():
    names = [f"c{i}" for i in range(8)]
    before = _report(dict.fromkeys(names, 0.5))
    better = _report({n: 0.6 + 0.01 * i for i, n in enumerate(names)})
    noisy = _report({n: 0.5 + (0.2 if i % 2 else -0.19) for i, n in enumerate(names)})
    worse = _report({n: 0.4 - 0.01 * i for i, n in enumerate(names)})
    assert judge(before, better)[0] == "improved"
    assert judge(before, worse)[0] == "worse"
    assert judge(before, noisy)[0] == "no clear change"
    few = names[: MIN_VALIDATION_CASES - 1]
    verdict, sentence = judge(_report(dict.fromkeys(few, 0.5)), _report(dict.fromkeys(few, 0.9)))
    assert verdict == "too few validation cases" and "too few to judge" in sentence
    assert judge(None, None)[0] == "no validation cases"


def test_plan_fills_the_budget_and_explicit_choices_win():
    cfg = FinetuneConfig(minutes=5)
    plan = plan_finetune(64, 16, cfg, clip_initialised=False, step_seconds=0.5, eval_seconds_per_case=0.05)
    assert plan.batch_size == 8 and plan.lr == 1e-3 and not plan.freeze_encoders
    assert plan.budget_seconds == 300 and plan.epochs >= 1000  # the time decides, not the epochs
    expected_epochs = 300 * 0.9 / (8 * 0.5)  # 8 steps of 0.5 s an epoch
    assert expected_epochs / plan.val_every * 16 * 0.05 <= 0.1 * 300 + 16 * 0.05  # validation <= ~10 %
    assert plan.val_every > 1
    clip = plan_finetune(64, 16, cfg, clip_initialised=True, step_seconds=5, eval_seconds_per_case=1)
    assert clip.freeze_encoders and clip.lr == 1e-4
    mine = plan_finetune(64, 16, FinetuneConfig(epochs=3, lr=5e-4, batch_size=2, freeze_encoders=True),
                         clip_initialised=False, step_seconds=0.5, eval_seconds_per_case=0.05)
    assert (mine.epochs, mine.lr, mine.batch_size, mine.freeze_encoders) == (3, 5e-4, 2, True)
    assert mine.budget_seconds is None  # fixed epochs: no time limit
    with pytest.raises(ValueError, match="budget"):
        FinetuneConfig(minutes=0)


# ------------------------------------------------------------------ the workflow


def test_finetune_promotes_a_new_checkpoint_beside_the_previous_one(tmp_path, checkpoint):
    annotation_folder(tmp_path / "ann", 10)
    start_bytes = checkpoint.read_bytes()
    config = FinetuneConfig(checkpoint=checkpoint, epochs=2, device="cpu", name="mine")
    events = list(Finetune(tmp_path / "ann", config).run())
    kinds = [e.kind for e in events]
    assert kinds[0] == "prepare" and "baseline" in kinds and "plan" in kinds
    assert kinds.count("epoch") == 2 and kinds[-1] == "finished"
    assert result_of(iter(events)).plan.budget_seconds is None
    result = events[-1].result
    assert result.checkpoint == tmp_path / "ann" / "models" / "mine.safetensors"
    assert result.verdict == "too few validation cases" and len(result.val_cases) == 2
    assert result.before["per_image"]["n"] == 2 and result.after["per_image"]["n"] == 2
    info = read_checkpoint_info(result.checkpoint)
    assert info.provenance["finetune_plan"]["epochs"] == 2
    assert info.provenance["finetuned_from"] == str(checkpoint)
    assert set(info.provenance["val_case_names"]) == set(result.val_cases)
    assert info.provenance["finetune"]["verdict"] == result.verdict
    assert (tmp_path / "ann" / "models" / "mine.metrics.jsonl").is_file()
    # nothing else is left in models/, and the start model is untouched
    assert sorted(p.name for p in (tmp_path / "ann" / "models").iterdir()) == \
        ["mine.json", "mine.metrics.jsonl", "mine.safetensors"]
    assert checkpoint.read_bytes() == start_bytes
    assert json.dumps(result.to_dict())  # what the CLI prints and the child process sends


def test_a_time_budget_ends_the_run_with_the_learning_rate_run_down(tmp_path, checkpoint):
    annotation_folder(tmp_path / "ann", 6)
    t0 = time.perf_counter()
    events = list(Finetune(tmp_path / "ann", FinetuneConfig(checkpoint=checkpoint, minutes=0.15,
                                                           device="cpu")).run())
    steps = [e for e in events if e.kind == "step"]
    done = next(e for e in events if e.kind == "done")
    assert done.stopped == "time_limit" and len(steps) > 10
    assert time.perf_counter() - t0 < 0.15 * 60 + 30
    plan = events[-1].result.plan
    assert done.elapsed_s >= plan.budget_seconds  # it stopped because the budget was spent

    def cosine(t: float) -> float:  # lr -> 0 over the budget
        return plan.lr * 0.5 * (1 + math.cos(math.pi * min(t / plan.budget_seconds, 1.0)))

    previous_end = 0.0
    for e in steps:  # each step's lr was set between the previous step's end and its own end
        warm = min(1.0, e.global_step / 10)  # linear warm-up over the first 10 steps
        assert cosine(e.elapsed_s) * warm - 1e-12 <= e.lr <= cosine(previous_end) * warm + 1e-12
        previous_end = e.elapsed_s
    assert events[-1].result.checkpoint.is_file()


def test_cancel_writes_no_model(tmp_path, checkpoint):
    annotation_folder(tmp_path / "ann", 6)
    job = Finetune(tmp_path / "ann", FinetuneConfig(checkpoint=checkpoint, epochs=50, device="cpu"))
    events = []
    for event in job.run():
        events.append(event)
        if event.kind == "step":
            job.cancel()
    assert events[-1].kind == "finished" and events[-1].result.verdict == "cancelled"
    assert events[-1].result.checkpoint is None
    assert list((tmp_path / "ann" / "models").glob("*")) == []


def test_a_data_set_needs_an_output_folder_and_training_cases(tmp_path, checkpoint):
    from napari_causalseg.engine.data.synth import write_lvit_dataset

    write_lvit_dataset(tmp_path / "lvit", 4, 2, 2, seed=0, cfg=SynthConfig(size=SIZE))
    with pytest.raises(ValueError, match="out_dir"):
        _ = Finetune(tmp_path / "lvit", FinetuneConfig(checkpoint=checkpoint)).out_dir
    result = result_of(Finetune(tmp_path / "lvit", FinetuneConfig(
        checkpoint=checkpoint, out_dir=tmp_path / "out", epochs=1, device="cpu")).run())
    assert result.checkpoint.parent == tmp_path / "out"
    store = AnnotationStore(tmp_path / "only-test")
    store.add_case("t", np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE, SIZE), bool),
                   "Unilateral pulmonary infection, one infected area, lower right lung.", meta={"split": "test"})
    with pytest.raises(ValueError, match="no training cases"):
        Finetune(tmp_path / "only-test", FinetuneConfig(checkpoint=checkpoint))


# ------------------------------------------------------------------ the child process


def _wait_for_step(proc: FinetuneProcess):
    events = proc.events()
    for event in events:
        if event["kind"] == "step":
            return events
    raise AssertionError("no training step arrived")


def test_child_process_runs_to_the_end(tmp_path, checkpoint):
    annotation_folder(tmp_path / "ann", 6)
    proc = FinetuneProcess(tmp_path / "ann", FinetuneConfig(checkpoint=checkpoint, epochs=1, device="cpu"),
                           threads=1, log_dir=tmp_path / "logs")
    events = list(proc.events())
    assert events[-1]["kind"] == "finished"
    assert Path(events[-1]["result"]["checkpoint"]).is_file()
    assert proc.process.returncode == 0


def test_a_killed_child_is_reported_and_loses_nothing(tmp_path, checkpoint):
    store = annotation_folder(tmp_path / "ann", 6)
    before = {p: p.read_bytes() for p in sorted((tmp_path / "ann" / "cases").rglob("*")) if p.is_file()}
    start = checkpoint.read_bytes()
    proc = FinetuneProcess(tmp_path / "ann", FinetuneConfig(checkpoint=checkpoint, epochs=500, device="cpu"),
                           threads=1, log_dir=tmp_path / "logs")
    events = _wait_for_step(proc)
    os.kill(proc.pid, signal.SIGKILL)  # as the out-of-memory killer would
    with pytest.raises(FinetuneCrashed, match="SIGKILL"):
        list(events)
    after = {p: p.read_bytes() for p in sorted((tmp_path / "ann" / "cases").rglob("*")) if p.is_file()}
    assert after == before and checkpoint.read_bytes() == start
    assert not list((tmp_path / "ann" / "models").glob("*.safetensors"))
    assert len(store.cases()) == 6
    # the next run works
    again = FinetuneProcess(tmp_path / "ann", FinetuneConfig(checkpoint=checkpoint, epochs=1, device="cpu"),
                            threads=1, log_dir=tmp_path / "logs")
    assert list(again.events())[-1]["kind"] == "finished"


def test_child_cancel_and_errors(tmp_path, checkpoint):
    annotation_folder(tmp_path / "ann", 6)
    proc = FinetuneProcess(tmp_path / "ann", FinetuneConfig(checkpoint=checkpoint, epochs=500, device="cpu"),
                           threads=1, log_dir=tmp_path / "logs")
    events = _wait_for_step(proc)
    t0 = time.perf_counter()
    proc.cancel()
    rest = list(events)
    assert time.perf_counter() - t0 < 30
    assert rest[-1]["kind"] == "finished" and rest[-1]["result"]["verdict"] == "cancelled"
    bad = FinetuneProcess(tmp_path / "nowhere", FinetuneConfig(checkpoint=checkpoint), log_dir=tmp_path / "logs")
    with pytest.raises(FinetuneFailed, match="nowhere"):
        list(bad.events())
