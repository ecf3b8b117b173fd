"""reuse_freed_memory: a training step's big buffers come from the heap, not the kernel.

glibc's own accounting (mallinfo2) is the observation: where a 64 MB block lives, and whether
the heap keeps it once freed. Each observation runs in a fresh interpreter: inside the test
process, earlier tests can leave a free chunk of 64 MB or more in the middle of the heap, and
glibc then serves the block from it without any mmap (a full CI run saw 1.8 MB mmap'd while
a 64 MB block was held). Page-fault counts show the effect too, but some sandboxes report no
minor faults at all (a CI run saw 0 for a freshly mmap'd 64 MB), so they are checked only where
the kernel counts them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from promptdistill.training.malloc import _glibc

# The child's side: a few observations of glibc's heap, printed as one JSON object.
PROBE = """
import ctypes, json, resource, sys
from promptdistill.training.malloc import _glibc, reuse_freed_memory

SIZE = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MB)
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS]

libc = _glibc()
libc.mallinfo2.restype = Mallinfo2

def mmapped_while_held():
    block = bytearray(SIZE)
    held = int(libc.mallinfo2().hblkhd)
    del block
    return held

def faults_to_allocate_again():
    first = bytearray(SIZE)
    first[::4096] = b"\\1" * len(range(0, SIZE, 4096))  # every page touched
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = bytearray(SIZE)
    second[::4096] = b"\\1" * len(range(0, SIZE, 4096))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults

seen = {}
if sys.argv[1] == "mmap":
    seen["outside"] = mmapped_while_held()
    with reuse_freed_memory():
        seen["inside"] = mmapped_while_held()
        seen["kept_free"] = int(libc.mallinfo2().fordblks)
    seen["after"] = mmapped_while_held()
else:
    seen["outside"] = faults_to_allocate_again()
    with reuse_freed_memory():
        faults_to_allocate_again()  # grows the heap once
        seen["inside"] = faults_to_allocate_again()
print(json.dumps(seen))
"""

SIZE = 64 << 20

glibc_only = pytest.mark.skipif(
    _glibc() is None or not hasattr(_glibc(), "mallinfo2"), reason="glibc >= 2.33 only"
)


def _observe(kind: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, kind], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen: dict[str, int] = json.loads(done.stdout)
    return seen


@glibc_only
def test_inside_a_large_block_comes_from_the_heap_and_stays_there() -> None:
    seen = _observe("mmap")
    assert seen["outside"] >= SIZE  # outside: its own mmap, unmapped on free
    assert seen["inside"] < SIZE
    assert seen["kept_free"] >= SIZE  # freed, and kept for the next step


@glibc_only
def test_defaults_come_back_after_training() -> None:
    assert _observe("mmap")["after"] >= SIZE  # mmap'd again, so given back on free


@glibc_only
def test_a_freed_block_is_reused_without_page_faults() -> None:
    seen = _observe("faults")
    if seen["outside"] == 0:
        pytest.skip("this kernel reports no minor page faults (getrusage ru_minflt)")
    assert seen["inside"] < max(seen["outside"] // 10, 1)
