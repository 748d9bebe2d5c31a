"""training.allocator: inside heap_allocations glibc maps nothing and keeps freed memory."""

from __future__ import annotations

import ctypes

import pytest

from training.allocator import _glibc, heap_allocations

LARGE = 64 * 1024 * 1024  # above glibc's largest dynamic mmap threshold (32 MiB)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@pytest.fixture
def libc():
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallopt, mallinfo2)")
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def test_large_blocks_come_from_the_heap_and_stay_there_after_free(libc):
    with heap_allocations() as applied:
        assert applied
        before = libc.mallinfo2()
        block = libc.malloc(LARGE)
        during = libc.mallinfo2()
        libc.free(block)
        after_free = libc.mallinfo2()
    assert during.hblks == before.hblks  # not mmap'd
    assert during.uordblks >= before.uordblks + LARGE  # it is heap memory in use
    assert after_free.arena == during.arena  # and kept what was freed (no trim)
    assert after_free.fordblks >= LARGE


def test_glibc_defaults_return_on_exit(libc):
    with heap_allocations():
        libc.free(libc.malloc(LARGE))
        kept = libc.mallinfo2()
    # The next free that reaches the heap's top gives the kept memory back (trim threshold) ...
    libc.free(libc.malloc(100 * 1024))  # under any mmap threshold: carved from the top
    trimmed = libc.mallinfo2()
    assert trimmed.arena <= kept.arena - LARGE // 2
    # ... and a request larger than the heap's free memory is mmap'd again.
    block = libc.malloc(trimmed.fordblks + LARGE)
    try:
        assert libc.mallinfo2().hblks == trimmed.hblks + 1
    finally:
        libc.free(block)


def test_disabled_changes_nothing(libc):
    with heap_allocations(enabled=False) as applied:
        assert not applied
        before = libc.mallinfo2()
        block = libc.malloc(before.fordblks + LARGE)
        assert libc.mallinfo2().hblks == before.hblks + 1
        libc.free(block)
