"""Work through a folder of X-rays or a data set, one image at a time, without losing work.

Qt-free: the napari "Worklist" widget, a script or a notebook drive the same objects.
"""

from .drafts import DraftStore
from .items import ItemState, ScanConfig, WorklistError, WorklistItem, collect_items, scan_folder
from .state import WorklistState, read_state, recent_sources, state_path
from .worklist import AlreadySavedError, Worklist

__all__ = [
    "AlreadySavedError",
    "DraftStore",
    "ItemState",
    "ScanConfig",
    "Worklist",
    "WorklistError",
    "WorklistItem",
    "WorklistState",
    "collect_items",
    "read_state",
    "recent_sources",
    "scan_folder",
    "state_path",
]
