"""Inference for people: an image and a note in, mask, probability and confounder map out.

Image features are cached per (image bytes, preprocessing, model); a new note on the
same image reruns only the text encoder and D_c's note-dependent part, one KxK conv
C->1 (the 1x1 conv folded into the text kernel, see decoder.py). On the CPU the first
prompt on a new image gets its logits without making D_c's full-resolution features;
those are made for the first re-prompt, or ahead by `image_features` (which the widget
calls as soon as an image is chosen). Only D_c runs: D_s is
a training device, and F^s is not computed. Text features are cached per normalised note
and computed by text_inference.py (the same numbers as the model's text tower, faster);
`prefetch_notes` fills that cache in the background with every note of the QaTa grammar.
A Segmenter that loads its own model (`from_checkpoint`, `from_config`) maps the weights
from the file and folds the image side's BatchNorms (bn_folding.py), into copies where
the weights are the file's pages, which it only reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .bn_folding import fuse_for_inference_
from .cache import LRUCache
from .checkpoint import FileIdentity, load_checkpoint, mapped_pages_release
from .config import ModelConfig
from .device import resolve_device
from .factory import build_model
from .host_memory import keep_heap_between_calls, return_free_heap
from .model import CausalCLIPSeg
from .notes import all_notes
from .packed_convs import pack_convolutions_, packing_available
from .prefetch import NotePrefetch
from .preprocess import PreprocessConfig, prepare_image, resize_to, to_grey_or_rgb
from .text_inference import PackedTextTower, encode_text
from .tokenizer import NoteError, NoteTokenizer, TokenizedNote


def check_threshold(threshold: float) -> float:
    """A mask threshold is a probability strictly between 0 and 1 (0 would mark every pixel,
    1 none); anything else is an error rather than a silently empty or full mask."""
    value = float(threshold)
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"threshold {threshold!r} is not a probability between 0 and 1 (exclusive): pixels "
            "with lesion probability >= threshold form the mask; 0.5 is the default"
        )
    return value


def threshold_mask(probability: np.ndarray, threshold: float) -> np.ndarray:
    """The lesion mask (uint8 0/1): pixels with probability >= threshold. The comparison's
    booleans viewed as bytes (the same 0/1 values): no second full-size array."""
    return (probability >= check_threshold(threshold)).view(np.uint8)


@dataclass(frozen=True)
class SegmenterConfig:
    device: str = "auto"
    threshold: float = 0.5
    cache_bytes: int = 1 << 30  # image features; RN101 needs ~52 MB per re-prompted image
    text_cache_entries: int = 512
    truncate_notes: bool = False  # opt-in; the dropped words are reported
    prefetch_notes: bool = False  # after the first prompt, encode every QaTa note in the background
    # on the CPU, keep up to 128 MiB of freed heap between prompts (process-wide, glibc):
    # otherwise a long session can give a prompt's ~40 MB of transients back to the system
    # after every prompt and fault them in again (host_memory.py)
    keep_freed_heap: bool = True

    def __post_init__(self) -> None:
        check_threshold(self.threshold)


@dataclass
class ImageFeatures:
    """The note-independent part of one image's forward pass. `pixels` is made on the
    first call that needs it: a first prompt computes its logits without it (decoder.py),
    a re-prompt or `Segmenter.image_features` then makes and keeps it."""

    causal: torch.Tensor  # F^c (1, C, S/16, S/16): what `pixels` is made from
    confounder: np.ndarray  # fused 1 - M at the original (H, W), float32 in [0, 1]: note-independent
    pixels: torch.Tensor | None = None  # D_c's note-independent features (1, C, S, S), channels-last

    @property
    def shape(self) -> tuple[int, int]:
        """The original image's (H, W)."""
        return self.confounder.shape

    @property
    def nbytes(self) -> int:
        tensors = (self.causal,) if self.pixels is None else (self.causal, self.pixels)
        return sum(t.element_size() * t.nelement() for t in tensors) + self.confounder.nbytes


@dataclass
class SegmentationResult:
    mask: np.ndarray  # uint8 {0, 1}, original (H, W)
    probability: np.ndarray  # float32 lesion probability, original (H, W)
    # float32 confounder map (1 - M) in [0, 1], original (H, W); read-only: the image
    # cache's own array, shared by every prompt on the image (copy it to change it)
    confounder: np.ndarray
    note: str  # the normalised note the model read
    threshold: float
    dropped: str | None = None  # text cut by an explicit truncation
    timings: dict[str, float] = field(default_factory=dict)

    def rethreshold(self, threshold: float) -> np.ndarray:
        """A new mask from the kept probability map, without rerunning the model."""
        return threshold_mask(self.probability, threshold)


