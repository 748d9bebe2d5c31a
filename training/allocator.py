"""glibc malloc while a model trains: its large tensors from the heap, freed memory kept there.

A CPU training step allocates and frees the same large tensors every batch (the LSTM's
oneDNN workspace and activations, megabytes at batch 256). glibc serves every request above its
mmap threshold (dynamic, at most 32 MiB) with a fresh mmap and unmaps it on free, so each step
faults those pages in again, zero-filled by the kernel: 38% of a training step's CPU time was
system time (batch 256, 1 thread, an AMD EPYC core). Inside `heap_allocations()` malloc maps
nothing and keeps up to 1 GiB free at the heap's top, so later steps reuse the same pages. Only
where the bytes live changes, no value (the weights are bit-identical: a test compares them).
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
from collections.abc import Iterator

# mallopt parameters (glibc's malloc.h), the values training uses, and glibc's defaults, which
# are put back on exit (a setting from MALLOC_*_ environment variables is not restored).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
TRAINING = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30}
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}


def _glibc() -> ctypes.CDLL | None:
    """The process's C library where it is glibc (mallopt is glibc's), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


def _set(libc: ctypes.CDLL, values: dict[int, int]) -> None:
    for param, value in values.items():
        if libc.mallopt(param, value) != 1:
            raise OSError(f"mallopt({param}, {value}) failed")


@contextlib.contextmanager
def heap_allocations(enabled: bool = True) -> Iterator[bool]:
    """Within: no mmap'd allocations, freed heap memory kept; yields whether that applies.

    A no-op (yields False) when not enabled or not on glibc. On exit glibc's defaults return
    (a later free gives the kept memory back); its dynamic mmap threshold stays off for the
    rest of the process (glibc turns it off once a threshold is set), as under MALLOC_*_ env.
    """
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    _set(libc, TRAINING)
    try:
        yield True
    finally:
        _set(libc, GLIBC_DEFAULTS)
