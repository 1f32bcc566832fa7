"""The core runtime dependencies are what the package imports, and nothing pins torch."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "napari_causalseg"


def dist_name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", requirement)[0]).lower()


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {name: {dist_name(r) for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    return {dist_name(r) for r in project["dependencies"]}, extras


def imported_distributions(folder: Path) -> tuple[set[str], set[str]]:
    """(imported at module level, imported anywhere) as distribution names."""
    to_dist = md.packages_distributions()
    top, anywhere = set(), set()
    for path in folder.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                if root in sys.stdlib_module_names or root == "napari_causalseg":
                    continue
                dists = {dist_name(d) for d in to_dist.get(root, [root])}
                anywhere |= dists
                if id(node) in module_level:
                    top |= dists
    return top, anywhere


def test_open_clip_and_torchvision_are_not_runtime_dependencies():
    core, extras = declared()
    assert not {"open-clip-torch", "torchvision"} & core
    assert "open-clip-torch" in extras["testing"]  # the oracle


def test_every_module_level_import_is_declared():
    core, extras = declared()
    for folder in ("engine", "cli"):
        top, _ = imported_distributions(PACKAGE / folder)
        assert top <= core, f"{folder} imports undeclared {sorted(top - core)}"
    top, _ = imported_distributions(PACKAGE / "widgets")
    assert top <= core | extras["napari"], sorted(top - core - extras["napari"])


def test_every_core_dependency_is_imported_somewhere():
    core, _ = declared()
    _, anywhere = imported_distributions(PACKAGE)
    assert core <= anywhere, f"declared but never imported: {sorted(core - anywhere)}"
