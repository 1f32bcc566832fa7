"""Our checkpoints: safetensors weights plus JSON metadata, never pickle.

The metadata (model configuration, package version, provenance) is stored twice: in
the safetensors header, so one atomically renamed file is self-describing, and in a
`<name>.json` sidecar that people and tools can read without loading tensors.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .atomic import atomic_write, atomic_write_text
from .config import ModelConfig
from .model import CausalCLIPSeg

FORMAT = "napari-causalseg.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with what is wrong and what to do."""


@dataclass(frozen=True)
class FileIdentity:
    """The file a memory-mapped model reads its weights from, as it was when loaded.

    Rewritten in place (same inode, other size or time) means the mapping now shows
    other bytes: a model would silently mix two checkpoints, or crash on a truncated
    page. Replaced by a rename (what this package's writers do) or deleted is harmless:
    the mapping keeps the old file."""

    path: Path
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        path = Path(path).resolve()  # the working directory may change later
        st = os.stat(path)
        return cls(path, st.st_ino, st.st_size, st.st_mtime_ns)

    def rewritten_in_place(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return st.st_ino == self.inode and (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns)

    def check(self) -> None:
        if self.rewritten_in_place():
            raise CheckpointError(
                f"{self.path} was rewritten in place while its weights were in use "
                "(they are read from the file as needed); load the model again. Save "
                "checkpoints to a new file, or replace them by renaming a finished file "
                "over the old one, as napari-causalseg does."
            )


def drop_mapped_pages(tensor: torch.Tensor) -> None:
    """Unmap the whole pages of `tensor`, a view of a memory-mapped checkpoint, from this
    process (Linux; elsewhere nothing happens). For weights that were only read and that
    will not be read again (a packed copy replaced them): they stop counting in the
    process's RSS. Pages the process wrote would lose that write: never call it on those.
    A later read maps the file's pages again."""
    if not sys.platform.startswith("linux") or tensor.device.type != "cpu":
        return
    page = os.sysconf("SC_PAGE_SIZE")
    start = -(-tensor.data_ptr() // page) * page
    end = (tensor.data_ptr() + tensor.nbytes) // page * page
    if end > start:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4)  # MADV_DONTNEED


def mapped_pages_release(tensors: Iterable[torch.Tensor]) -> Callable[[torch.Tensor], None]:
    """`drop_mapped_pages` for the given views of a mapped checkpoint only (taken at load,
    before any weight is replaced), matched by address. A tensor made since, such as a
    folded copy (bn_folding.py), is the process's own memory, whose dropped pages would
    read back as zeros: for those the returned function does nothing."""
    mapped = {t.data_ptr() for t in tensors if t.device.type == "cpu" and t.numel()}

    def release(tensor: torch.Tensor) -> None:
        if tensor.numel() and tensor.data_ptr() in mapped:
            drop_mapped_pages(tensor)

    return release


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself."""

    path: Path
    config: ModelConfig
    package_version: str
    created: str
    provenance: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    mapped: FileIdentity | None = None  # set when the weights are views of the file (mmap)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "path": str(self.path),
            "model": self.config.to_dict(),
            "package_version": self.package_version,
            "created": self.created,
            "provenance": self.provenance,
            "sha256": self.sha256,
        }


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def save_checkpoint(
    path: str | Path, model: CausalCLIPSeg, provenance: dict[str, Any] | None = None
) -> CheckpointInfo:
    """Write `path` (.safetensors) and its JSON sidecar, each atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"checkpoint names end in .safetensors, got {path.name}")
    if model.fused_for_inference:
        raise CheckpointError(
            "this model's BatchNorms were folded for inference (a Segmenter's model) and "
            "it no longer has a checkpoint's layout; save the model you trained instead"
        )
    header = {
        "format": FORMAT,
        "model": json.dumps(model.config.to_dict()),
        "package_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": json.dumps(provenance or {}),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    info = CheckpointInfo(
        path=path,
        config=model.config,
        package_version=__version__,
        created=header["created"],
        provenance=provenance or {},
        sha256=_sha256(path),
    )
    atomic_write_text(sidecar_path(path), json.dumps(info.to_dict(), indent=2) + "\n")
    return info


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Metadata from the safetensors header, without reading the tensors."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.safetensors"))
        hint = (f"; it holds {', '.join(inside[:4])}" if inside else "; it holds no .safetensors file")
        raise CheckpointError(f"{path} is a folder, not a checkpoint file: pass the .safetensors file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from exc
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a napari-causalseg checkpoint "
            f"(format {header.get('format')!r}); CLIP weights go to --pretrained instead"
        )
    try:
        config = ModelConfig.from_dict(json.loads(header["model"]))
        provenance = json.loads(header.get("provenance", "{}"))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} has unreadable metadata: {exc}") from exc
    sidecar = sidecar_path(path)
    sha = json.loads(sidecar.read_text()).get("sha256") if sidecar.is_file() else None
    return CheckpointInfo(path, config, header.get("package_version", "?"),
                          header.get("created", "?"), provenance, sha)


def load_checkpoint(
    path: str | Path,
    expected: ModelConfig | None = None,
    device: str | torch.device = "cpu",
    mmap: bool = False,
) -> tuple[CausalCLIPSeg, CheckpointInfo]:
    """Build the model the checkpoint describes and load its weights (strictly).

    The model is built without initialising weights that the file then overwrites.
    `mmap=True` (CPU, inference): the parameters are copy-on-write views of the file, so
    loading is instant and weights the forward pass never reads (most of the token
    embedding, D_s) stay on disk. The file must then not be rewritten in place while
    the model lives; this package only ever replaces files by renaming, and on Windows
    a mapped file cannot be replaced at all, so training loads copies (the default).
    """
    from safetensors.torch import load_file

    info = read_checkpoint_info(path)
    if expected is not None and expected != info.config:
        diffs = expected.differences(info.config)
        raise CheckpointError(
            f"{info.path} holds a {info.config.name!r} model but {expected.name!r} was "
            f"requested; differences (requested != checkpoint): {'; '.join(diffs[:6])}. "
            "Drop the model option to use the checkpoint's own configuration."
        )
    on_cpu = torch.device(device).type == "cpu"
    if mmap and on_cpu:
        info.mapped = FileIdentity.of(info.path)  # before reading: a change during the load counts
    try:
        state = load_file(str(info.path), device=str(device))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{info.path} could not be read (truncated or corrupt?): {exc}") from exc
    with torch.device("meta"):  # shapes only: every tensor comes from the file
        model = CausalCLIPSeg(info.config)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(
                f"{len(wrong)} with other shapes (e.g. {wrong[0]}: "
                f"{tuple(state[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)})"
            )
        raise CheckpointError(
            f"{info.path} does not match its own configuration: {', '.join(parts)}; "
            "the file was written by an incompatible version or edited"
        )
    copy = not mmap and on_cpu  # own memory, not views of the file
    state = {k: v.to(own[k].dtype, copy=copy) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model, info
