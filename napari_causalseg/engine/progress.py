"""Training progress on a bar and in a line of text, the same for every front end.

The trainer, the fine-tuning workflow and its child process report `TrainEvent`s (objects,
or dicts once they crossed the pipe); the terminal shows them with tqdm and napari with
`napari.utils.progress` (a tqdm too). What a bar counts and what a line says is decided
here once, so the CLI, the demo's first-use training and both widgets agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: What a bar counts: every step of the run, the epochs of the run, or the steps of one epoch.
RUN_STEPS, EPOCHS, EPOCH_STEPS = "run_steps", "epochs", "epoch_steps"


def event_value(event: Any, name: str, default: Any = None) -> Any:
    """A field of an event object or of its dict form."""
    if isinstance(event, dict):
        return event.get(name, default)
    return getattr(event, name, default)


def losses_text(event: Any) -> str:
    return f"L_c {event_value(event, 'loss_c'):.3f}, L_s {event_value(event, 'loss_s'):.3f}"


def val_dice(event: Any) -> tuple[float | None, float | None]:
    """(per-image, global) validation Dice of an epoch event, None where not validated."""
    val = event_value(event, "val") or {}
    return (val.get("per_image") or {}).get("dice"), (val.get("global") or {}).get("dice")


def epoch_line(event: Any) -> str:
    """'epoch 3/10: L_c 0.412, L_s 0.690, val Dice 0.811 per image, 0.842 global'."""
    text = f"epoch {event_value(event, 'epoch')}/{event_value(event, 'epochs')}: {losses_text(event)}"
    dice, global_dice = val_dice(event)
    if dice is not None:
        text += f", val Dice {dice:.3f} per image"
        if global_dice is not None:
            text += f", {global_dice:.3f} global"
    return text


class EventBar:
    """Drives one tqdm-like bar from events; `feed` returns a line of text worth showing
    (an epoch's summary) or None. `make_bar(total, description)` creates the bar."""

    def __init__(self, make_bar: Callable[[int, str], Any], counts: str = RUN_STEPS,
                 description: str = "Training"):
        if counts not in (RUN_STEPS, EPOCHS, EPOCH_STEPS):
            raise ValueError(f"unknown progress unit {counts!r}")
        self.make_bar, self.counts, self.description = make_bar, counts, description
        self.bar: Any = None

    def feed(self, event: Any) -> str | None:
        kind = event_value(event, "kind")
        if kind == "plan" and self.counts == EPOCHS:
            self._open(max(int(event_value(event, "epochs") or 0), 1))
        elif kind == "step":
            self._on_step(event)
        elif kind == "epoch":
            if self.counts == EPOCHS:
                self._open(max(int(event_value(event, "epochs") or 0), 1)).update(1)
            elif self.counts == EPOCH_STEPS:
                self.close()
            return epoch_line(event)
        elif kind == "done":
            self.close()
        return None

    def _on_step(self, event: Any) -> None:
        epoch, epochs = event_value(event, "epoch"), event_value(event, "epochs")
        steps = int(event_value(event, "steps") or 0)
        if self.counts == EPOCH_STEPS and (self.bar is None or event_value(event, "step") == 1):
            self.close()
            self._open(steps, f"{self.description} epoch {epoch}/{epochs}")
        bar = self._open(steps * int(epochs or 1))
        if self.counts != EPOCHS:
            bar.update(1)
        bar.set_description(f"{self.description} epoch {epoch}/{epochs}: {losses_text(event)}")

    def _open(self, total: int, description: str | None = None) -> Any:
        if self.bar is None:
            self.bar = self.make_bar(total, description or self.description)
        elif self.counts == EPOCHS and self.bar.total != total:
            self.bar.total = total
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
