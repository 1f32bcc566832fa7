"""Optional dependencies (the ``formats`` extra), imported only by the code that needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

FORMATS_EXTRA = "pip install 'napari-causalseg[formats]'"


class MissingExtraError(ImportError, ValueError):
    """An optional package is not installed; the message says how to install it.

    Also a ValueError, so front ends show it as one line like any other user error.
    """


def optional_module(module: str, what: str) -> ModuleType:
    """Import `module` or raise :class:`MissingExtraError` naming `what` needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{what} needs {module}, which is not installed: {FORMATS_EXTRA}") from exc
