"""Where CLIP's BPE vocabulary comes from when open_clip is not installed (bpe_source.py)."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from napari_causalseg.engine.bpe import BPE, load_vocabulary
from napari_causalseg.engine.bpe_source import (
    ENV_VAR,
    HUB_FILE,
    HUB_REPO,
    VocabularyError,
    find_vocabulary,
    open_clip_vocabulary,
)

from .conftest import NOTE

#: Run first in a child process: open_clip and torchvision cannot be imported or found,
#: as on an install without them.
HIDE_OPEN_CLIP = (
    "import sys, importlib.abc\n"
    "class Hide(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('open_clip', 'torchvision'):\n"
    "            raise ModuleNotFoundError(name)\n"
    "sys.meta_path.insert(0, Hide())\n"
)


def open_clip_file() -> Path:
    path = open_clip_vocabulary()
    assert path is not None, "the tests' open_clip must ship its vocabulary"
    return path


def write_merges_txt(path: Path) -> Path:
    """CLIP's merges as the Hub's tokenizer serves them: plain text, its own header line."""
    lines = gzip.decompress(open_clip_file().read_bytes()).decode("utf-8").split("\n")
    path.write_text("\n".join(["#version: 0.2", *lines[1:48895]]) + "\n", encoding="utf-8")
    return path


def child_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), **extra}


def test_merges_txt_is_the_same_vocabulary_as_open_clips_file(tmp_path):
    merges = write_merges_txt(tmp_path / "merges.txt")
    theirs, ours = load_vocabulary(open_clip_file()), load_vocabulary(merges)
    assert ours.encoder == theirs.encoder and ours.ranks == theirs.ranks
    assert len(ours.encoder) == 49408 and ours.sot_id == 49406 and ours.eot_id == 49407
    assert BPE(ours).encode(NOTE.lower()) == BPE(theirs).encode(NOTE.lower())


def test_the_environment_variable_comes_first(tmp_path, monkeypatch):
    merges = write_merges_txt(tmp_path / "merges.txt")
    monkeypatch.setenv(ENV_VAR, str(merges))
    assert find_vocabulary(allow_download=False) == merges
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere.txt.gz"))
    with pytest.raises(VocabularyError, match=f"{ENV_VAR} names .*nowhere.txt.gz, which is not a file"):
        find_vocabulary(allow_download=False)


def test_open_clips_file_is_found_without_importing_open_clip(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    code = ("import sys\nfrom napari_causalseg.engine.bpe_source import find_vocabulary\n"
            "print(find_vocabulary(allow_download=False), 'open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(open_clip_file()), "False"]


@pytest.mark.parametrize("content", [
    b"#version: 0.2\ni n\nt h\n",  # too few merges
    gzip.compress(b"#version: 0.2\n" + b"a b c\n" * 48894),  # not pairs
    b"\x1f\x8b\x08 not really gzip",
])
def test_a_file_that_is_not_the_vocabulary_is_refused(tmp_path, content):
    path = tmp_path / "merges.txt"
    path.write_bytes(content)
    with pytest.raises(VocabularyError, match="merges.txt"):
        load_vocabulary(path)


def test_without_any_source_the_error_names_every_way_to_get_it(tmp_path):
    code = HIDE_OPEN_CLIP + (
        "from napari_causalseg.engine import NoteTokenizer\n"
        "try:\n    NoteTokenizer(20)\n"
        "except ValueError as exc:\n    print(type(exc).__name__ + ': ' + str(exc))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=child_env(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("VocabularyError: CLIP's BPE vocabulary was not found.")
    for way in ("pip install --no-deps open_clip_torch", ENV_VAR, f"{HUB_REPO}/{HUB_FILE}"):
        assert way in out.stdout


def test_segmenting_needs_neither_open_clip_nor_torchvision(tmp_path, tiny_model):
    """The Hub's merges.txt, from huggingface_hub's cache, is enough to segment a note; the
    token ids are those of open_clip's file."""
    from napari_causalseg.engine import NoteTokenizer, save_checkpoint

    snapshot = tmp_path / "hub" / f"models--{HUB_REPO.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    write_merges_txt(snapshot / HUB_FILE)
    save_checkpoint(tmp_path / "m.safetensors", tiny_model)
    code = HIDE_OPEN_CLIP + (
        "import numpy as np, napari_causalseg.engine as e\n"
        "from napari_causalseg.engine.bpe_source import find_vocabulary\n"
        "print(find_vocabulary(allow_download=False))\n"
        f"seg = e.Segmenter.from_checkpoint({str(tmp_path / 'm.safetensors')!r}, "
        "e.SegmenterConfig(device='cpu'))\n"
        f"r = seg.segment(np.zeros((64, 64), np.uint8), {NOTE!r})\n"
        f"print(r.mask.shape, e.NoteTokenizer(20).encode({NOTE!r}).ids.tolist())\n"
        "print(sorted(m for m in ('open_clip', 'torchvision') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=child_env(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr
    found, result, imported = out.stdout.strip().split("\n")
    assert Path(found).resolve() == (snapshot / HUB_FILE).resolve()
    assert result == f"(64, 64) {NoteTokenizer(20).encode(NOTE).ids.tolist()}"
    assert imported == "[]"
