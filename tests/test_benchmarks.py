"""The benchmark script runs end to end and reports what it promises (not timed here)."""

from __future__ import annotations

import json
import sys

import pytest

from benchmarks import run

KEYS = {
    "first_prompt_s", "reprompt_s", "train_step_per_image_s", "peak_rss_mb",
    "reference_forward_s", "reference_train_step_per_image_s", "max_abs_diff", "device",
}


@pytest.mark.slow
def test_benchmark_runs_on_the_tiny_model(tmp_path, capsys):
    out = tmp_path / "RESULTS.md"
    run.main([
        "--config", "tiny", "--json", "--repeats", "1", "--reprompts", "2", "--train-rounds", "1",
        "--train-batch", "2", "--accelerator", "cpu", "--accel-seconds", "0",
        "--accel-batch", "2", "2", "--out", str(out), "--rss-python", sys.executable,
        "--batch-images", "3", "--batch-singles", "1", "--batch-large", "1", "--session-images", "3",
    ])
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) >= KEYS
    assert printed["max_abs_diff"] <= 1e-4 * printed["logit_scale"]
    assert printed["peak_rss_mb"] > 0 and printed["gpu"]["train_images_per_s"] > 0
    report = out.read_text()
    assert "first prompt" in report and "peak RSS" in report and printed["machine"]["commit"] in report
    other = printed["details"]["peak_rss_other"]
    assert len(other) == 1 and other[0]["python"] == sys.executable and other[0]["peak_rss_mb"] > 0
    assert f"the same, with torch {other[0]['torch']}" in report
    assert set(printed["details"]["peak_rss"]["file_rss_after_first_prompt_mb"]) == {"checkpoint", "libraries"}
    assert printed["details"]["batch_cli"]["folder_images_per_s"] > 0 and "causalseg segment" in report
    assert printed["details"]["inference"]["prefetch"]["notes"] > 50 and "Warm re-prompt" in report
    session = printed["details"]["inference"]["session"]
    assert len(session["minor_faults"]) == 3 and "A long session (3 new images" in report
    assert "Minor page faults per call" in report
    startup = printed["details"]["peak_rss"]["startup_s"]
    assert set(startup) == {"imports", "load", "first_prompt"} and min(startup.values()) > 0
    assert f"first prompt {startup['first_prompt']:.3f} s" in report


def test_qata_subset_is_a_seeded_sgseg_copy_the_trainer_reads(lvit_root, tmp_path):
    """From another layout: the chosen cases, their pixels and notes, in SGSeg's layout;
    the same seed chooses the same cases; a non-empty destination is refused."""
    from benchmarks.qata_subset import write_subset
    from napari_causalseg.engine.data.layouts import open_dataset

    source = open_dataset(lvit_root)
    originals = {c.name: c for c in source.train + source.val}
    written = write_subset(lvit_root, tmp_path / "a", {"train": 3, "val": 1}, seed=1)
    assert written["train"] > 0 and written["val"] > 0
    subset = open_dataset(tmp_path / "a")
    assert subset.layout == "sgseg" and (len(subset.train), len(subset.val)) == (3, 1)
    for case in subset.train + subset.val:
        original = originals[case.name]
        assert case.note == original.note
        assert case.image_path.read_bytes() == original.image_path.read_bytes()
        assert case.mask_path.read_bytes() == original.mask_path.read_bytes()
    write_subset(lvit_root, tmp_path / "b", {"train": 3, "val": 1}, seed=1)
    again = open_dataset(tmp_path / "b")
    assert [c.name for c in again.train] == [c.name for c in subset.train]
    with pytest.raises(SystemExit, match="not empty"):
        write_subset(lvit_root, tmp_path / "a", {"train": 1, "val": 1})
    with pytest.raises(SystemExit, match="fewer than"):
        write_subset(lvit_root, tmp_path / "c", {"train": 999, "val": 1})
