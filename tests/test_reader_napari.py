"""The reader as napari uses it: which files it is offered, and what ``viewer.open`` does.

napari's ``viewer.open(path)`` reads with napari's own reader unless told otherwise;
``viewer.open(path, plugin=None)`` is what File > Open and drag and drop do: napari
picks the only reader offered for the file, or asks which one when several are.
Needs a display (Xvfb in CI).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from napari.errors import MultipleReaderError  # noqa: E402
from napari.plugins import _npe2  # noqa: E402

from napari_causalseg.engine.images import read_image  # noqa: E402

from .dicom_files import make_dicom  # noqa: E402
from .test_images import _stored_u16  # noqa: E402

PLUGIN = "napari-causalseg"


@pytest.mark.parametrize("name", ["IM0001", "I" * 64, "1.2.840.113619.2.55.3.604688119"])
def test_dicom_without_extension_opens_without_naming_the_plugin(make_napari_viewer, tmp_path, name):
    path = make_dicom(tmp_path / name, _stored_u16(16, 12), slope=2, intercept=-1000)
    viewer = make_napari_viewer()
    assert set(_npe2.get_readers(str(path))) == {PLUGIN}  # File > Open will not ask
    [layer] = viewer.open(path, plugin=None)
    assert layer.source.reader_plugin == PLUGIN and layer.name == name
    np.testing.assert_array_equal(layer.data, read_image(path).data)
    assert tuple(layer.scale) == pytest.approx((0.139, 0.143))


def test_other_file_types_open_as_before_without_a_reader_choice(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    arr = np.arange(48, dtype=np.uint8).reshape(6, 8)
    npy = tmp_path / "array.npy"
    np.save(npy, arr)
    gif = tmp_path / "anim.gif"
    Image.fromarray(arr).save(gif)
    for path in (npy, gif, tmp_path / "scan.v2.npy"):
        if not path.exists():
            np.save(path, arr)
        assert PLUGIN not in _npe2.get_readers(str(path))
        [layer] = viewer.open(path, plugin=None)  # no "which reader?" question
        assert layer.source.reader_plugin == "napari"


def test_png_and_tiff_open_with_plain_viewer_open(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    arr = np.arange(48, dtype=np.uint8).reshape(6, 8)
    png, tif = tmp_path / "cxr.png", tmp_path / "cxr.tif"
    Image.fromarray(arr).save(png)
    tifffile.imwrite(tif, arr)
    for path in (png, tif):
        [layer] = viewer.open(path)
        np.testing.assert_array_equal(layer.data, arr)
        [ours] = viewer.open(path, plugin=PLUGIN)
        assert ours.source.reader_plugin == PLUGIN
        np.testing.assert_array_equal(ours.data, arr)
        # napari reads these too, so File > Open asks once which reader (and can remember
        # the answer), as it did before for these extensions
        with pytest.raises(MultipleReaderError):
            viewer.open(path, plugin=None)


def test_files_the_reader_refuses_are_not_errors_of_ours(make_napari_viewer, tmp_path):
    """An extension-less text file is offered to us; the hook declines and napari says so."""
    notes = tmp_path / "README"
    notes.write_text("not an image")
    from napari_causalseg import _reader

    assert _reader.napari_get_reader(str(notes)) is None
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="README"):
        viewer.open(notes, plugin=None)
    assert len(viewer.layers) == 0
