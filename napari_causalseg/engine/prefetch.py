"""Text features of the notes a user is likely to type, computed ahead in the background.

The QaTa note grammar is finite (`notes.all_notes`: 64 notes), so a Segmenter can hold
tau for every one of them; a re-prompt with any of them then costs only the note's
convolution over the cached image features. The work runs in a background thread one
note at a time, each under the Segmenter's lock, so a user's own prompt waits for at most
one note's text encoder (~10 ms on 2 cores). A Segmenter starts it after its first prompt,
so it never slows that one down; it can be cancelled at any time.

The thread is not a daemon: a daemon thread still inside torch when the interpreter shuts
down aborted the process in about one exit in four. Exit now waits for the notes left
(under a second for all 64 with rn101 on 2 cores).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence


class NotePrefetch:
    """Calls `encode(note)` for each note in a background thread until done or cancelled."""

    def __init__(self, encode: Callable[[str], object], notes: Sequence[str]):
        self.notes = list(notes)
        self.encoded = 0  # notes finished so far
        self.error: BaseException | None = None  # a failure costs speed only, so it is kept, not raised
        self._encode = encode
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="causalseg-note-prefetch", daemon=False)
        self._thread.start()

    def _run(self) -> None:
        try:
            for note in self.notes:
                if self._cancel.is_set():
                    return
                self._encode(note)
                self.encoded += 1
        except Exception as exc:  # noqa: BLE001
            self.error = exc

    def cancel(self) -> None:
        """Stop after the note being encoded now."""
        self._cancel.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True once it has finished."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()
