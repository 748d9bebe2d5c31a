"""glibc malloc while a model trains: its large tensors from the heap, freed memory kept there.

A CPU training step allocates and frees the same large tensors every batch (the LSTM's
oneDNN workspace and activations, megabytes at batch 256). glibc serves every request above its
mmap threshold (dynamic, at most 32 MiB) with a fresh mmap and unmaps it on free, so each step
faults those pages in again, zero-filled by the kernel: 38% of a training step's CPU time was
system time (batch 256, 1 thread, an AMD EPYC core). Inside `heap_allocations()` malloc maps
nothing and keeps up to 1 GiB free at the heap's top, so later steps reuse the same pages. Only
where the bytes live changes, no value (the weights are bit-identical: a test compares them).
After, blocks up to 32 MiB still come from the heap (the threshold glibc's own would have
grown to), so what runs after `fit` in the same process (a backtest, the next block of a
rolling evaluation) is not sent back to mapping every block over 128 KiB.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
TRAINING = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30}
# After: what glibc's own dynamic threshold settles at in a process that has freed large
# blocks (DEFAULT_MMAP_THRESHOLD_MAX, 32 MiB on 64-bit, and twice that to trim). Any mallopt of
# these turns the dynamic threshold off for good, so "glibc's defaults" (128 KiB) would map and
# fault every block over 128 KiB for the rest of the process: the cost this module removes.
AFTER = {M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}
# A user's own malloc settings win: with any of these set, nothing is changed.
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                 "MALLOC_TOP_PAD_")

_lock = threading.Lock()
_depth = 0  # fits inside the context now (threads of one process share malloc's settings)


def _glibc() -> ctypes.CDLL | None:
    """The process's C library where it is glibc (mallopt is glibc's), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


def _user_set() -> bool:
    return (any(name in os.environ for name in USER_SETTINGS)
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""))


def _set(libc: ctypes.CDLL, values: dict[int, int]) -> bool:
    ok = True
    for param, value in values.items():
        ok &= libc.mallopt(param, value) == 1
    return ok


@contextlib.contextmanager
def heap_allocations(enabled: bool = True) -> Iterator[bool]:
    """Within: no mmap'd allocations, freed heap memory kept; yields whether that applies.

    A no-op (yields False) when not enabled, not on glibc, or when the environment sets
    malloc's parameters itself (MALLOC_*_ or glibc.malloc tunables). Nested or concurrent uses
    (fits in threads of one process) share one setting: the first in applies it, the last out
    leaves AFTER (large blocks from the heap up to 32 MiB, trimmed beyond 64 MiB free).
    """
    global _depth
    libc = _glibc() if enabled and not _user_set() else None
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0 and not _set(libc, TRAINING):
            log.warning("mallopt refused a training heap setting")
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and not _set(libc, AFTER):
                log.warning("mallopt refused the settings after training")
