"""Keep freed memory in the process heap during training (Linux, glibc).

glibc serves every allocation above its mmap threshold (dynamic, at most 32 MB) with a fresh
mmap and gives it back to the kernel on free. A training step allocates and frees the same large
activations every time, so each step faults them in again page by page. Measured on the 2-core
dev machine (SmolLM2-135M, LoRA, ~1,700-token steps; docs/benchmarks.md, "Training"): 250-380k
minor page faults and ~1.7 s of kernel time per ~4.5 s step; with mmap off and trimming
deferred, ~72k faults and ~1.0 s. The heap then stays at the peak of a step until
`reuse_freed_memory` exits, which is what a training loop needs anyway (PyTorch's CUDA caching
allocator does the same on GPUs).

Other platforms and C libraries: a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
DEFAULT_MMAP_MAX = 65536
DEFAULT_TRIM_THRESHOLD = 128 * 1024
NEVER_TRIM = 2**31 - 1  # mallopt takes an int: 2 GB of free heap top before trimming


def _glibc() -> ctypes.CDLL | None:
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # glibc only: musl has neither; a missing symbol raises AttributeError
        if not (libc.gnu_get_libc_version and libc.mallopt and libc.malloc_trim):
            return None
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Inside: large blocks are taken from and returned to the heap, not mmap'd each time.
    On exit: glibc's defaults again, and the free heap top is given back to the kernel."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
