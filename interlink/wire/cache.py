"""A cache for values computed from bytes that callers choose (header fields, header blocks, SofaRequest heads).

Such a cache must not become a way to make the gateway keep what an attacker sends. `BoundedCache`:
- keeps nothing larger than `max_item` bytes (cache what repeats, not what is big);
- keeps a key only the second time it is seen (a one-off value is never stored; a small set of hashes of
  keys seen once decides, itself bounded);
- holds at most `max_entries` entries and `max_bytes` bytes of keys and values (as the caller sizes them);
  when full it starts over, which costs a few misses and keeps every operation O(1).
A hit is one dictionary lookup (`get`), so the per-call path pays nothing for the bounds.
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    __slots__ = ("max_entries", "max_bytes", "max_item", "_entries", "_bytes", "_seen", "get")

    def __init__(self, *, max_entries: int, max_bytes: int, max_item: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_item = max_item
        self._entries: dict[K, V] = {}
        self._bytes = 0
        self._seen: set[int] = set()
        # A hit is the dictionary's own lookup (no Python frame); `_entries` is cleared, never replaced.
        self.get: Callable[[K], V | None] = self._entries.get

    def put(self, key: K, value: V, size: int) -> None:
        """Offer `value` for `key`; `size` is what keeping both costs, in bytes."""
        if size > self.max_item:
            return
        marker = hash(key)
        seen = self._seen
        if marker not in seen:
            if len(seen) >= self.max_entries * 4:
                seen.clear()
            seen.add(marker)
            return
        seen.discard(marker)
        if len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes:
            self._entries.clear()
            self._bytes = 0
        self._entries[key] = value
        self._bytes += size

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        self._entries.clear()
        self._seen.clear()
        self._bytes = 0
