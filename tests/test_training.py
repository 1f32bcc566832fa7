"""Training: it learns, it resumes exactly, it scales to 2 DDP ranks, it never half-writes."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from napari_causalseg.engine import CausalCLIPSeg, ModelConfig, get_config, load_checkpoint
from napari_causalseg.engine.data.layouts import open_dataset
from napari_causalseg.engine.data.synth import SynthConfig, write_lvit_dataset
from napari_causalseg.engine.evaluate import evaluate_cases
from napari_causalseg.engine.train_config import TrainConfig
from napari_causalseg.engine.trainer import Trainer

SIZE = 128  # the tiny model at 128 px learns the synthetic task in ~20 s on 2 cores


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_lvit_dataset(root, n_train=48, n_val=12, n_test=16, seed=3, cfg=SynthConfig(size=SIZE))
    return open_dataset(root)


def tiny_config(size: int = SIZE) -> ModelConfig:
    cfg = get_config("tiny")
    return replace(cfg, vision=replace(cfg.vision, image_size=size))


def fresh_model(seed: int = 0) -> CausalCLIPSeg:
    torch.manual_seed(seed)
    return CausalCLIPSeg(tiny_config())


@pytest.mark.slow
def test_loss_falls_and_dice_rises_well_above_untrained(synth_data, tmp_path):
    model = fresh_model()
    before = evaluate_cases(model, synth_data.test)["per_image"]["dice"]
    config = TrainConfig(epochs=5, batch_size=4, lr=1e-3, device="cpu", seed=0)
    events = list(Trainer(model, synth_data.train, synth_data.val, config, out_dir=tmp_path).run())
    steps = [e for e in events if e.kind == "step"]
    epochs = [e for e in events if e.kind == "epoch"]
    assert len(epochs) == 5 and events[-1].kind == "done" and events[-1].stopped == "max_epochs"
    first = sum(e.loss_c for e in steps[:3]) / 3
    last = sum(e.loss_c for e in steps[-3:]) / 3
    best, _ = load_checkpoint(tmp_path / "best.safetensors")
    after = evaluate_cases(best, synth_data.test)["per_image"]["dice"]
    print(f"\nL_c {first:.3f} -> {last:.3f}; synthetic test Dice untrained {before:.3f} -> trained {after:.3f}")
    assert last < 0.7 * first
    assert after > before + 0.25 and after > 0.5
    assert all(e.eta_s is not None and e.eta_s >= 0 for e in steps)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5]
    assert {"per_image", "global"} <= set(json.loads(lines[-1])["val"])


def test_resume_continues_exactly_where_it_stopped(synth_data, tmp_path):
    config = TrainConfig(epochs=3, batch_size=4, lr=1e-3, device="cpu", seed=1, steps_per_epoch=2)
    straight = fresh_model()
    list(Trainer(straight, synth_data.train, synth_data.val[:4], config, out_dir=tmp_path / "a").run())

    interrupted = fresh_model()
    trainer = Trainer(interrupted, synth_data.train, synth_data.val[:4], config, out_dir=tmp_path / "b")
    for event in trainer.run():
        if event.kind == "epoch" and event.epoch == 1:
            trainer.cancel()
    assert event.kind == "done" and event.stopped == "cancelled" and event.epoch == 1

    resumed, _ = load_checkpoint(tmp_path / "b" / "last.safetensors")
    trainer = Trainer(resumed, synth_data.train, synth_data.val[:4], config, out_dir=tmp_path / "b")
    trainer.load_state(tmp_path / "b" / "last.state.safetensors")
    events = list(trainer.run())
    assert [e.epoch for e in events if e.kind == "epoch"] == [2, 3]
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_cancel_keeps_complete_checkpoints(synth_data, tmp_path):
    config = TrainConfig(epochs=5, batch_size=4, lr=1e-3, device="cpu", steps_per_epoch=2)
    trainer = Trainer(fresh_model(), synth_data.train, synth_data.val[:4], config, out_dir=tmp_path)
    seen = []
    for event in trainer.run():
        seen.append(event.kind)
        if event.kind == "step" and event.epoch == 2:
            trainer.cancel()
    assert seen.count("epoch") == 1 and seen[-1] == "done"
    model, info = load_checkpoint(tmp_path / "best.safetensors")
    assert info.provenance["epochs_completed"] == 1
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))


def test_frozen_encoders_stay_fixed(synth_data):
    model = fresh_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=1, batch_size=4, lr=1e-2, device="cpu", steps_per_epoch=2,
                         freeze_encoders=True)
    list(Trainer(model, synth_data.train, [], config).run())
    after = model.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        pretrained = key.startswith("text.") or (
            key.startswith("vision.backbone.") and ".attnpool.connect." not in key
        )
        if pretrained:
            assert not changed, f"{key} moved although the CLIP towers are frozen"
    assert not torch.equal(before["causal_decoder.text.weight"], after["causal_decoder.text.weight"])


def test_bad_notes_fail_before_training(synth_data, tmp_path):
    from napari_causalseg.engine.data.cases import DatasetError

    bad = [replace(synth_data.train[0], note="   ")] + synth_data.train[1:4]
    with pytest.raises(DatasetError, match=f"case {bad[0].name}.*empty"):
        Trainer(fresh_model(), bad, [], TrainConfig(device="cpu"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data_root: str, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        splits = open_dataset(data_root)
        torch.manual_seed(100 + rank)  # different initial weights: DDP must sync them
        model = CausalCLIPSeg(tiny_config())
        config = TrainConfig(epochs=2, batch_size=2, lr=1e-3, device="cpu", steps_per_epoch=2)
        trainer = Trainer(model, splits.train[:8], splits.val[:4], config,
                          out_dir=os.path.join(tmp, f"run-rank{rank}"))
        events = list(trainer.run())
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  os.path.join(tmp, f"weights{rank}.safetensors"))
        with open(os.path.join(tmp, f"val{rank}.json"), "w") as fh:
            json.dump([e.val for e in events if e.kind == "epoch"], fh)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_cpu_ranks_agree_and_only_rank0_writes(synth_data, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(synth_data.root), str(tmp_path)), nprocs=2)
    w0 = load_file(str(tmp_path / "weights0.safetensors"))
    w1 = load_file(str(tmp_path / "weights1.safetensors"))
    assert w0.keys() == w1.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    assert (tmp_path / "run-rank0" / "best.safetensors").is_file()
    assert not (tmp_path / "run-rank1").exists()
    v0 = json.loads((tmp_path / "val0.json").read_text())
    v1 = json.loads((tmp_path / "val1.json").read_text())
    assert v0 == v1 and v0[-1]["per_image"]["n"] == 4  # every val case counted once


@pytest.mark.parametrize(("field", "value", "message"), [
    ("lr", 0.0, "learning rate must be a positive number, got 0.0"),
    ("lr", float("nan"), "learning rate must be a positive number"),
    ("epochs", 0, "epochs must be at least 1, got 0"),
    ("batch_size", 0, "batch size must be at least 1"),
    ("lam", -0.1, "lambda must be a non-negative number"),
    ("patience", -1, "patience must be 0 or more epochs"),
    ("time_budget_s", 0.0, "the time budget must be positive"),
])
def test_train_config_refuses_values_that_cannot_train(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})
    TrainConfig(patience=0, lam=0.0)  # the edges that do make sense are accepted


def test_a_time_budget_is_refused_under_ddp(monkeypatch, synth_data):
    """Each rank's clock would stop the run at its own step (and set its own learning
    rate): the next all-reduce would hang, so a time budget needs one process."""
    from napari_causalseg.engine import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "_dist", lambda: (0, 2))  # as if rank 0 of 2
    config = TrainConfig(epochs=5, batch_size=4, device="cpu", time_budget_s=60)
    with pytest.raises(ValueError, match="time budget needs one process"):
        Trainer(fresh_model(), synth_data.train, synth_data.val[:4], config)
