"""Qt-free CausalCLIPSeg engine: model, preprocessing, inference, checkpoints.

The facade front ends use: `build_model` (a fresh model from a preset) and
`load_checkpoint` (a trained one), `ModelSource` + `open_segmenter` (the demo model, OpenAI
CLIP or a checkpoint file, ready for inference), `Segmenter` for cached interactive
inference, and `available_devices` for device pickers.
"""

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint_info, save_checkpoint
from .config import PRESETS, ModelConfig, TextConfig, VisionConfig, get_config
from .device import available_devices, resolve_device
from .factory import build_model
from .model import CausalCLIPSeg, CausalSegOutput, count_parameters
from .model_sources import ModelSource, open_segmenter, source_checkpoint
from .preprocess import ImageError
from .segmenter import SegmentationResult, Segmenter, SegmenterConfig
from .tokenizer import NoteError, NoteTokenizer, normalize_note
from .weights import WeightsError, load_clip_weights

__all__ = [
    "PRESETS",
    "CausalCLIPSeg",
    "CausalSegOutput",
    "CheckpointError",
    "ImageError",
    "ModelConfig",
    "ModelSource",
    "NoteError",
    "NoteTokenizer",
    "SegmentationResult",
    "Segmenter",
    "SegmenterConfig",
    "TextConfig",
    "VisionConfig",
    "WeightsError",
    "available_devices",
    "build_model",
    "count_parameters",
    "get_config",
    "load_checkpoint",
    "load_clip_weights",
    "normalize_note",
    "open_segmenter",
    "read_checkpoint_info",
    "resolve_device",
    "save_checkpoint",
    "source_checkpoint",
]
