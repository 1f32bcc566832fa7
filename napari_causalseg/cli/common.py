"""What every subcommand shares: its user-facing error and opening a data set folder."""

from __future__ import annotations

from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def open_splits(data_dir: Path, val_fraction: float = 0.2):
    from ..engine.data.layouts import open_dataset

    if not data_dir.exists():
        raise CLIError(f"data folder not found: {data_dir}")
    return open_dataset(data_dir, val_fraction=val_fraction)
