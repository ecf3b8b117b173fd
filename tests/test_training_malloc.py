"""reuse_freed_memory: a training step's big buffers come from the heap, not the kernel."""

from __future__ import annotations

import resource

import pytest

from promptdistill.training.malloc import _glibc, reuse_freed_memory

MB = 1 << 20


def _faults_to_allocate_again(size: int) -> int:
    first = bytearray(size)  # zero-filled: every page touched
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = bytearray(size)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


@pytest.mark.skipif(_glibc() is None, reason="glibc only")
def test_a_freed_block_is_reused_without_page_faults() -> None:
    size = 64 * MB  # above glibc's largest mmap threshold (32 MB)
    outside = _faults_to_allocate_again(size)
    with reuse_freed_memory():
        _faults_to_allocate_again(size)  # grows the heap once
        inside = _faults_to_allocate_again(size)
    assert outside >= size // 4096 // 2  # glibc mmaps it afresh: every page faulted in again
    assert inside < outside // 10


def test_defaults_come_back_after_training() -> None:
    with reuse_freed_memory():
        pass
    # outside the block large allocations are mmap'd and returned again
    if _glibc() is not None:
        assert _faults_to_allocate_again(64 * MB) >= 64 * MB // 4096 // 2
