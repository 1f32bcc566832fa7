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
import io
import json
import os
import random
import select
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Outcomes that mean a bug: anything but the readers' own error, or a refused allocation.
ESCAPES = ("escape", "memory", "hook_raised", "crash", "hang")
_INTERESTING = (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFF8040, 0x0000FFFF, 0x00010000, 0xFFFF,
                0x7FFF, 0x8000, 0xFF, 0, 1, 2, 3, 4, 8, 16, 17, 32, 64)
_EXT = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "dicom": ".dcm"}


# ------------------------------------------------------------------------ seeds


def _png_seeds() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for name, arr, mode in (
        ("png_gray8", rng.integers(0, 256, (16, 16), dtype=np.uint8), None),
        ("png_gray16", rng.integers(0, 65536, (8, 8), dtype=np.uint16), None),
        ("png_rgb", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), None),
        ("png_palette", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "P"),
    ):
        im = Image.fromarray(arr)
        if mode == "P":
            im = im.convert("P")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out[name] = buf.getvalue()
    return out


def _jpeg_seeds() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    out = {}
    for name, arr, kw in (
        ("jpeg_gray", rng.integers(0, 256, (16, 16), dtype=np.uint8), {}),
        ("jpeg_rgb", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), {}),
        ("jpeg_progressive", rng.integers(0, 256, (16, 24, 3), dtype=np.uint8), {"progressive": True}),
    ):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=80, **kw)
        out[name] = buf.getvalue()
    return out


def _tiff_seeds() -> dict[str, bytes]:
    import numpy as np
    import tifffile

    rng = np.random.default_rng(2)
    out = {}
    for name, arr, kw in (
        ("tiff_u8", rng.integers(0, 256, (16, 16), dtype=np.uint8), {}),
        ("tiff_u16_zlib", rng.integers(0, 4096, (16, 16), dtype=np.uint16), {"compression": "zlib"}),
        ("tiff_rgb_planar", rng.integers(0, 256, (3, 8, 8), dtype=np.uint8),
         {"photometric": "rgb", "planarconfig": "separate"}),
        ("tiff_f32_tiled", rng.random((32, 32), dtype=np.float32), {"tile": (16, 16)}),
        ("tiff_pages", rng.integers(0, 256, (2, 8, 8), dtype=np.uint8), {"photometric": "minisblack"}),
        ("tiff_big", rng.integers(0, 256, (8, 8), dtype=np.uint8), {"bigtiff": True}),
    ):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr, **kw)
        out[name] = buf.getvalue()
    return out


def _dicom_bytes(pixels, *, photometric="MONOCHROME2", frames=1, rle=False, window=None,
                 rescale=None, implicit=False, voi=None) -> bytes:
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fuzz", photometric, str(pixels.shape)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("seed.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if pixels.ndim == 4 or photometric == "RGB" else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = 12 if pixels.dtype == np.uint16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi == "SIGMOID":
        ds.VOILUTFunction = "SIGMOID"
    elif voi == "LUT":
        ds.VOILUTSequence = [_voi_lut_item()]
    ds.PixelSpacing = [0.139, 0.139]
    ds.PixelData = pixels.tobytes()
    if rle:
        ds.compress(RLELossless)
    buf = io.BytesIO()
    if implicit:  # pre-Part-10: no preamble, no file meta
        ds.preamble = None
        ds.file_meta = FileMetaDataset()
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    else:
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _voi_lut_item():
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.add_new(0x00283006, "OW", bytes(range(256)) * 2)  # 256 entries, little endian
    return item


def _dicom_seeds() -> dict[str, bytes]:
    import numpy as np

    rng = np.random.default_rng(3)
    u16 = rng.integers(0, 4096, (8, 8), dtype=np.uint16)
    return {
        "dicom_mono2": _dicom_bytes(u16, window=(2048, 4096), rescale=(1, -1024)),
        "dicom_mono1": _dicom_bytes(u16, photometric="MONOCHROME1", rescale=(0.5, 0)),
        "dicom_rgb": _dicom_bytes(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), photometric="RGB"),
        "dicom_frames": _dicom_bytes(rng.integers(0, 4096, (2, 6, 6), dtype=np.uint16), frames=2),
        "dicom_rle": _dicom_bytes(u16, rle=True),
        "dicom_implicit": _dicom_bytes(u16, implicit=True),
        "dicom_sigmoid": _dicom_bytes(u16, window=(2048, 1000), voi="SIGMOID"),
        "dicom_voilut": _dicom_bytes(u16, window=(2048, 1000), voi="LUT"),
    }


def build_seeds() -> dict[str, bytes]:
    """Every seed by name; the name's prefix is its format."""
    return {**_png_seeds(), **_jpeg_seeds(), **_tiff_seeds(), **_dicom_seeds()}


