"""Fuzz the image readers as an attacker would: only the readers' own error may escape.

Small valid PNG, JPEG, TIFF and DICOM seeds are built here and mutated deterministically
(input ``i`` of seed ``s`` is always the same bytes): byte flips, truncations, inserted and
deleted runs, and header fields (sizes, bit depths, offsets, lengths) overwritten with
values such as 0xFFFFFFFF. Each input goes to ``read_image``, ``image_shape`` and the napari
reader hook in a child process whose address space is capped, so a decoder that tries to
allocate what a header claims fails there (and is reported) instead of taking the machine
down. A child that dies or hangs is restarted after the input that killed it.

    python -m benchmarks.fuzz_readers --count 100000 --out fuzz-out

prints a JSON report (inputs tried, outcomes by class, the slowest input and its time) and
saves every escaping input, and the slowest one, under ``--out`` for reproduction.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.fuzz_inputs import EXT, build_seeds, header_fields, make_input

__all__ = ["ESCAPES", "build_seeds", "classify", "header_fields", "main", "make_input", "run"]

#: Outcomes that mean a bug: anything but the readers' own error, or a refused allocation.
ESCAPES = ("escape", "memory", "hook_raised", "crash", "hang")


# ----------------------------------------------------------------------- worker


def classify(path: Path) -> tuple[str, str]:
    """Run every reader entry point on ``path``; (outcome, detail) with the worst outcome."""
    import warnings

    from napari_causalseg import _reader
    from napari_causalseg.engine.images import (
        ImageReadError,
        ImageTooLargeError,
        image_shape,
        read_image,
    )

    outcome, detail = "ok", ""
    for fn in (read_image, image_shape):
        try:
            fn(path)
        except ImageTooLargeError:
            outcome = "too_large" if outcome == "ok" else outcome
        except ImageReadError as exc:
            if _caused_by(exc, MemoryError):
                return "memory", f"{fn.__name__}: {exc}"
            outcome = "read_error" if outcome == "ok" else outcome
        except Exception as exc:  # noqa: BLE001 - that is what we are looking for
            return "escape", f"{fn.__name__}: {type(exc).__name__}: {exc}"[:500]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = _reader.napari_get_reader(str(path))
            if reader is not None:
                reader(str(path))
    except Exception as exc:  # noqa: BLE001
        return "hook_raised", f"{type(exc).__name__}: {exc}"[:500]
    return outcome, detail


def _caused_by(exc: BaseException, kind: type) -> bool:
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, kind):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _cap_address_space(extra_mib: int) -> None:
    import resource

    vm = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    cap = vm + (extra_mib << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def worker(start: int, stop: int, seed: int, mem_mib: int, scratch: Path) -> None:
    """Child: one JSON line per input on stdout, flushed, so the parent knows the last one done."""
    import logging
    import warnings

    import napari_causalseg._reader  # noqa: F401 - import before the cap: imports map lots of memory

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    seeds = build_seeds()
    fields = {k: header_fields(k, v) for k, v in seeds.items()}
    if mem_mib > 0 and sys.platform.startswith("linux"):
        _cap_address_space(mem_mib)
    for name, data in seeds.items():  # warm up lazy imports so they do not count as slow inputs
        path = scratch / f"seed{EXT[name.split('_')[0]]}"
        path.write_bytes(data)
        classify(path)
    sys.stdout.write('{"ready": true}\n')
    sys.stdout.flush()
    for i in range(start, stop):
        name, data = make_input(i, seed, seeds, fields)
        path = scratch / f"input{EXT[name.split('_')[0]]}"
        path.write_bytes(data)
        t0 = time.perf_counter()
        outcome, detail = classify(path)
        dt = time.perf_counter() - t0
        sys.stdout.write(json.dumps({"i": i, "o": outcome, "t": round(dt, 5), "d": detail}) + "\n")
        sys.stdout.flush()


# ----------------------------------------------------------------------- parent


def _spawn(start: int, stop: int, seed: int, mem_mib: int, scratch: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.fuzz_readers", "--worker", "--start", str(start),
           "--stop", str(stop), "--seed", str(seed), "--mem-mib", str(mem_mib), "--scratch", str(scratch)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def run(count: int, *, seed: int = 0, out: Path | None = None, mem_mib: int = 2048,
        input_timeout_s: float = 60.0, budget_s: float | None = None) -> dict:
    """Fuzz ``count`` inputs, fewer when ``budget_s`` seconds of fuzzing (child start-up not
    counted) run out; the report as a dict."""
    seeds = build_seeds()
    fields = {k: header_fields(k, v) for k, v in seeds.items()}
    state = {"done": 0, "counts": {}, "escapes": [], "slowest": {"i": None, "t": 0.0}, "fuzz_s": 0.0}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-readers-") as scratch:
        while state["done"] < count and (budget_s is None or state["fuzz_s"] < budget_s):
            proc = _spawn(state["done"], count, seed, mem_mib, Path(scratch))
            try:
                _drain(proc, count, state, input_timeout_s, budget_s)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
    escapes, slowest = state["escapes"], state["slowest"]
    report = {"inputs": state["done"], "seconds": round(time.perf_counter() - t_start, 1),
              "fuzz_seconds": round(state["fuzz_s"], 1), "seed": seed, "seeds": len(seeds),
              "outcomes": dict(sorted(state["counts"].items())), "escapes": len(escapes),
              "escape_examples": escapes[:20], "slowest": {**slowest, "seed_file": _seed_name(slowest["i"], seeds)}}
    if out is not None:
        _save(out, report, escapes, slowest, seed, seeds, fields)
    return report


def _drain(proc, count: int, state: dict, timeout_s: float, budget_s: float | None) -> None:
    """Read the child's lines until it finishes, dies, hangs or the budget is spent."""
    ready_at = None
    spent = state["fuzz_s"]
    try:
        while state["done"] < count:
            if ready_at is not None:
                state["fuzz_s"] = spent + time.perf_counter() - ready_at
                if budget_s is not None and state["fuzz_s"] >= budget_s:
                    return
            ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
            line = proc.stdout.readline() if ready else None
            if not line and ready_at is None:
                raise RuntimeError(f"the fuzz worker did not start (exit status {proc.poll()}); "
                                   "run it by hand: python -m benchmarks.fuzz_readers --worker --stop 1 "
                                   "--scratch /tmp")
            if not line:
                kind = "hang" if line is None else "crash"
                if kind == "crash":
                    proc.wait()
                state["counts"][kind] = state["counts"].get(kind, 0) + 1
                state["escapes"].append({"i": state["done"], "o": kind, "d": f"child exit status {proc.poll()}"})
                state["done"] += 1
                return
            rec = json.loads(line)
            if rec.get("ready"):
                ready_at = time.perf_counter()
                continue
            _record(state, rec)
    finally:
        if ready_at is not None:
            state["fuzz_s"] = spent + time.perf_counter() - ready_at


