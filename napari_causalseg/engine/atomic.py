"""Write-then-rename, so a crash or a cancel never leaves a half-written file.

The temporary file sits beside the target (same file system, so the rename is atomic),
is fsync'ed before the rename, gets the umask's mode like a directly written file
(not tempfile's private 0o600), and keeps the mode of a file it replaces. With
``overwrite=False`` the move is a hard link that fails if the target exists, so a file
that appeared meanwhile (e.g. a saved correction) is never replaced.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path


class OutputExistsError(FileExistsError, ValueError):
    """The target exists and the caller asked not to overwrite it (a user error: ValueError)."""


@contextlib.contextmanager
def atomic_path(target: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `target`; it replaces `target` only on success.

    ``overwrite=False``: raise :class:`OutputExistsError` instead of replacing a file.
    """
    target = Path(target)
    if not overwrite and target.exists():
        raise OutputExistsError(_exists_message(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.part"
    with open(tmp, "xb"):
        pass  # reserve the name with the umask's mode
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if not overwrite:
            try:
                os.link(tmp, target)  # atomic, and fails instead of replacing
            except FileExistsError:
                raise OutputExistsError(_exists_message(target)) from None
            except OSError:  # a file system without hard links: check, then rename
                if target.exists():
                    raise OutputExistsError(_exists_message(target)) from None
                os.replace(tmp, target)
        else:
            if target.exists():
                with contextlib.suppress(OSError):
                    os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _exists_message(target: Path) -> str:
    return f"{target} already exists and was kept; pass overwrite (--overwrite) to replace it"


def atomic_write(target: str | Path, write: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Call `write(tmp_path)` and move the result onto `target` atomically."""
    with atomic_path(target, overwrite) as tmp:
        write(tmp)
    return Path(target)


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    return atomic_write(target, lambda p: p.write_bytes(data))


def atomic_write_text(target: str | Path, text: str) -> Path:
    return atomic_write(target, lambda p: p.write_text(text, encoding="utf-8"))
