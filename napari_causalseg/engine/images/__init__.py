"""The one image I/O stack of the project: chest X-rays in, label masks out, no Qt.

The napari reader/writer, the CLI and the data set readers all go through here, so an
image means the same thing (values, orientation, spacing) wherever it is opened.

Conventions
-----------
* Brighter is higher. DICOM MONOCHROME1 and TIFF min-is-white images are inverted so
  the model and the user see the same polarity as MONOCHROME2.
* DICOM values are modality values (Rescale Slope/Intercept applied). They are never
  clipped to the stored window; a linear window (LINEAR, LINEAR_EXACT) becomes contrast
  limits, a non-linear VOI (SIGMOID, VOI LUT Sequence) a separate ``display`` array.
* ``spacing`` is (row, column) in millimetres, or ``None`` when the file does not state
  it in a physical unit (PNG/JPEG/TIFF dpi is usually a default).
* Metadata holds no patient identifiers, so it is safe to keep in layers and in files
  the user shares.
* Every read checks the size the header claims against :class:`ReadLimits` first, and
  only :class:`ImageReadError` (or its :class:`ImageTooLargeError`) ever escapes.
"""

from .base import (
    MAX_BYTES_ENV,
    MAX_PIXELS_ENV,
    MODALITY_VALUES_KEY,
    ImageReadError,
    ImageTooLargeError,
    LoadedImage,
    ReadLimits,
)
from .masks import MASK_EXTENSIONS, read_lesion_mask, write_mask
from .read import image_shape, read_image, to_gray
from .sniff import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, can_read, sniff_format

__all__ = [
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "MAX_BYTES_ENV",
    "MAX_PIXELS_ENV",
    "MODALITY_VALUES_KEY",
    "ImageReadError",
    "ImageTooLargeError",
    "LoadedImage",
    "ReadLimits",
    "can_read",
    "image_shape",
    "read_image",
    "read_lesion_mask",
    "sniff_format",
    "to_gray",
    "write_mask",
]
