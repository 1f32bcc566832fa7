"""Fine-tuning (and the demo model's first-use training) in a child Python process, so a
GUI never trains in its own process.

Training is the heaviest and most crash-prone thing the plugin does (an optimizer's first
import, native libraries, out-of-memory); in a child process a crash costs the run, not
napari with the user's open corrections, and when the run ends its memory (GPU memory
included) goes back to the system. The child is a fresh interpreter (spawned, never
forked): `python -m napari_causalseg.engine.finetune_process`, which reads one JSON
request on stdin, runs `finetune.Finetune`, and writes one JSON line per progress event
on stdout. A line "cancel" on its stdin cancels between steps; so does its stdin
closing, so an abandoned child never trains on. What it prints on stderr goes to a log
file whose last lines a crash report quotes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from .finetune import FinetuneConfig

PROTOCOL = "napari-causalseg.finetune/1"


class FinetuneProcessError(Exception):
    """Not a RuntimeError on purpose: Qt worker wrappers (superqt) swallow RuntimeErrors as
    "deleted C++ object" and never report them, which would hide a crash from the user."""


class FinetuneCrashed(FinetuneProcessError):
    """The child process ended without finishing: the message says how and what it said."""


class FinetuneFailed(FinetuneProcessError):
    """The child reported an error (bad data, bad checkpoint): the message is its own."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    return value


def event_to_dict(event: Any) -> dict[str, Any]:
    """A TrainEvent as plain JSON (the result of a 'finished' event included)."""
    data = {f.name: getattr(event, f.name) for f in fields(event) if f.name != "result"}
    if event.result is not None:
        data["result"] = event.result.to_dict()
    return _jsonable(data)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = {"SIGKILL": " (killed: out of memory, or ended by another program)",
               "SIGSEGV": " (a crash in native code)", "SIGABRT": " (aborted)"}.get(name, "")
        return f"was ended by {name}{why}"
    return f"exited with status {code}"


class FinetuneProcess:
    """Start a fine-tuning run in a child process and read its events.

    `events()` yields one dict per TrainEvent (same fields; 'finished' has `result`)
    and raises FinetuneFailed or FinetuneCrashed when the child fails or dies."""

    def __init__(self, data_dir: str | Path | None, config: FinetuneConfig | None,
                 threads: int | None = None, log_dir: str | Path | None = None, job: str = "finetune"):
        """`job="demo"`: train (or find) the demo model instead; `data_dir`/`config` unused."""
        request = {"protocol": PROTOCOL, "job": job, "data_dir": str(data_dir),
                   "config": _jsonable(asdict(config)) if config is not None else None,
                   "threads": threads}
        log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        fd, log_name = tempfile.mkstemp(prefix="finetune-", suffix=".log", dir=log_dir)
        self.log_path = Path(log_name)
        self._log = os.fdopen(fd, "wb")
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "napari_causalseg.engine.finetune_process"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
            start_new_session=True,  # a Ctrl-C in napari's terminal does not reach it
        )
        self._lock = threading.Lock()
        self._send(json.dumps(request))

    @property
    def pid(self) -> int:
        return self.process.pid

    def _send(self, line: str) -> None:
        with self._lock:
            try:
                self.process.stdin.write((line + "\n").encode())
                self.process.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the child is gone; events() reports how it ended

    def cancel(self) -> None:
        """Ask the child to stop between steps (it writes no model)."""
        self._send("cancel")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def events(self) -> Iterator[dict[str, Any]]:
        finished = False
        try:
            for raw in self.process.stdout:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue  # not ours (a library printing to stdout)
                if not isinstance(message, dict):
                    continue
                if message.get("kind") == "error":
                    self.process.wait()
                    raise FinetuneFailed(message.get("message") or "fine-tuning failed")
                finished = finished or message.get("kind") == "finished"
                yield message
            code = self.process.wait()
            if not finished:
                raise FinetuneCrashed(
                    f"the fine-tuning process {_describe_exit(code)} before it finished; no case and "
                    f"no earlier model was touched.{self._log_tail()}"
                )
        finally:
            self.close()

    def _log_tail(self, lines: int = 5) -> str:
        try:
            self._log.flush()
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        tail = [t for t in text if t.strip()][-lines:]
        return (" Its last words: " + " | ".join(tail) + f" (log: {self.log_path})") if tail else ""

    def close(self) -> None:
        if self.process.poll() is None:
            self.cancel()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self._log.close()


# ------------------------------------------------------------------ the child's side


def _config_from(data: dict[str, Any]) -> FinetuneConfig:
    known = {f.name for f in fields(FinetuneConfig)}
    kwargs = {k: v for k, v in data.items() if k in known}
    for key in ("checkpoint", "out_dir"):
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key])
    return FinetuneConfig(**kwargs)


def _child_main() -> int:
    out = sys.stdout
    sys.stdout = sys.stderr  # only our JSON lines go to the parent's pipe

    def emit(data: dict[str, Any]) -> None:
        out.write(json.dumps(data) + "\n")
        out.flush()

    try:
        request = json.loads(sys.stdin.readline())
        if request.get("protocol") != PROTOCOL:
            raise ValueError(f"unknown request protocol {request.get('protocol')!r}")
        if request.get("threads"):
            import torch

            torch.set_num_threads(int(request["threads"]))
        if request.get("job") == "demo":
            return _demo_job(emit)
        from .finetune import Finetune

        job = Finetune(request["data_dir"], _config_from(request["config"]))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one message
        emit({"kind": "error", "message": str(exc), "type": type(exc).__name__})
        return 1

    def watch_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "cancel":
                break
        job.cancel()  # "cancel", or the parent closed the pipe (it went away)

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        for event in job.run():
            emit(event_to_dict(event))
    except Exception as exc:  # noqa: BLE001
        emit({"kind": "error", "message": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__})
        return 1
    return 0


def _demo_job(emit) -> int:
    from .demo import demo_checkpoint

    try:
        path = demo_checkpoint(progress=lambda event: emit(event_to_dict(event)))
    except Exception as exc:  # noqa: BLE001
        emit({"kind": "error", "message": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__})
        return 1
    emit({"kind": "finished", "result": {"checkpoint": str(path)}})
    return 0


def demo_checkpoint_in_child(progress=None, log_dir: str | Path | None = None) -> Path:
    """The demo checkpoint, trained on first use in a child process (see module docstring);
    `progress` gets each event as a dict. Cached: no process is started."""
    from .demo import demo_checkpoint_path

    path = demo_checkpoint_path()
    if path.is_file():
        return path
    for event in FinetuneProcess(None, None, log_dir=log_dir, job="demo").events():
        if event.get("kind") == "finished":
            return Path(event["result"]["checkpoint"])
        if progress is not None:
            progress(event)
    raise FinetuneCrashed("the demo model's training ended without a checkpoint")


if __name__ == "__main__":
    sys.exit(_child_main())
