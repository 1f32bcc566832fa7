"""A worklist's progress on disk: one small JSON file per source, in the annotation folder.

``<annotation folder>/worklists/<id>.json``, ``<id>`` a hash of the source's resolved path,
so the source (often a read-only share) is never written and reopening the same folder
finds its progress. Written atomically after every step. The file is a convenience, not
the record: saved cases live in ``cases/`` and kept masks in the drafts folder, so a file
that cannot be parsed is set aside (``<id>.corrupt-<time>.json``) and the worklist is
rebuilt from those; only the position is lost.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_text
from .items import ItemState, WorklistError

STATE_VERSION = 1
WORKLISTS_DIR = "worklists"


def source_id(source: Path) -> str:
    """Stable id of a resolved source path."""
    return hashlib.sha256(str(source).encode("utf-8")).hexdigest()[:16]


def state_path(annotations: Path, source: Path) -> Path:
    return annotations / WORKLISTS_DIR / f"{source_id(source)}.json"


@dataclass
class WorklistState:
    """What is kept between sessions: the position and each item's state and case."""

    source: str
    kind: str
    current: str | None = None  # key of the item the user was on
    items: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> {"state", "case"}

    def to_json(self) -> str:
        data = {"version": STATE_VERSION, "source": self.source, "kind": self.kind,
                "current": self.current, "items": self.items}
        return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: object) -> WorklistState:
        """Parse a loaded JSON document; WorklistError when it is not a state file."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise WorklistError(f"not a version {STATE_VERSION} worklist state")
        items = data.get("items")
        states = {s.value for s in ItemState}
        if not isinstance(items, dict) or not all(
            isinstance(v, dict) and v.get("state") in states for v in items.values()
        ):
            raise WorklistError("'items' is not a map of item states")
        current = data.get("current")
        if not isinstance(data.get("source"), str) or not (current is None or isinstance(current, str)):
            raise WorklistError("'source' or 'current' is not text")
        return cls(data["source"], str(data.get("kind", "")), current, items)


def read_state(path: Path) -> tuple[WorklistState | None, str | None]:
    """(state, warning): (None, None) when there is no file yet; a damaged file is moved
    aside and reported in the warning, never silently replaced."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise WorklistError(f"Cannot read the worklist state {path} ({exc}); check its permissions.") from exc
    try:
        return WorklistState.from_dict(json.loads(raw.decode("utf-8"))), None
    except (UnicodeDecodeError, json.JSONDecodeError, WorklistError) as exc:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        backup = path.with_name(f"{path.stem}.corrupt-{stamp}.json")
        try:
            os.replace(path, backup)
        except OSError as move_exc:
            raise WorklistError(
                f"The worklist state {path} is damaged ({exc}) and could not be set aside "
                f"({move_exc}); move it away by hand and open the worklist again.") from exc
        return None, (
            f"The worklist state {path} was damaged ({exc}); it was kept as {backup.name} and the "
            "progress was rebuilt from the annotation folder (saved cases and kept masks are "
            "all there; the position starts at the first unsaved image).")


def write_state(path: Path, state: WorklistState) -> None:
    try:
        atomic_write_text(path, state.to_json())
    except OSError as exc:
        raise WorklistError(
            f"Cannot write the worklist state {path} ({exc}); check free space and write "
            "permission of the annotation folder.") from exc


def recent_sources(annotations: Path) -> list[Path]:
    """Sources with progress kept in ``annotations``, the most recently worked on first."""
    folder = annotations / WORKLISTS_DIR
    try:
        files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []
    found = []
    for path in files:
        if ".corrupt-" in path.name:
            continue
        state, _ = _peek(path)
        if state is not None and Path(state.source).is_dir():
            found.append(Path(state.source))
    return found


def _peek(path: Path) -> tuple[WorklistState | None, str | None]:
    """Read without setting a damaged file aside (that is for the worklist that opens it)."""
    try:
        return WorklistState.from_dict(json.loads(path.read_bytes().decode("utf-8"))), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, WorklistError) as exc:
        return None, str(exc)
