"""`causalseg segment` over folders with per-image notes, formats, skipping and errors.

A tiny random model (64 px) keeps each run to a second; the masks it makes are
meaningless, but every file written is read back and compared with the run's JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image

from napari_causalseg.cli import main
from napari_causalseg.engine.images import read_image
from napari_causalseg.engine.images.nifti import read_nifti

from .dicom_files import make_dicom

NOTE_A = "Unilateral pulmonary infection, one infected area, lower right lung."
NOTE_B = "Bilateral pulmonary infection, two infected areas, lower left lung and lower right lung."


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, text: str) -> None:
    assert rc == 1, err
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("causalseg segment: error:")]
    assert len(lines) == 1 and text in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from napari_causalseg.engine import CausalCLIPSeg, get_config, save_checkpoint

    cfg = get_config("tiny")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny64.safetensors"
    save_checkpoint(path, CausalCLIPSeg(replace(cfg, vision=replace(cfg.vision, image_size=64))))
    return path


def _pixels(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    """a.png, b.tif (0.2 x 0.1 mm in resolution tags), an extension-less DICOM, and noise."""
    d = tmp_path / "xrays"
    d.mkdir()
    Image.fromarray(_pixels(40, 48, 0)).save(d / "a.png")
    tifffile.imwrite(d / "b.tif", _pixels(36, 44, 1), resolution=(100, 50), resolutionunit="CENTIMETER")
    make_dicom(d / "1.2.826.0.1.42", (_pixels(38, 46, 2).astype(np.uint16) * 16), spacing=(0.139, 0.143))
    (d / "readme.txt").write_text("not an image")
    Image.fromarray(_pixels(8, 8, 3)).save(d / ".hidden.png")
    return d


def _csv(path, rows, header=("image", "note")):
    lines = [",".join(header)] + [",".join(f'"{v}"' for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_folder_with_csv_notes_nifti_skip_and_overwrite(capsys, tmp_path, folder, checkpoint):
    pytest.importorskip("nibabel")
    notes = _csv(tmp_path / "notes.csv", [("a.png", NOTE_A), ("xrays/b.tif", NOTE_B),
                                          ("1.2.826.0.1.42", NOTE_A), ("gone.png", NOTE_B)])
    out = tmp_path / "out"
    argv = ["segment", str(folder), "--notes", str(notes), "--format", "nifti", "--out", str(out),
            "--checkpoint", str(checkpoint), "--device", "cpu"]
    rc, stdout, err = run(capsys, *argv)
    assert rc == 0, err
    report = json.loads(stdout)
    results = report["results"]
    assert [os.path.basename(r["image"]) for r in results] == ["1.2.826.0.1.42", "a.png", "b.tif"]
    assert [r["note"] for r in results] == [NOTE_A, NOTE_A, NOTE_B]
    assert "3/3" in err and "row 5: gone.png matches no image" in err  # progress bar and unused row
    spacings = {"1.2.826.0.1.42": (0.139, 0.143), "a.png": None, "b.tif": (0.2, 0.1)}
    for r in results:
        name = os.path.basename(r["image"])
        assert r["mask"] == str(out / f"{name.removesuffix('.png').removesuffix('.tif')}_lesion.nii.gz")
        mask, conf = read_nifti(r["mask"]), read_nifti(r["confounders"])
        assert mask.data.dtype == np.uint8 and set(np.unique(mask.data)) <= {0, 1}
        assert mask.data.shape == conf.data.shape == tuple(r["shape"]) == read_image(r["image"]).data.shape
        assert conf.data.dtype == np.float32 and conf.data.min() >= 0 and conf.data.max() <= 1
        assert float(mask.data.mean()) == pytest.approx(r["lesion_fraction"])
        if spacings[name] is None:
            assert mask.spacing is None  # a PNG states none, so the NIfTI says "unknown"
        else:
            assert mask.spacing == pytest.approx(spacings[name], rel=1e-6)
            assert conf.spacing == pytest.approx(spacings[name], rel=1e-6)

    # Run again: every output exists, so nothing is segmented; the model is not even loaded.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rerun = [a if a != str(checkpoint) else str(tmp_path / "no-such-model.safetensors") for a in argv]
    rc, stdout, err = run(capsys, *rerun)
    assert rc == 0, err
    assert all(r["skipped"] for r in json.loads(stdout)["results"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # One output lost: that image runs again and only the missing file is written.
    (out / "a_confounders.nii.gz").unlink()
    rc, stdout, err = run(capsys, *argv)
    assert rc == 0, err
    by_name = {os.path.basename(r["image"]): r for r in json.loads(stdout)["results"]}
    assert by_name["a.png"]["kept"] == [str(out / "a_lesion.nii.gz")]
    assert by_name["b.tif"]["skipped"] and (out / "a_confounders.nii.gz").is_file()

    # --overwrite replaces everything, atomically: no temporary file is left behind.
    (out / "a_lesion.nii.gz").write_bytes(b"stale")
    rc, stdout, err = run(capsys, *argv, "--overwrite")
    assert rc == 0, err
    assert all(not r.get("skipped") and r["kept"] == [] for r in json.loads(stdout)["results"])
    assert (out / "a_lesion.nii.gz").read_bytes() == before["a_lesion.nii.gz"]  # same model, same file
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_default_note_png_and_tiff(capsys, tmp_path, folder, checkpoint):
    notes = _csv(tmp_path / "notes.csv", [("b.tif", NOTE_B)])
    rc, stdout, err = run(capsys, "segment", str(folder / "a.png"), str(folder / "b.tif"), "--notes",
                          str(notes), "--note", NOTE_A, "--format", "tiff", "--out", str(tmp_path / "t"),
                          "--checkpoint", str(checkpoint), "--device", "cpu")
    assert rc == 0, err
    a, b = json.loads(stdout)["results"]
    assert (a["note"], b["note"]) == (NOTE_A, NOTE_B)
    mask = read_image(b["mask"])
    assert mask.spacing == pytest.approx((0.2, 0.1)) and set(np.unique(mask.data)) <= {0, 1}
    conf = read_image(b["confounders"])
    assert conf.data.dtype == np.float32 and conf.spacing == pytest.approx((0.2, 0.1))

    rc, stdout, err = run(capsys, "segment", str(folder / "a.png"), "--note", NOTE_A, "--out",
                          str(tmp_path / "p"), "--checkpoint", str(checkpoint), "--device", "cpu")
    assert rc == 0, err
    (r,) = json.loads(stdout)["results"]
    mask = np.asarray(Image.open(r["mask"]))
    conf = np.asarray(Image.open(r["confounders"]))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}  # the one convention: 0/1
    assert conf.dtype == np.uint8 and mask.shape == conf.shape == (40, 48)


def test_dicom_seg_from_the_command_line(capsys, tmp_path, folder, checkpoint):
    hd = pytest.importorskip("highdicom")
    source = folder / "1.2.826.0.1.42"
    rc, stdout, err = run(capsys, "segment", str(source), "--note", NOTE_A, "--format", "dicom-seg",
                          "--out", str(tmp_path / "seg"), "--checkpoint", str(checkpoint), "--device", "cpu")
    assert rc == 0, err
    (r,) = json.loads(stdout)["results"]
    assert r["mask"].endswith("1.2.826.0.1.42_lesion.dcm")
    src = pydicom.dcmread(source)
    seg = hd.seg.segread(r["mask"])
    pixels = seg.get_pixels_by_source_instance([src.SOPInstanceUID], segment_numbers=[1],
                                               combine_segments=False)[0, :, :, 0]
    assert pixels.shape == tuple(r["shape"]) and float(pixels.mean()) == pytest.approx(r["lesion_fraction"])
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.SegmentSequence[0].SegmentDescription == r["note"]
    conf = hd.seg.segread(r["confounders"])
    assert conf.SegmentationType == "FRACTIONAL"

    rc, _, err = run(capsys, "segment", str(folder), "--note", NOTE_A, "--format", "dicom-seg",
                     "--out", str(tmp_path / "seg2"), "--checkpoint", str(checkpoint))
    one_line_error(rc, err, "DICOM SEG needs a DICOM source image; ")
    assert "a.png is not DICOM: use --format nifti or tiff" in err
    assert not (tmp_path / "seg2").exists()


@pytest.mark.parametrize(
    ("rows", "header", "extra", "message"),
    [
        ([("a.png", NOTE_A)], ("file", "text"), [], "needs the columns 'image' and 'note'"),
        ([("a.png", NOTE_A), ("a.png", NOTE_B)], ("image", "note"), [], "already has a note (row 2)"),
        ([("a.png", NOTE_A)], ("image", "note"), [], "no note for 2 image(s)"),
        ([("a.png", "  ")], ("image", "note"), [], "row 2: the note for a.png is empty"),
        ([("a.png", NOTE_A)], ("image", "note"), ["--note", " "], "the note is empty"),
    ],
)
def test_notes_csv_errors_are_one_line(capsys, tmp_path, folder, checkpoint, rows, header, extra, message):
    notes = _csv(tmp_path / "notes.csv", rows, header)
    rc, _, err = run(capsys, "segment", str(folder), "--notes", str(notes), *extra, "--out",
                     str(tmp_path / "o"), "--checkpoint", str(checkpoint))
    one_line_error(rc, err, message)
    assert not (tmp_path / "o").exists()  # nothing written, no model loaded


def test_input_errors(capsys, tmp_path, folder, checkpoint):
    rc, _, err = run(capsys, "segment", str(folder), "--out", str(tmp_path / "o"))
    one_line_error(rc, err, "give --note (one note for every image) or --notes notes.csv")
    rc, _, err = run(capsys, "segment", str(folder), "--notes", str(tmp_path / "none.csv"), "--out", "o")
    one_line_error(rc, err, "notes file not found")
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(_pixels(8, 8, 4)).save(other / "a.png")
    rc, _, err = run(capsys, "segment", str(folder), str(other), "--note", NOTE_A, "--out", "o")
    one_line_error(rc, err, "would both write")
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run(capsys, "segment", str(empty), "--note", NOTE_A, "--out", "o")
    one_line_error(rc, err, "holds no PNG, JPEG, TIFF or DICOM image")


def test_one_unreadable_image_does_not_stop_the_batch(capsys, tmp_path, folder, checkpoint):
    (folder / "c.png").write_bytes((folder / "a.png").read_bytes()[:60])  # truncated PNG
    rc, stdout, err = run(capsys, "segment", str(folder), "--note", NOTE_A, "--out", str(tmp_path / "o"),
                          "--checkpoint", str(checkpoint), "--device", "cpu")
    assert rc == 1
    results = json.loads(stdout)["results"]
    assert [r.get("error") is not None for r in results] == [False, False, False, True]
    assert (tmp_path / "o" / "b_lesion.png").is_file() and not (tmp_path / "o" / "c_lesion.png").exists()
    assert err.strip().splitlines()[-1].startswith("causalseg segment: error: 1 of 4 image(s) failed")
    assert "c.png" in err and "Traceback" not in err


def test_unknown_format_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["segment", "a.png", "--note", NOTE_A, "--out", "o", "--format", "jpeg"])
    assert info.value.code == 2
    assert "unknown output format 'jpeg'; choose one of png, tiff, nifti, dicom-seg" in capsys.readouterr().err


def test_missing_extra_is_one_line_naming_it(capsys, monkeypatch, tmp_path, folder):
    import sys

    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if the formats extra were not installed
    rc, _, err = run(capsys, "segment", str(folder / "1.2.826.0.1.42"), "--note", NOTE_A, "--format",
                     "dicom-seg", "--out", str(tmp_path / "o"))
    one_line_error(rc, err, "DICOM SEG output needs highdicom, which is not installed: "
                            "pip install 'napari-causalseg[formats]'")
