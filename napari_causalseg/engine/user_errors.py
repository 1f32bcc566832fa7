"""Which exceptions are the user's to fix (bad input) rather than bugs.

Every error class of the engine (NoteError, ImageError, CheckpointError, WeightsError,
DatasetError, ImageReadError) derives from ValueError, so front ends can show these
as one clear line and treat anything else as a bug.
"""

from __future__ import annotations

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError,
                                                IsADirectoryError, NotADirectoryError)
