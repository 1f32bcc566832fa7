"""The life of a docked panel: keys bound on the viewer while it is docked, callbacks when
it is closed (napari then only takes it out of the window) or hidden (also when napari
quits), and timers that run once things settle."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject, QTimer


def settle_timer(ms: int, slot: Callable[[], Any]) -> QTimer:
    """A single-shot timer that restarts on every start(): runs ``slot`` once things settle."""
    timer = QTimer()
    timer.setSingleShot(True)
    timer.setInterval(ms)
    timer.timeout.connect(slot)
    return timer


class PanelWatcher(QObject):
    """Event filter on a panel's widget: ``owner.on_undock()`` when it leaves its dock (the
    panel's close button), ``owner.on_dock()`` when docked again, ``owner.on_hide()`` when
    hidden. Holds the owner weakly."""

    def __init__(self, owner: Any):
        super().__init__()
        self._owner = weakref.ref(owner)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        owner = self._owner()
        if owner is not None:
            if event.type() == QEvent.Type.ParentChange:
                owner.on_undock() if obj.parent() is None else owner.on_dock()
            elif event.type() == QEvent.Type.Hide:
                owner.on_hide()
        return False


class ViewerShortcuts:
    """Bind ``{napari key name: callback}`` on ``viewer`` (its own keymap, so they work on
    the canvas whichever layer is active, unless a layer binds the same key) and restore
    whatever they replaced on unbind."""

    def __init__(self, viewer: Any, actions: dict[str, Callable[[], Any]]):
        self.viewer = viewer
        self.actions = actions
        self._bound: dict[str, tuple[Any, Any]] = {}

    @property
    def bound(self) -> bool:
        return bool(self._bound)

    def bind(self) -> None:
        if self._bound:
            return
        for key, action in self.actions.items():
            def handler(_viewer, action=action):
                action()

            self._bound[key] = (handler, self.viewer.bind_key(key, handler, overwrite=True))

    def unbind(self) -> None:
        """Give the keys back (only those still bound to us: another binding made since wins)."""
        from napari.utils.key_bindings import coerce_keybinding

        for key, (handler, previous) in self._bound.items():
            if self.viewer.keymap.get(coerce_keybinding(key)) is handler:
                self.viewer.bind_key(key, previous, overwrite=True)
        self._bound.clear()
