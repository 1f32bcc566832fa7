"""A few thousand mutated PNG, JPEG, TIFF and DICOM files: only the readers' own error escapes.

Deterministic (the same inputs every run), bounded in count and time, run in a child
process whose address space is capped so a decoder that tries to allocate what a
corrupt header claims is reported instead of taking the test machine down. The long
run is ``python -m benchmarks.fuzz_readers --count 100000``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmarks import fuzz_inputs, fuzz_readers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS")


def test_mutated_files_raise_only_the_readers_own_error(tmp_path):
    report = fuzz_readers.run(3000, seed=0, out=tmp_path, budget_s=5.0)
    print(report)
    assert report["escapes"] == 0, report["escape_examples"]
    assert report["inputs"] >= 500, report  # the time budget still left a real sample
    outcomes = report["outcomes"]
    # the mutations reach every class: decoded, refused as corrupt, refused as too large
    assert outcomes.get("ok", 0) > 0 and outcomes.get("read_error", 0) > 0 and outcomes.get("too_large", 0) > 0
    assert report["slowest"]["t"] < 5.0, report["slowest"]  # no decode is unbounded


def test_seeds_are_valid_and_mutations_deterministic(tmp_path):
    seeds = fuzz_readers.build_seeds()
    assert {name.split("_")[0] for name in seeds} == {"png", "jpeg", "tiff", "dicom"}
    fields = {k: fuzz_readers.header_fields(k, v) for k, v in seeds.items()}
    for name, data in seeds.items():
        path = tmp_path / f"{name}{fuzz_inputs.EXT[name.split('_')[0]]}"
        path.write_bytes(data)
        assert fuzz_readers.classify(path) == ("ok", ""), name
        assert fields[name] and all(0 <= off < len(data) for off, _, _ in fields[name]), name
    first = [fuzz_readers.make_input(i, 7, seeds, fields) for i in range(50)]
    assert first == [fuzz_readers.make_input(i, 7, seeds, fields) for i in range(50)]
    assert sum(data != seeds[name] for name, data in first) >= 45


def test_the_memory_cap_turns_a_huge_allocation_into_memory_error():
    """The guard the fuzz relies on: under the cap, 8 GiB cannot be allocated."""
    code = ("from benchmarks import fuzz_readers\nimport numpy as np\n"
            "fuzz_readers._cap_address_space(512)\n"
            "try:\n    np.ones(8 << 30, np.uint8)\nexcept MemoryError:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "refused", out.stderr[-1000:]
