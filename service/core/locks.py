"""Per-key locks, weakly held: one lock per key while someone holds or waits for it."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Hashable


class KeyedLocks:
    """One lock per key, kept only while some caller holds it: bounded by requests in flight."""

    def __init__(self):
        self._locks: weakref.WeakValueDictionary[Hashable, threading.Lock] = (
            weakref.WeakValueDictionary())
        self._guard = threading.Lock()

    def __call__(self, key: Hashable) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
            return lock

    def __len__(self) -> int:
        return len(self._locks)
