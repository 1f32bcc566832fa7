"""Keep torch from loading Triton into a napari process whose OpenGL driver loaded LLVM.

Mesa's OpenGL (llvmpipe under Xvfb, in VMs and remote desktops; radeonsi on AMD GPUs)
loads the system's libLLVM. Triton, which Linux CUDA builds of torch install, carries its
own LLVM, and loading it into the same process kills the process with a segmentation
fault (seen with Mesa's libLLVM-15 and Triton 3). torch imports Triton the first time
it imports torch._dynamo, which the first optimizer does: in napari, a fine-tune or the
first-use demo training would take napari down, and the user's unsaved work with it.
This package never compiles kernels with Triton, so where a system LLVM is loaded and
Triton is not, `import triton` is made to fail with ImportError; torch then goes on
without it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def system_llvm_loaded() -> bool:
    """Whether a shared libLLVM is mapped into this process (Linux; False elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return "/libLLVM" in maps


def block_triton_if_llvm_loaded() -> bool:
    """Make `import triton` fail where loading it would crash; True when it is blocked.

    Call on the main thread before starting model work (the GL context, and so LLVM,
    exists by then). Does nothing where Triton is already loaded or no LLVM is."""
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    if not system_llvm_loaded():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # Python's "import blocked" marker
    logger.info("OpenGL loaded the system's LLVM: torch will run without Triton in this process")
    return True
