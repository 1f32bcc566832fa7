"""The shape the project keeps: modules of one concept (at most 400 lines), functions that fit
on a screen (at most 80 lines), and an engine that never imports Qt or napari."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_causalseg

PACKAGE = Path(napari_causalseg.__file__).parent
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80
GUI_PACKAGES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy")


def sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_over_400_lines_and_no_function_over_80():
    too_long = []
    for path in sources():
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []


def test_the_engine_imports_no_gui_package():
    found = []
    for path in sorted((PACKAGE / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            found += [f"{path.relative_to(PACKAGE)}: {n}" for n in names if n.split(".")[0] in GUI_PACKAGES]
    assert found == []
