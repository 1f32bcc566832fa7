"""What every image reader shares: its errors, its result and the size limit it enforces.

The limit exists because a file header can claim anything: a TIFF that says it has
4,294,934,336 rows makes a decoder try to allocate hundreds of GiB, and on a machine
that overcommits memory that can take napari down with the user's unsaved corrections.
Every reader checks the claimed size against :class:`ReadLimits` before it decodes.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Environment variables that raise (or lower) the limits for every reader in a process.
MAX_PIXELS_ENV = "NAPARI_CAUSALSEG_MAX_IMAGE_MEGAPIXELS"
MAX_BYTES_ENV = "NAPARI_CAUSALSEG_MAX_IMAGE_MB"

_MIB = 1 << 20


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message names file and reason."""


class ImageTooLargeError(ImageReadError):
    """The header claims an image larger than :class:`ReadLimits` allows; nothing was decoded."""


@dataclass(frozen=True)
class ReadLimits:
    """The largest image one read may decode (one frame or page; only the first is read).

    The defaults are far above any chest X-ray (detectors top out near 4,300 x 4,300
    pixels, 18.5 megapixels, 37 MB at 16 bits) and below Pillow's own decompression-bomb
    warning (89 megapixels), so a file Pillow would warn about is refused here with this
    module's error instead. Raise them for a genuine larger image with the environment
    variables ``NAPARI_CAUSALSEG_MAX_IMAGE_MEGAPIXELS`` / ``NAPARI_CAUSALSEG_MAX_IMAGE_MB``
    or by passing ``ReadLimits(...)`` to ``read_image``.
    """

    max_pixels: int = 64 * _MIB  # 67.1 megapixels, e.g. 8192 x 8192
    max_bytes: int = 512 * _MIB  # decoded bytes of the frame that is read

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_bytes < 1:
            raise ValueError(f"ReadLimits must be positive, got {self}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReadLimits:
        """The defaults, overridden by the environment variables where they are set.

        A bad value raises :class:`ImageReadError`, so readers still raise only their own error.
        """
        env = os.environ if environ is None else environ
        defaults = cls()
        pixels = _env_number(env, MAX_PIXELS_ENV, 1e6, defaults.max_pixels)
        size = _env_number(env, MAX_BYTES_ENV, _MIB, defaults.max_bytes)
        return cls(max_pixels=pixels, max_bytes=size)

    def check(self, path: Path, rows: int, cols: int, samples: int = 1, bytes_per_sample: int = 1,
              frames: int = 1) -> None:
        """Raise :class:`ImageTooLargeError` when one frame of the claimed size is over a limit."""
        rows, cols, samples = int(rows), int(cols), max(int(samples), 1)
        bytes_per_sample = max(int(bytes_per_sample), 1)
        pixels = rows * cols
        size = pixels * samples * bytes_per_sample
        if pixels <= self.max_pixels and size <= self.max_bytes:
            return
        frames_text = f", {frames:,} frames" if frames > 1 else ""
        over = (f"{pixels / 1e6:,.1f} megapixels, over the {self.max_pixels / 1e6:,.1f} megapixel limit"
                if pixels > self.max_pixels else
                f"{_human(size)} decoded, over the {_human(self.max_bytes)} limit")
        raise ImageTooLargeError(
            f"{path}: the header claims {rows:,} x {cols:,} pixels x {samples} sample(s) x "
            f"{bytes_per_sample} byte(s){frames_text}: {over} for one image. No chest X-ray is "
            "this large, so the header is probably corrupt; if the image is genuine, raise the "
            f"limit with the environment variables {MAX_PIXELS_ENV} and {MAX_BYTES_ENV} "
            "(or ReadLimits(max_pixels=..., max_bytes=...))."
        )


def _env_number(env: Mapping[str, str], name: str, unit: float, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ImageReadError(f"{name}={text!r} is not a positive number; unset it or give e.g. {name}=1024")
    return max(int(value * unit), 1)


def _human(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", _MIB), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


class BoundedReader(io.BufferedReader):
    """A binary file whose ``read(n)`` never asks for more than the rest of the file.

    Python's ``read(n)`` allocates ``n`` bytes before reading, so a corrupt length field
    (a PNG chunk or a DICOM element claiming 4 GiB) would make the decoders allocate it.
    Pillow and pydicom read through this instead of opening the path themselves.
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__(io.FileIO(path, "rb"))
        self._size = os.fstat(self.fileno()).st_size

    def _bounded(self, size: int | None) -> int | None:
        if size is not None and size >= 0:
            return max(0, min(size, self._size - self.tell()))
        return size

    def read(self, size: int | None = -1, /) -> bytes:
        return super().read(self._bounded(size))

    def read1(self, size: int = -1, /) -> bytes:
        return super().read1(self._bounded(size))


#: Exceptions a reader must let through; everything else a decoder raises becomes its error.
NOT_DECODER_ERRORS = (KeyboardInterrupt, SystemExit, GeneratorExit)


@dataclass
class LoadedImage:
    """Pixel data plus what is needed to show and measure it.

    ``data`` is 2-D (grayscale) or 3-D with 3/4 channels last (RGB/RGBA): for DICOM the
    modality values, which the model is given. ``display`` is set only when the file's
    VOI transformation is not linear (SIGMOID, a VOI LUT Sequence): the values to show
    instead of ``data``, since contrast limits cannot express it.
    """

    data: np.ndarray
    spacing: tuple[float, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    display: np.ndarray | None = None


#: Image layer metadata key of the modality values when the layer shows ``display`` instead.
MODALITY_VALUES_KEY = "modality_values"


def one_line(exc: BaseException) -> str:
    """A decoder's message on one line (pydicom's span several), for notifications and the CLI."""
    return " ".join(str(exc).split())


def note(meta: dict, text: str) -> None:
    """Things the user should know about how the file was read (e.g. pages dropped)."""
    meta.setdefault("notes", []).append(text)
