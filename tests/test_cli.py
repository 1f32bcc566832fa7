"""`causalseg` as a user runs it: the happy path end to end, and every error as one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from napari_causalseg.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def train_tiny(capsys, data, run_dir, *options: str) -> tuple[dict, str]:
    """`causalseg train` of a random tiny model on the CPU: (its summary line, stderr)."""
    rc, out, err = run(capsys, "train", str(data), "--out", str(run_dir), "--model", "tiny",
                       "--pretrained", "none", "--batch-size", "2", "--device", "cpu", *options)
    assert rc == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "synth"
    assert main(["synth", str(root), "--count", "12", "--seed", "4"]) == 0
    return root


@pytest.mark.slow
def test_train_evaluate_segment_info(capsys, synth_dir, tmp_path):
    run_dir = tmp_path / "run"
    summary, err = train_tiny(capsys, synth_dir, run_dir, "--epochs", "2", "--steps-per-epoch", "2",
                              "--lr", "1e-3")
    assert summary["stopped"] == "max_epochs" and summary["epochs"] == 2
    for name in ("best.safetensors", "best.json", "last.safetensors", "last.json",
                 "last.state.safetensors", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert "epoch 2/2: L_c " in err and "val Dice " in err and " per image, " in err

    # resume for one more epoch
    rc, out, err = run(capsys, "train", str(synth_dir), "--out", str(run_dir), "--resume",
                       "--epochs", "3", "--batch-size", "2", "--steps-per-epoch", "2", "--lr", "1e-3",
                       "--device", "cpu")
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["epochs"] == 3
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3

    rc, out, err = run(capsys, "evaluate", str(synth_dir), "--checkpoint", str(run_dir / "best.safetensors"),
                       "--device", "cpu")
    assert rc == 0, err
    report = json.loads(out)
    assert report["split"] == "test" and report["per_image"]["n"] == len(report["cases"]) > 0
    assert "per-image" in report["per_image"]["convention"] and report["global"]["dice"] is not None

    image = synth_dir / "Test_Folder" / "img"
    first = sorted(image.iterdir())[0]
    big = tmp_path / "big.png"
    Image.open(first).resize((300, 260)).save(big)
    rc, out, err = run(capsys, "segment", str(first), str(big), "--note",
                       "Unilateral pulmonary infection, one infected area, lower right lung.",
                       "--checkpoint", str(run_dir / "best.safetensors"), "--out", str(tmp_path / "masks"),
                       "--device", "cpu")
    assert rc == 0, err
    results = json.loads(out)["results"]
    mask = np.asarray(Image.open(results[1]["mask"]))
    conf = np.asarray(Image.open(results[1]["confounders"]))
    assert mask.shape == conf.shape == (260, 300)
    assert set(np.unique(mask)) <= {0, 1}  # lesion masks are 0/1 in every format

    rc, out, err = run(capsys, "info", "--checkpoint", str(run_dir / "best.safetensors"))
    info = json.loads(out)
    assert info["config"]["name"] == "tiny" and info["parameters"] > 1_000_000
    assert info["provenance"]["train_config"]["lr"] == 1e-3
    assert info["provenance"]["data"]["layout"] == "lvit"


def test_info_for_the_paper_model(capsys):
    rc, out, _ = run(capsys, "info", "--model", "rn101")
    assert rc == 0
    info = json.loads(out)
    assert info["parameters"] == 166_902_278
    assert info["config"]["text"]["context_length"] == 20


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "/no/such/folder", "--out", "x"], "data folder not found: /no/such/folder"),
        (["info", "--model", "rn50"], "unknown model configuration 'rn50'; choose one of ['rn101', 'tiny']"),
        (["segment", "/no/image.png", "--note", "x", "--out", "o"], "image not found: /no/image.png"),
        (["info", "--checkpoint", "/no/ckpt.safetensors"], "checkpoint not found"),
        (["info", "--checkpoint", "/"], "/ is a folder, not a checkpoint file: pass the .safetensors file"),
        (["train", "/no/such/folder", "--out", "x", "--minutes", "0"], "--minutes must be positive, got 0"),
        (["train", "/no/such/folder", "--out", "x", "--minutes", "5", "--nproc", "2"],
         "--minutes needs one process"),
    ],
)
def test_errors_are_one_clear_line(capsys, argv, message):
    rc, out, err = run(capsys, *argv)
    assert rc == 1
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_data_and_note_errors(capsys, synth_dir, tmp_path):
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"not a checkpoint at all")
    rc, _, err = run(capsys, "evaluate", str(synth_dir), "--checkpoint", str(corrupt))
    assert rc == 1 and "truncated or corrupt" in err
    image = sorted((synth_dir / "Test_Folder" / "img").iterdir())[0]
    from napari_causalseg.engine import CausalCLIPSeg, get_config, save_checkpoint

    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, CausalCLIPSeg(get_config("tiny")))
    rc, _, err = run(capsys, "segment", str(image), "--note", "  ", "--checkpoint", str(ckpt),
                     "--out", str(tmp_path / "o"), "--device", "cpu")
    assert rc == 1 and "the note is empty" in err
    # A stack: the first page is segmented and the user is told so, on stderr and in the JSON.
    import tifffile

    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([np.asarray(Image.open(image))] * 3), photometric="minisblack")
    rc, out, err = run(capsys, "segment", str(stack), "--note", "Unilateral pulmonary infection, one "
                       "infected area, lower right lung.", "--checkpoint", str(ckpt),
                       "--out", str(tmp_path / "o"), "--device", "cpu")
    assert rc == 0, err
    assert f"note: {stack}: multi-page TIFF with 3 pages; only the first page was read" in err
    assert json.loads(out)["results"][0]["read_notes"] == [
        "multi-page TIFF with 3 pages; only the first page was read"]
    rc, _, err = run(capsys, "train", str(tmp_path), "--out", str(tmp_path / "r"), "--model", "tiny")
    assert rc == 1 and "error:" in err and "Traceback" not in err
    rc, _, err = run(capsys, "train", str(synth_dir), "--out", str(tmp_path / "none"), "--resume")
    assert rc == 1 and "no " in err and "last.safetensors" in err


def test_threads_option(capsys):
    import torch

    before = torch.get_num_threads()
    try:
        rc, out, _ = run(capsys, "--threads", "1", "info", "--model", "tiny")
        assert rc == 0 and json.loads(out)["config"]["name"] == "tiny"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as info:
        main(["--threads", "0", "info"])
    assert info.value.code == 2
    assert "expected a whole number of at least 1, got '0'" in capsys.readouterr().err


def test_usage_errors_exit_2():
    out = subprocess.run([sys.executable, "-m", "napari_causalseg.cli", "train"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "usage:" in out.stderr and "required" in out.stderr
    out = subprocess.run([sys.executable, "-m", "napari_causalseg.cli", "segment", "a.png", "--note",
                          "n", "--out", "o", "--threshold", "1.5"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "threshold 1.5 is not a probability between 0 and 1" in out.stderr
    out = subprocess.run([sys.executable, "-m", "napari_causalseg.cli", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "segment" in out.stdout


def _sgseg_copy(root, counts):
    """A small SGSeg-layout copy (synthetic pixels) holding only the given splits."""
    from napari_causalseg.engine.data.synth import SynthConfig, generate

    ann = {}
    for split, n in counts.items():
        d = root / "images" / split
        (d / "images").mkdir(parents=True)
        (d / "masks").mkdir(parents=True)
        ann[split] = []
        for i, case in enumerate(generate(n, seed=len(split), cfg=SynthConfig(size=64))):
            name = f"{split}_{i}.png"
            Image.fromarray(case.image).save(d / "images" / name)
            Image.fromarray(case.mask.astype(np.uint8) * 255).save(d / "masks" / f"mask_{name}")
            ann[split].append({"image_path": f"mask_{name}", "caption": case.note})
    (root / "prompts").mkdir()
    full = {"train": [], "valid": [], "test": [], **ann}
    (root / "prompts" / "annotation.json").write_text(json.dumps(full))
    return root


def test_finetune_then_evaluate_a_copy_that_holds_only_the_test_split(capsys, tmp_path):
    import torch

    from napari_causalseg.engine import CausalCLIPSeg, get_config, save_checkpoint

    cfg = get_config("tiny")
    from dataclasses import replace

    torch.manual_seed(0)
    start = tmp_path / "start.safetensors"
    save_checkpoint(start, CausalCLIPSeg(replace(cfg, vision=replace(cfg.vision, image_size=64))))
    data = _sgseg_copy(tmp_path / "QaTa", {"train": 6, "valid": 5, "test": 3})
    rc, out, err = run(capsys, "finetune", str(data), "--checkpoint", str(start), "--epochs", "1",
                       "--device", "cpu")
    assert rc == 1 and "out_dir" in err  # a data set is not an annotation folder
    rc, out, err = run(capsys, "finetune", str(data), "--checkpoint", str(start), "--epochs", "2",
                       "--out", str(tmp_path / "models"), "--name", "ft", "--device", "cpu")
    assert rc == 0, err
    result = json.loads(out)
    assert result["checkpoint"] == str(tmp_path / "models" / "ft.safetensors")
    assert {"per_image", "global"} <= set(result["before"]) and {"per_image", "global"} <= set(result["after"])
    assert result["plan"]["epochs"] == 2 and result["verdict"] in ("improved", "worse", "no clear change")
    assert "fine-tuning on 6 case(s), validating on 5" in err
    test_only = _sgseg_copy(tmp_path / "test-only", {"test": 3})
    rc, out, err = run(capsys, "evaluate", str(test_only), "--checkpoint", str(result["checkpoint"]),
                       "--split", "test", "--device", "cpu")
    assert rc == 0, err
    assert json.loads(out)["per_image"]["n"] == 3
    rc, out, err = run(capsys, "finetune", str(test_only), "--checkpoint", str(start), "--out", str(tmp_path))
    assert rc == 1 and "no training cases" in err and "images/train" in err


def test_explicit_zero_values_are_the_users_not_the_defaults(capsys, synth_dir, tmp_path):
    """`--patience 0` stops after the first epoch (not after the default 100); `--lr 0` is
    refused by name instead of silently training at the default rate."""
    base = ["train", str(synth_dir), "--model", "tiny", "--pretrained", "none", "--epochs", "3",
            "--batch-size", "2", "--steps-per-epoch", "1", "--device", "cpu"]
    rc, _, err = run(capsys, *base, "--out", str(tmp_path / "p0"), "--patience", "0")
    assert rc == 0, err
    assert len((tmp_path / "p0" / "metrics.jsonl").read_text().splitlines()) == 1
    rc, _, err = run(capsys, *base, "--out", str(tmp_path / "lr0"), "--lr", "0")
    assert rc == 1 and "learning rate must be a positive number, got 0.0" in err
    assert not (tmp_path / "lr0" / "last.safetensors").exists()


def test_train_for_a_few_seconds_stops_on_time_and_keeps_the_best(capsys, synth_dir, tmp_path):
    """--minutes: the run ends when the time is spent (not at --epochs), validated, with
    its best checkpoint written."""
    run_dir = tmp_path / "timed"
    summary, _ = train_tiny(capsys, synth_dir, run_dir, "--epochs", "100000", "--steps-per-epoch", "1",
                            "--minutes", "0.03")
    assert summary["stopped"] == "time_limit" and 1 <= summary["epochs"] < 100000
    assert (run_dir / "best.safetensors").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val"] is not None  # the last epoch is validated even off the schedule
    assert 0.03 * 60 * 0.9 <= records[-1]["elapsed_s"] < 0.03 * 60 + 60  # the budget, not the epochs