def header_fields(name: str, data: bytes) -> list[tuple[int, int, str]]:
    """(offset, width, byte order) of the size-bearing header fields of a seed."""
    if name.startswith("png"):
        return [(16, 4, ">"), (20, 4, ">"), (24, 1, ">"), (25, 1, ">"), (33, 4, ">")]
    if name.startswith("jpeg"):
        sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
        return [(sof + 2, 2, ">"), (sof + 4, 1, ">"), (sof + 5, 2, ">"), (sof + 7, 2, ">"), (sof + 9, 1, ">")]
    if name.startswith("tiff"):
        return _tiff_fields(data)
    return _dicom_fields(data, implicit=name.endswith("implicit"))


def _tiff_fields(data: bytes) -> list[tuple[int, int, str]]:
    order = "<" if data[:2] == b"II" else ">"
    if data[2] == 43:  # BigTIFF: 8-byte offsets, 20-byte entries
        ifd, count_w, entry_w, value_at = struct.unpack_from(order + "Q", data, 8)[0], 8, 20, 12
        count = struct.unpack_from(order + "Q", data, ifd)[0]
    else:
        ifd, count_w, entry_w, value_at = struct.unpack_from(order + "I", data, 4)[0], 2, 12, 8
        count = struct.unpack_from(order + "H", data, ifd)[0]
    fields = [(4, 4, order), (ifd, count_w, order)]
    for k in range(min(count, 64)):
        entry = ifd + count_w + entry_w * k
        fields += [(entry + 2, 2, order), (entry + 4, 4, order), (entry + value_at, 4, order)]
    return fields


_DICOM_TAGS = (b"\x28\x00\x02\x30", b"\x28\x00\x56\x10", b"\x28\x00\x10\x00", b"\x28\x00\x11\x00", b"\x28\x00\x02\x00", b"\x28\x00\x00\x01",
               b"\x28\x00\x01\x01", b"\x28\x00\x08\x00", b"\x28\x00\x03\x01", b"\xe0\x7f\x10\x00",
               b"\x02\x00\x00\x00")


def _dicom_fields(data: bytes, implicit: bool) -> list[tuple[int, int, str]]:
    fields = []
    for tag in _DICOM_TAGS:
        at = data.find(tag)
        if at < 0:
            continue
        if implicit:
            fields += [(at + 4, 4, "<"), (at + 8, 2, "<")]
        elif data[at + 4:at + 6] in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF"):
            fields += [(at + 8, 4, "<"), (at + 12, 4, "<")]
        else:
            fields += [(at + 6, 2, "<"), (at + 8, 2, "<")]
    return fields


# --------------------------------------------------------------------- mutation


def mutate(data: bytes, fields: list[tuple[int, int, str]], rng: random.Random) -> bytes:
    """One to three stacked mutations; the same ``rng`` state gives the same bytes."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3))):
        op = rng.random()
        n = max(len(buf), 1)
        if op < 0.35 and fields:  # header field overwrite
            off, width, order = rng.choice(fields)
            value = rng.choice(_INTERESTING) if rng.random() < 0.8 else rng.getrandbits(32)
            value &= (1 << (8 * width)) - 1
            fmt = order + {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
            if 0 <= off <= len(buf) - width:
                struct.pack_into(fmt, buf, off, value)
        elif op < 0.55:  # byte flips, biased to the header
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(min(n, 512)) if rng.random() < 0.7 else rng.randrange(n)
                if i < len(buf):
                    buf[i] ^= 1 << rng.randrange(8)
        elif op < 0.7:  # truncation
            del buf[rng.randrange(n):]
        elif op < 0.85:  # inserted run
            run = bytes([rng.randrange(256)]) * rng.randint(1, 64) if rng.random() < 0.5 else \
                rng.randbytes(rng.randint(1, 64))
            i = rng.randrange(n)
            buf[i:i] = run
        elif op < 0.95:  # deleted run
            i = rng.randrange(n)
            del buf[i:i + rng.randint(1, 32)]
        else:  # interesting 4-byte value anywhere
            i = rng.randrange(n)
            buf[i:i + 4] = struct.pack("<I", rng.choice(_INTERESTING))
    return bytes(buf)


def make_input(i: int, seed: int, seeds: dict[str, bytes], fields: dict) -> tuple[str, bytes]:
    """Input ``i`` of a run: (seed name, mutated bytes)."""
    names = sorted(seeds)
    name = names[i % len(names)]
    rng = random.Random(seed * 1_000_003 + i)
    return name, mutate(seeds[name], fields[name], rng)


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
        path = scratch / f"seed{_EXT[name.split('_')[0]]}"
        path.write_bytes(data)
        classify(path)
    sys.stdout.write('{"ready": true}\n')
    sys.stdout.flush()
    for i in range(start, stop):
        name, data = make_input(i, seed, seeds, fields)
        path = scratch / f"input{_EXT[name.split('_')[0]]}"
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
        (out / f"{rec['o']}-{rec['i']}{_EXT[name.split('_')[0]]}").write_bytes(data)
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
