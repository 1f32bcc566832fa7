"""One progress adapter for the CLI, the demo and both widgets: what a bar counts and what
an epoch's line says, driven by real TrainEvents (and their dict form) into real tqdm bars."""

from __future__ import annotations

import io
from dataclasses import asdict

import pytest
from tqdm import tqdm

from napari_causalseg.engine.events import TrainEvent
from napari_causalseg.engine.progress import EPOCH_STEPS, EPOCHS, RUN_STEPS, EventBar, epoch_line

VAL = {"per_image": {"dice": 0.8114}, "global": {"dice": 0.8421}}


def run_events(epochs=2, steps=3):
    for e in range(1, epochs + 1):
        for s in range(1, steps + 1):
            yield TrainEvent("step", e, epochs, s, steps, loss_c=0.5 / s, loss_s=0.69)
        yield TrainEvent("epoch", e, epochs, steps, steps, loss_c=0.4, loss_s=0.7,
                         val=VAL if e == epochs else None)
    yield TrainEvent("done", epochs, epochs, stopped="max_epochs")


class Bars:
    """Real tqdm bars writing to a buffer, remembered so the test can read them back."""

    def __init__(self):
        self.made = []

    def __call__(self, total, desc):
        bar = tqdm(total=total, desc=desc, file=io.StringIO())
        self.made.append(bar)
        return bar


@pytest.mark.parametrize("as_dict", [False, True])
def test_run_steps_one_bar_over_the_whole_run(as_dict):
    bars = Bars()
    feed = EventBar(bars, RUN_STEPS, "demo")
    lines = [feed.feed(asdict(ev) if as_dict else ev) for ev in run_events()]
    assert len(bars.made) == 1 and bars.made[0].total == 6 and bars.made[0].n == 6
    assert bars.made[0].desc.startswith("demo epoch 2/2: L_c 0.167, L_s 0.690")
    assert feed.bar is None  # closed on 'done'
    assert [line for line in lines if line] == [
        "epoch 1/2: L_c 0.400, L_s 0.700",
        "epoch 2/2: L_c 0.400, L_s 0.700, val Dice 0.811 per image, 0.842 global",
    ]


def test_epochs_bar_takes_its_total_from_the_plan_and_counts_epochs():
    bars = Bars()
    feed = EventBar(bars, EPOCHS, "Fine-tuning")
    feed.feed({"kind": "plan", "epochs": 5, "message": "5 epochs"})
    assert bars.made[0].total == 5
    for ev in list(run_events())[:-1]:
        feed.feed(ev)
    assert len(bars.made) == 1 and bars.made[0].n == 2
    assert bars.made[0].total == 2  # the run's own count wins (a time budget ends it sooner)


def test_epoch_steps_a_bar_per_epoch():
    bars = Bars()
    feed = EventBar(bars, EPOCH_STEPS, "train")
    for ev in run_events(epochs=3, steps=2):
        feed.feed(ev)
    assert [b.total for b in bars.made] == [2, 2, 2] and all(b.n == 2 for b in bars.made)
    assert feed.bar is None


def test_bad_unit_and_unvalidated_epoch_line():
    with pytest.raises(ValueError, match="unknown progress unit 'minutes'"):
        EventBar(Bars(), "minutes")
    assert epoch_line({"epoch": 1, "epochs": 9, "loss_c": 1, "loss_s": 2, "val": None}) == (
        "epoch 1/9: L_c 1.000, L_s 2.000")
