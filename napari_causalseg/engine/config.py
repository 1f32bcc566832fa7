"""Model configurations as data: a frozen dataclass and named presets.

Every channel width of the CausalCLIPSeg head is derived from the CLIP backbone
configuration, so a tiny random backbone (tests, demo) and the paper's RN101 share
one code path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class VisionConfig:
    """open_clip ModifiedResNet settings (the CLIP ResNet image tower)."""

    layers: tuple[int, int, int, int] = (3, 4, 23, 3)
    width: int = 64
    image_size: int = 224
    heads: int | None = None  # open_clip's default: width * 32 // 64

    @property
    def attn_heads(self) -> int:
        return self.heads if self.heads is not None else self.width * 32 // 64

    @property
    def stage_channels(self) -> tuple[int, int, int]:
        """Output channels of layer2, layer3 and layer4 (Bottleneck expansion 4)."""
        return (self.width * 8, self.width * 16, self.width * 32)


@dataclass(frozen=True)
class TextConfig:
    """CLIP text Transformer settings; context 20 tokens as in the paper."""

    context_length: int = 20
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12


@dataclass(frozen=True)
class ModelConfig:
    """A CausalCLIPSeg model: CLIP towers plus the causal head and two decoders."""

    name: str
    embed_dim: int = 512  # CLIP joint space: tau and the dense attention pool output
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quick_gelu: bool = True  # OpenAI CLIP weights were trained with QuickGELU
    kernel_size: int = 3  # K of the text-generated dynamic kernel
    clip_name: str | None = "RN101-quickgelu"  # open_clip name for pretrained weights

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def feature_dim(self) -> int:
        """C of the unified /16 maps the maskers act on (512 for RN101)."""
        return self.vision.stage_channels[0]

    @property
    def decoder_dim(self) -> int:
        """Channels of the full-resolution decoder features (256 for RN101)."""
        return self.feature_dim // 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from `to_dict` output; unknown keys are an error, not ignored."""
        data = dict(data)
        try:
            vision = dict(data.pop("vision"))
            vision["layers"] = tuple(vision["layers"])
            text = dict(data.pop("text"))
            return cls(vision=VisionConfig(**vision), text=TextConfig(**text), **data)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a valid model configuration: {exc}") from exc

    def differences(self, other: ModelConfig) -> list[str]:
        """Human-readable list of fields that differ, for mismatch errors."""
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        keys = sorted(set(mine) | set(theirs))
        return [f"{k}: {mine.get(k)!r} != {theirs.get(k)!r}" for k in keys if mine.get(k) != theirs.get(k)]


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


PRESETS: dict[str, ModelConfig] = {
    # The paper's model: OpenAI CLIP RN101 (open_clip "RN101-quickgelu").
    "rn101": ModelConfig(name="rn101"),
    # Small random-init model for tests and the demo. Its context is 24 tokens so that
    # every note of the QaTa grammar fits: "... six infected areas, upper middle lower
    # left lung and upper middle lower right lung." is 22 tokens (a third of QaTa).
    "tiny": ModelConfig(
        name="tiny",
        embed_dim=64,
        vision=VisionConfig(layers=(1, 1, 1, 1), width=8, image_size=224, heads=4),
        text=TextConfig(context_length=24, width=32, heads=2, layers=2),
        clip_name=None,
    ),
}


def get_config(name: str) -> ModelConfig:
    """Look up a preset by name with an error that lists the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown model configuration {name!r}; choose one of {sorted(PRESETS)}"
        ) from None
