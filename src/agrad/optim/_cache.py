"""A small bounded, thread-safe least-recently-used mapping for per-optimizer caches.

An optimizer keeps the state template of every ``(structure, shapes, dtypes)`` it has
seen so that checking a state costs no ``init``. A plain dict grows by one entry per
new shape without bound (a loop over 3,000 distinct shapes keeps 3,000 templates);
:class:`LRUCache` keeps the ``maxsize`` most recently used and drops the oldest.

It answers the dict operations such a cache uses (``in``, ``[]``, ``[]=``, ``get``,
``len``, ``values``), so ``self._templates = LRUCache(32)`` replaces ``self._templates = {}``
without changing the code that reads it, including the pattern::

    if key not in cache:
        cache[key] = make()
    return cache[key]

which stays correct when other threads evict ``key`` between the two lines: the last
value a thread stored is returned to that thread even if it has been evicted since.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

__all__ = ["LRUCache"]

_MISSING = object()


class LRUCache:
    """At most ``maxsize`` entries; reading or writing one makes it the most recent."""

    __slots__ = ("_data", "_last", "_lock", "aux", "maxsize")

    def __init__(self, maxsize: int):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"LRUCache: maxsize must be a positive int, got {maxsize!r}")
        self.maxsize = maxsize
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        # Per thread: the last (key, value) it stored, for a read that follows an eviction.
        self._last = threading.local()
        #: Side records that are not entries (the fast route's last step): never counted,
        #: listed, evicted or copied.
        self.aux: dict[Any, Any] = {}

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Any) -> bool:
        return key in self._data

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is not _MISSING:
                self._data.move_to_end(key)
                return value
        last = getattr(self._last, "item", None)
        if last is not None and last[0] == key:
            return last[1]
        return default

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        self._last.item = (key, value)

    def values(self) -> list[Any]:
        """The cached values, least recently used first (a snapshot)."""
        with self._lock:
            return list(self._data.values())

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.aux.clear()
        self._last = threading.local()

    def __reduce__(self) -> tuple[Any, ...]:
        # Copies and pickles start empty: the entries are derived data, and a lock or a
        # thread-local cannot be copied (``copy.deepcopy(optimizer)`` must keep working).
        return (type(self), (self.maxsize,))

    def __repr__(self) -> str:
        return f"LRUCache(maxsize={self.maxsize}, entries={len(self._data)})"
