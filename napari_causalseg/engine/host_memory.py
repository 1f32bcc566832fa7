"""Keep freed host memory in the process while training on the CPU (glibc only).

Why: a training step at 224 px allocates and frees tens of full-resolution tensors of
~200 MB (the decoders' features, their gradients). glibc serves each from a fresh mmap
and unmaps it on free, so every step page-faults ~GBs of new, kernel-zeroed memory:
measured on a 2-core machine, half of an rn101 step's time. With mmap off for the
duration and no trimming, freed blocks go back to malloc's heap and the next step reuses
them (same numbers, ~1.6x faster steps, ~7 % higher peak memory). When training ends
mmap comes back for tensors over 32 MiB, and the unused heap is returned to the system.

Between inference calls (`keep_heap_between_calls`, a CPU Segmenter's process) the heap
keeps up to 128 MiB of freed memory instead of giving back its top at each free: a first
prompt at 224 px frees ~40 MB of transient tensors at once, and once they sat at the top
of the heap (in a long session, ~40 images in) glibc's own threshold gave them back after
every prompt and the next one faulted ~10,000 pages in again (~10-20 ms a prompt here).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
import threading
from collections.abc import Iterator

# mallopt parameters (malloc.h) and glibc's defaults for them
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_DEFAULT_MMAP_MAX = 65536
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int
# After a block, and between inference calls: tensors up to 32 MiB from the heap, where
# glibc's own sliding mmap threshold ends in a process that frees large tensors (it rises
# to each freed mapping's size, up to 32 MiB on 64-bit). Any mallopt call switches the
# sliding off for good, so "the defaults" (128 KiB) would leave every tensor over 128 KiB
# a fresh, page-faulted mapping for the rest of the process: inference after training.
# The heap's top goes back to the system only above 128 MiB of free memory, not at
# glibc's sliding trim threshold (twice the largest mapping freed so far below 32 MiB;
# often ~40 MB, the size of a first prompt's transients: see above).
_AFTER_MMAP_THRESHOLD = 32 * 2**20
_AFTER_TRIM_THRESHOLD = 128 * 2**20

_lock = threading.Lock()
_depth = 0  # nested or concurrent runs in one process share one setting


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library this process runs on, if it is glibc (musl has no tunable malloc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded: no library search
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, freed memory stays in the process for reuse; yields whether
    that applies here (Linux with glibc)."""
    global _depth
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _settle(libc)
                libc.malloc_trim(0)


def _settle(libc: ctypes.CDLL) -> None:
    libc.mallopt(_M_MMAP_THRESHOLD, _AFTER_MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _AFTER_TRIM_THRESHOLD)


def keep_heap_between_calls() -> bool:
    """From now on in this process (glibc only; returns whether that applies): tensors up
    to 32 MiB come from the heap, and its freed memory stays for the next call up to 128
    MiB (see the module's docstring). Inside a `keep_freed_memory` block nothing changes:
    the block keeps everything already, and its end settles on the same thresholds."""
    libc = _glibc()
    if libc is None:
        return False
    with _lock:
        if _depth == 0:
            _settle(libc)
    return True


def return_free_heap() -> bool:
    """Give the heap's free memory back to the system now (glibc's malloc_trim): after a
    one-off burst of allocations, e.g. the forward pass that sizes the packed convolutions
    of a new Segmenter, whose freed blocks would otherwise stay in the process."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
