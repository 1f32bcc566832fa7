"""Freed memory is reused while training on the CPU, and the defaults come back after;
between inference calls the heap keeps a call's freed transients.

Each case runs in a fresh interpreter: malloc's state (its free lists, the heap's layout)
carries over between blocks in one process, as it does in a training process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from napari_causalseg.engine.host_memory import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc's malloc only")

MEASURE = """
import json, resource, torch
from napari_causalseg.engine.host_memory import keep_freed_memory, keep_heap_between_calls
BIG = 64 * 2**20 // 4  # float32 elements: 64 MiB, above glibc's largest mmap threshold

def faults():
    # minor page faults of filling a large tensor after equal ones were freed, in a
    # loop's steady state: the fewest of a few rounds after a warm-up (aligned
    # allocations may alternate between two freed blocks before settling)
    seen = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tensor = torch.ones(BIG)
        seen.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del tensor
    return min(seen[3:])
"""


def run(case: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE + case], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_freed_memory_is_reused_within_the_block():
    r = run("default = faults()\nwith keep_freed_memory() as applied:\n    kept = faults()\n"
            "print(json.dumps(dict(default=default, kept=kept, applied=applied)))")
    assert r["applied"]
    assert r["default"] > 1000, "a fresh 64 MiB mapping faults its pages in"
    assert r["kept"] < r["default"] / 10, r


def test_the_memory_goes_back_to_the_system_after_the_block():
    """Inside, freed blocks stay resident for reuse; at the end they are released."""
    r = run("import os\n"
            "def rss():\n"
            "    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') >> 20\n"
            "start = rss()\n"
            "with keep_freed_memory():\n"
            "    tensors = [torch.ones(BIG) for _ in range(6)]\n    del tensors\n    inside = rss()\n"
            "print(json.dumps(dict(start=start, inside=inside, after=rss())))")
    assert r["inside"] - r["start"] > 300, r  # 384 MiB freed but kept
    assert r["inside"] - r["after"] > 300, r  # and released when the block ends


def test_nested_blocks_keep_the_setting_until_the_outer_one_ends():
    r = run("with keep_freed_memory():\n    with keep_freed_memory():\n        pass\n"
            "    inner_done = faults()\nprint(json.dumps(dict(inner_done=inner_done)))")
    assert r["inner_done"] < 1000, r  # a fresh 64 MiB block would fault 16,384 pages


def test_disabled_changes_nothing():
    r = run("with keep_freed_memory(enabled=False) as applied:\n    off = faults()\n"
            "print(json.dumps(dict(off=off, applied=applied)))")
    assert not r["applied"] and r["off"] > 1000, r


def test_after_the_block_tensors_up_to_32_mib_reuse_the_heap():
    """A process that trains before it has freed any large tensor (a script: train, then
    segment) still reuses freed memory for inference-sized tensors afterwards, as glibc's
    sliding threshold would have let it, instead of mapping and faulting each one afresh.
    Above 32 MiB tensors are mapped again, as they are in any process."""
    r = run("SIX = 6 * 2**20 // 4\n"
            "def faults_of(n):\n"
            "    seen = []\n"
            "    for _ in range(6):\n"
            "        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "        tensor = torch.ones(n)\n"
            "        seen.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
            "        del tensor\n"
            "    return min(seen[3:])\n"
            "with keep_freed_memory():\n    pass\n"
            "print(json.dumps(dict(six=faults_of(SIX), big=faults())))")
    assert r["six"] < 100, r  # a fresh 6 MiB mapping would fault 1,536 pages each time
    assert r["big"] > 1000, r  # 64 MiB: mapped and released as by default


CALLS = """
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
TWELVE = 12 * 2**20
def call():
    # a prompt's transients: 72 MiB of heap blocks (more than glibc's largest sliding trim
    # threshold, 64 MiB), all freed at its end; the faults of making them again in the
    # next call are what a freed-and-trimmed top costs. Straight from malloc, so that no
    # other block (a tensor's bookkeeping) lands above them and holds the heap's top.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(TWELVE) for _ in range(6)]
    for block in blocks:
        ctypes.memset(block, 1, TWELVE)
    made = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    for block in blocks:
        libc.free(block)
    return made
# glibc's sliding rule after a 20 MiB block was freed: blocks under 20 MiB from the heap,
# whose top goes back to the system above 40 MiB free
libc.free(libc.malloc(20 * 2**20))
"""


@pytest.mark.parametrize("kept", [False, True])
def test_between_calls_the_heap_keeps_a_calls_transients(kept):
    """The steady state of repeated calls faults nothing in when the heap is kept, and
    pages in every call's 48 MiB again under glibc's own thresholds."""
    r = run(CALLS + f"applied = keep_heap_between_calls() if {kept} else None\n"
            "seen = [call() for _ in range(5)]\n"
            "print(json.dumps(dict(seen=seen, applied=applied)))")
    if kept:
        assert r["applied"] and max(r["seen"][2:]) < 500, r
    else:
        assert min(r["seen"][2:]) > 12000, r  # 18,432 pages per call


def test_keeping_the_heap_inside_a_training_block_changes_nothing():
    """Inside keep_freed_memory nothing is trimmed, not even above 128 MiB: the call must
    not relax that."""
    r = run(CALLS + "def refill():\n"
            "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    blocks = [libc.malloc(64 * 2**20) for _ in range(4)]\n"
            "    for block in blocks:\n"
            "        ctypes.memset(block, 1, 64 * 2**20)\n"
            "    made = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
            "    for block in blocks:\n"
            "        libc.free(block)\n"
            "    return made\n"
            "with keep_freed_memory():\n    keep_heap_between_calls()\n    seen = [refill() for _ in range(4)]\n"
            "print(json.dumps(dict(seen=seen)))")
    assert max(r["seen"][2:]) < 1000, r  # 256 MiB given back would fault 65,536 pages again
