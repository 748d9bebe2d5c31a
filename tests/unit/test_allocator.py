"""training.allocator: inside heap_allocations glibc maps nothing and keeps freed memory."""

from __future__ import annotations

import ctypes

import pytest

from training.allocator import USER_SETTINGS, _glibc, heap_allocations

LARGE = 64 * 1024 * 1024  # above glibc's largest dynamic mmap threshold (32 MiB)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@pytest.fixture
def libc(monkeypatch):
    # The environment's own malloc settings switch heap_allocations off; other code in this
    # process may have set them (Dask's nanny puts MALLOC_TRIM_THRESHOLD_ into os.environ).
    for name in (*USER_SETTINGS, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
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


def test_after_exit_large_blocks_stay_on_the_heap_up_to_32_mib_and_kept_memory_is_trimmed(libc):
    with heap_allocations():
        libc.free(libc.malloc(LARGE))
        kept = libc.mallinfo2()
    # The next free that reaches the heap's top gives the kept memory back (trim threshold) ...
    libc.free(libc.malloc(100 * 1024))  # under any mmap threshold: carved from the top
    trimmed = libc.mallinfo2()
    assert trimmed.arena <= kept.arena - LARGE // 2
    # ... a 4 MiB block is the heap's, as under glibc's grown dynamic threshold (not mapped and
    # faulted afresh each time, as under its 128 KiB start) ...
    block = libc.malloc(4 << 20)
    try:
        assert libc.mallinfo2().hblks == trimmed.hblks
    finally:
        libc.free(block)
    # ... and one over 32 MiB is mmap'd again.
    block = libc.malloc(LARGE)
    try:
        assert libc.mallinfo2().hblks == trimmed.hblks + 1
    finally:
        libc.free(block)


def test_nested_and_concurrent_uses_share_one_setting(libc):
    # Fits in threads of one process: the first out must not undo the other's setting.
    with heap_allocations() as outer:
        with heap_allocations() as inner:
            assert outer and inner
        before = libc.mallinfo2()
        block = libc.malloc(LARGE)  # over 32 MiB: mapped, were the inner one's exit applied
        try:
            assert libc.mallinfo2().hblks == before.hblks
        finally:
            libc.free(block)


def test_a_users_own_malloc_settings_win(libc, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")
    with heap_allocations() as applied:
        assert not applied
    monkeypatch.delenv("MALLOC_MMAP_MAX_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1000000")
    with heap_allocations() as applied:
        assert not applied


def test_disabled_changes_nothing(libc):
    with heap_allocations(enabled=False) as applied:
        assert not applied
        before = libc.mallinfo2()
        block = libc.malloc(before.fordblks + LARGE)
        assert libc.mallinfo2().hblks == before.hblks + 1
        libc.free(block)
