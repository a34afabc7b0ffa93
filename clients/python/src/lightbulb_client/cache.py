"""The client's two maps: fresh answers that expire after their own TTL, and last known
good answers that never expire. Both are bounded and evict the least recently used entry.

Time comes from an injected clock (monotonic seconds), so tests drive expiry with a fake
clock instead of sleeping. Not thread-safe by itself: the client holds its lock around
every call.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, Optional, Tuple, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Clock = Callable[[], float]


class BoundedCache(Generic[K, V]):
    """A map of at most ``capacity`` entries, least recently used evicted first, each entry
    optionally expiring ``ttl`` seconds after it was put.

    An entry is served while ``clock() < put_time + ttl``, the same rule as the Rust
    client's. ``capacity`` 0 keeps nothing.
    """

    def __init__(self, capacity: int, clock: Clock) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must not be negative, got {capacity}")
        self._capacity = capacity
        self._clock = clock
        # key -> (value, expires_at or None for never); order = recency, oldest first.
        self._entries: OrderedDict[K, Tuple[V, Optional[float]]] = OrderedDict()

    @property
    def capacity(self) -> int:
        """The most entries kept."""
        return self._capacity

    def get(self, key: K) -> V | None:
        """The live value for ``key``, or ``None`` (an expired entry is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and self._clock() >= expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, ttl: float | None = None) -> None:
        """Stores ``value`` for ``key``, replacing any entry, for ``ttl`` seconds (``None``:
        until evicted). A ``ttl`` of 0 or less stores nothing (and drops the old entry)."""
        if ttl is not None and ttl <= 0:
            self._entries.pop(key, None)
            return
        if self._capacity == 0:
            return
        expires_at = None if ttl is None else self._clock() + ttl
        self._entries[key] = (value, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drops every entry."""
        self._entries.clear()

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included."""
        return len(self._entries)