def _record(state: dict, rec: dict) -> None:
    if (rec["i"] + 1) % 10_000 == 0:
        print(f"fuzz_readers: {rec['i'] + 1} inputs, {state['counts']}", file=sys.stderr, flush=True)
    state["counts"][rec["o"]] = state["counts"].get(rec["o"], 0) + 1
    if rec["o"] in ESCAPES:
        state["escapes"].append(rec)
    if rec["t"] > state["slowest"]["t"]:
        state["slowest"].update(i=rec["i"], t=rec["t"], o=rec["o"])
    state["done"] = rec["i"] + 1


def _seed_name(i: int | None, seeds: dict) -> str | None:
    return None if i is None else sorted(seeds)[i % len(seeds)]


def _save(out: Path, report, escapes, slowest, seed, seeds, fields) -> None:
    """The report, and each escaping input and the slowest one as a file to reproduce with."""
    out.mkdir(parents=True, exist_ok=True)
    for rec in [*escapes, {**slowest, "o": "slowest"}]:
        if rec.get("i") is None:
            continue
        name, data = make_input(rec["i"], seed, seeds, fields)
        (out / f"{rec['o']}-{rec['i']}{EXT[name.split('_')[0]]}").write_bytes(data)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="folder for report.json and escaping inputs")
    p.add_argument("--mem-mib", type=int, default=2048, help="address space the child may add after imports")
    p.add_argument("--budget-s", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--scratch", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.start, args.stop, args.seed, args.mem_mib, args.scratch)
        return 0
    report = run(args.count, seed=args.seed, out=args.out, mem_mib=args.mem_mib, budget_s=args.budget_s)
    print(json.dumps(report, indent=2))
    return 1 if report["escapes"] else 0


if __name__ == "__main__":
    sys.exit(main())
