"""Load CLIP weights (OpenAI's from the Hugging Face Hub, or a local open_clip/OpenAI file).

Only the CLIP towers come from these files; the causal head and decoders start from
random initialisation, as in the paper. Files are read without unpickling arbitrary
objects: safetensors directly, `.pt`/`.bin` with `torch.load(weights_only=True)`, and
OpenAI's TorchScript archives with `torch.jit.load` (open_clip's own OpenAI path).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from .model import CausalCLIPSeg


class WeightsError(ValueError):
    """CLIP weights that cannot be used for the requested model."""


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A CLIP state dict from a local file, never unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"CLIP weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types
            raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from exc
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - pickle errors come in many types
            raise WeightsError(
                f"{path} could not be read as plain tensors ({type(exc).__name__}: {exc}); "
                "only safetensors, weights-only torch files and OpenAI TorchScript "
                "archives are accepted"
            ) from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())


#: Where open_clip itself gets OpenAI's weights: a Hugging Face Hub repository per open_clip
#: model name, and the files it tries in order (safetensors first, as open_clip does).
OPENAI_HUB_FILES: dict[str, tuple[str, tuple[str, ...]]] = {
    "RN101-quickgelu": ("timm/resnet101_clip.openai",
                        ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")),
}


def openai_state_dict(clip_name: str) -> dict[str, torch.Tensor]:
    """OpenAI's CLIP weights from the Hugging Face Hub (downloaded once, then cached).

    The same files open_clip downloads, fetched with ``huggingface_hub`` so that neither
    open_clip nor torchvision (which pins the torch build) is needed at run time; they
    are read without unpickling (:func:`read_clip_state_dict`).
    """
    if clip_name not in OPENAI_HUB_FILES:
        raise WeightsError(f"no OpenAI weights are known for {clip_name!r}; "
                           f"known: {', '.join(sorted(OPENAI_HUB_FILES))}")
    repo, filenames = OPENAI_HUB_FILES[clip_name]
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise WeightsError("downloading OpenAI's CLIP weights needs huggingface_hub: "
                           "pip install huggingface_hub") from exc
    failures = []
    for filename in filenames:
        try:
            return read_clip_state_dict(hf_hub_download(repo_id=repo, filename=filename))
        except WeightsError:
            raise
        except Exception as exc:  # noqa: BLE001 - network and hub errors come in many types
            failures.append(f"{filename}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise WeightsError(
        f"OpenAI's CLIP {clip_name} weights could not be downloaded from the Hugging Face Hub "
        f"({repo}; {'; '.join(failures)}). They are downloaded once on first use, so this needs "
        f"the internet once. On a machine without it, download {repo}/{filenames[0]} elsewhere "
        f"(e.g. `hf download {repo} {filenames[0]}`), copy it over and pass its path instead of "
        "'openai' (causalseg train --pretrained PATH)."
    )


def clip_to_causalseg(state: dict[str, torch.Tensor], model: CausalCLIPSeg) -> dict[str, torch.Tensor]:
    """Rename open_clip CLIP keys to ours; cut positions to our 20-token context.

    Cutting the text positional embedding is exact for notes that fit: the text
    Transformer is causal, so no token attends past its own position.
    """
    ctx = model.config.text.context_length
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("visual."):
            mapped["vision.backbone." + key[len("visual."):]] = value
        elif key.startswith("text."):  # CustomTextCLIP layout
            mapped["text.transformer." + key[len("text."):]] = value
        elif key.split(".")[0] in {
            "token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"
        }:
            mapped["text.transformer." + key] = value
    pos_key = "text.transformer.positional_embedding"
    if pos_key in mapped:
        if mapped[pos_key].shape[0] < ctx:
            raise WeightsError(
                f"the weights have {mapped[pos_key].shape[0]} text positions; the model needs {ctx}"
            )
        mapped[pos_key] = mapped[pos_key][:ctx]
    return mapped


def load_clip_weights(model: CausalCLIPSeg, source: str | Path | None) -> str | None:
    """Fill the CLIP towers from `source` ("openai", a file path, or None/"none").

    Returns a provenance string for checkpoint metadata.
    """
    if source is None or str(source).lower() == "none":
        return None
    cfg = model.config
    if str(source).lower() == "openai":
        if cfg.clip_name is None:
            raise WeightsError(
                f"the {cfg.name!r} configuration has no OpenAI CLIP counterpart; "
                "use --model rn101 for OpenAI weights"
            )
        state, provenance = openai_state_dict(cfg.clip_name), f"openai:{cfg.clip_name}"
    else:
        state, provenance = read_clip_state_dict(source), f"file:{Path(source).name}"
    mapped = clip_to_causalseg(state, model)
    own = model.state_dict()
    clip_keys = {k for k in own if k.startswith(("vision.backbone.", "text.transformer."))}
    clip_keys -= {k for k in clip_keys if ".attnpool.connect." in k}  # new in CausalCLIPSeg
    missing = sorted(clip_keys - set(mapped))
    if missing:
        raise WeightsError(
            f"{source} is not a CLIP checkpoint for the {cfg.name!r} model: {len(missing)} "
            f"weights are missing (e.g. {', '.join(missing[:3])}). A ViT or a different "
            "ResNet needs its own configuration."
        )
    wrong = [
        f"{k}: file {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
        for k in clip_keys if mapped[k].shape != own[k].shape
    ]
    if wrong:
        raise WeightsError(
            f"{source} does not match the {cfg.name!r} model's shapes: " + "; ".join(wrong[:3])
        )
    model.load_state_dict({k: mapped[k] for k in clip_keys}, strict=False)
    return provenance
