"""A small thread-safe LRU cache bounded by bytes (image features) or entries (notes)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """Least-recently-used eviction once `max_cost` is exceeded; `cost(value)` per entry."""

    def __init__(self, max_cost: int, cost: Callable[[V], int] = lambda _v: 1):
        self.max_cost = max_cost
        self._cost = cost
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: V) -> None:
        cost = self._cost(value)
        with self._lock:
            if key in self._items:
                self._total -= self._items.pop(key)[1]
            if cost > self.max_cost:
                return  # larger than the whole budget: do not evict everything for it
            self._items[key] = (value, cost)
            self._total += cost
            while self._total > self.max_cost:
                _, (_, old_cost) = self._items.popitem(last=False)
                self._total -= old_cost

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def total_cost(self) -> int:
        return self._total

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0