class Segmenter:
    """Wraps a CausalCLIPSeg model for interactive, cached inference (eval mode)."""

    def __init__(
        self,
        model: CausalCLIPSeg,
        config: SegmenterConfig = SegmenterConfig(),
        model_id: str | None = None,
        fuse: bool = False,
        weights_file: FileIdentity | None = None,
    ):
        """`fuse=True` folds the image side's BatchNorms into their convolutions (faster,
        same numbers up to float rounding) and makes `model` inference-only: for
        models the Segmenter owns (`from_checkpoint`, `from_config`). `weights_file`: the
        checkpoint file `model`'s CPU weights are mapped from, watched for in-place rewrites
        (ignored on other devices, where the weights are copies)."""
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device).eval()
        self._weights_file = weights_file if self.device.type == "cpu" else None
        # the weights' file pages, dropped where a copy replaces them (a packed or a folded one)
        release = (mapped_pages_release(self.model.state_dict().values())
                   if self._weights_file is not None else None)
        if fuse:
            # into copies where packing replaces them at once (the file's pages only read);
            # otherwise in place, so that no copy stays beside pages that cannot be dropped
            fuse_for_inference_(self.model, release if packing_available() else None)
        self.model_id = model_id or uuid.uuid4().hex
        self.preprocess = PreprocessConfig(size=model.config.image_size)
        self.tokenizer = NoteTokenizer(model.config.text.context_length, truncate=config.truncate_notes)
        self.image_cache: LRUCache[ImageFeatures] = LRUCache(config.cache_bytes, lambda f: f.nbytes)
        self.text_cache: LRUCache[tuple[torch.Tensor, TokenizedNote]] = LRUCache(
            config.text_cache_entries
        )
        self._lock = threading.RLock()  # one forward at a time; caches are shared
        self.prefetch: NotePrefetch | None = None
        self._packed_text: PackedTextTower | None = None
        if fuse and self.device.type == "cpu":
            # the image side's convolutions with oneDNN's weight layout made once (faster
            # first prompts); a mapped weight's file pages go, the packed copy replaces them
            size = self.model.config.image_size
            example = torch.zeros(1, 3, size, size, device=self.device)
            drop = release or (lambda w: None)
            pack_convolutions_(self.model, lambda: self.model.encode_image(example, with_confounding=False), drop)
            self.model.vision.backbone.attnpool.pack_projections_(drop)
        text = self.model.text.transformer
        if fuse and self._weights_file is not None and PackedTextTower.available(text):
            # The text weights are file pages this model only reads: packed once (a copy),
            # their pages are dropped, so the copy replaces them in memory.
            self._packed_text = PackedTextTower(text, release=release)
        if fuse and self.device.type == "cpu":
            # the packing forward's activations and the text tower's scaled weight copies
            # (text_inference.py) were transient: give them back once, before the heap is kept
            return_free_heap()
        if self.device.type == "cpu" and config.keep_freed_heap:
            keep_heap_between_calls()

    # construction -------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, config: SegmenterConfig = SegmenterConfig()) -> Segmenter:
        model, info = load_checkpoint(path, mmap=True)  # inference only: weights stay file-backed
        model_id = info.sha256 or f"{Path(path).resolve()}"
        return cls(model, config, model_id=model_id, fuse=True, weights_file=info.mapped)

    @classmethod
    def from_config(
        cls,
        model_config: ModelConfig | str,
        pretrained: str | None = None,
        config: SegmenterConfig = SegmenterConfig(),
    ) -> Segmenter:
        """A model from a preset name/config, with optional CLIP weights."""
        model, _ = build_model(model_config, pretrained)
        return cls(model, config, fuse=True)

    @property
    def model_config(self) -> ModelConfig:
        return self.model.config

    def weights_file_rewritten(self) -> bool:
        """True when the checkpoint this Segmenter maps was rewritten in place: it then
        refuses to run, and the caller should load the file again."""
        return self._weights_file is not None and self._weights_file.rewritten_in_place()

    def _check_weights(self) -> None:
        """Refuse to run on weights whose file was rewritten in place (see FileIdentity)."""
        if self._weights_file is not None:
            self._weights_file.check()

    # features -----------------------------------------------------------------
    def image_key(self, image: np.ndarray) -> str:
        image = np.ascontiguousarray(image)
        digest = hashlib.sha256(image.data)  # not for security: the fastest here (~2 GB/s)
        digest.update(f"{image.shape}{image.dtype.str}".encode())
        return f"{self.model_id}:{self.preprocess.key()}:{digest.hexdigest()[:32]}"

    def image_features(self, image: np.ndarray) -> ImageFeatures:
        """Cached, with `pixels` made: call from a worker thread as soon as an image is
        chosen, so that every prompt on it is a re-prompt."""
        image = to_grey_or_rgb(image)
        key = self.image_key(image)
        cached = self.image_cache.get(key)
        if cached is not None and cached.pixels is not None:
            return cached
        with self._lock, torch.inference_mode():
            self._check_weights()
            return self._with_pixels(key, self._encoded(key, image)[0])

    def _encoded(self, key: str, image: np.ndarray) -> tuple[ImageFeatures, bool]:
        """The cached entry for `image` (grey or RGB), and whether it was encoded just now
        (then without `pixels`). Under the lock, in inference mode."""
        cached = self.image_cache.get(key)  # another thread may have just made it
        if cached is not None:
            return cached, False
        tensor = prepare_image(image, self.preprocess).to(self.device)
        feats = self.model.encode_image(tensor, with_confounding=False)
        # at the image's own size once, not on every prompt (~25 ms for a 3000 px X-ray)
        confounder = resize_to(feats.confounder_map().float(), tuple(image.shape[:2]))[0, 0]
        confounder = confounder.clamp(0, 1).cpu().numpy()
        confounder.flags.writeable = False  # handed out with every result on this image
        result = ImageFeatures(feats.causal, confounder)
        self.image_cache.put(key, result)
        return result, True

    def _with_pixels(self, key: str, feats: ImageFeatures) -> ImageFeatures:
        """`feats` with D_c's features made and kept (the cache re-weighs the entry).
        Under the lock, in inference mode."""
        if feats.pixels is None:
            feats.pixels = self.model.pixel_features(feats.causal)
            self.image_cache.put(key, feats)
        return feats

    def text_feature(self, note: str) -> tuple[torch.Tensor, TokenizedNote]:
        tokens = self.tokenizer.encode(note)  # raises NoteError for empty/too long notes
        cached = self.text_cache.get(tokens.note)
        if cached is not None:
            return cached
        with self._lock, torch.inference_mode():
            cached = self.text_cache.get(tokens.note)  # the prefetch may have just made it
            if cached is not None:
                return cached
            self._check_weights()
            ids = tokens.ids[None].to(self.device)
            if self._packed_text is not None:
                tau = self._packed_text(ids)
            else:
                tau = encode_text(self.model.text.transformer, ids)
            self.text_cache.put(tokens.note, (tau, tokens))
        return tau, tokens

    def prefetch_notes(self, notes: list[str] | None = None) -> NotePrefetch:
        """Fill the text cache in a background thread, one note at a time (the same numbers
        as on demand): `notes`, by default every note of the QaTa grammar. Notes the
        tokenizer refuses (too long) are skipped. Returns the running prefetch (cancellable)."""
        if self.prefetch is not None:
            self.prefetch.cancel()

        def encode(note: str) -> None:
            with contextlib.suppress(NoteError):  # too long for the model: nobody can prompt it
                self.text_feature(note)

        self.prefetch = NotePrefetch(encode, all_notes() if notes is None else notes)
        return self.prefetch

    # prediction ---------------------------------------------------------------
    def segment(self, image: np.ndarray, note: str, threshold: float | None = None) -> SegmentationResult:
        threshold = self.config.threshold if threshold is None else check_threshold(threshold)
        tau, tokens = self.text_feature(note)
        image = to_grey_or_rgb(image)
        key = self.image_key(image)
        with self._lock, torch.inference_mode():
            self._check_weights()
            feats, new = self._encoded(key, image)
            if new and self.device.type == "cpu":
                # a first prompt: the logits straight from F^c, D_c's features are made
                # only if a re-prompt comes (decoder.py: they cost more than they save here)
                logits = self.model.causal_logits_without_features(feats.causal, tau)
            else:
                logits = self.model.causal_logits(self._with_pixels(key, feats).pixels, tau)
            # in place: the resized logits are this call's own (a large X-ray: 20 MB)
            probability = resize_to(logits.float(), feats.shape)[0, 0].sigmoid_()
        prob = probability.cpu().numpy()
        if self.config.prefetch_notes and self.prefetch is None:
            self.prefetch_notes()  # after the first prompt, so as not to slow it down
        return SegmentationResult(
            mask=threshold_mask(prob, threshold),
            probability=prob,
            confounder=feats.confounder,
            note=tokens.note,
            threshold=threshold,
            dropped=tokens.dropped,
        )
