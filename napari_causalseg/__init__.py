"""napari-causalseg: text-guided lesion segmentation (CausalCLIPSeg) for napari."""

__version__ = "0.1.0"
