"""Qt-free CausalCLIPSeg engine: model, preprocessing, inference, checkpoints."""

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint_info, save_checkpoint
from .config import PRESETS, ModelConfig, TextConfig, VisionConfig, get_config
from .model import CausalCLIPSeg, CausalSegOutput, count_parameters
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
    "NoteError",
    "NoteTokenizer",
    "SegmentationResult",
    "Segmenter",
    "SegmenterConfig",
    "TextConfig",
    "VisionConfig",
    "WeightsError",
    "count_parameters",
    "get_config",
    "load_checkpoint",
    "load_clip_weights",
    "normalize_note",
    "read_checkpoint_info",
    "save_checkpoint",
]
