"""The ordered collector: results that arrive in any order, put back in frame order.

Workers finish batches out of order (a slow worker, a retried batch), and Ray delivers a task's
result at least once: a batch re-run after its worker died may still have been finished by that
worker. So results are keyed by frame index, a frame that was already taken or is already
waiting is dropped as a duplicate, and frames leave only in order, with no gap.

The collector itself holds no bound: the caller counts `len(collector)` (frames waiting) with
the frames still in flight and stops handing out work when the sum reaches its window.
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class OrderedCollector(Generic[T]):
    """Takes `(index, item)` in any order and hands items back in index order, each once."""

    def __init__(self, start: int = 0):
        self.next = start            # the index the output is waiting for
        self.duplicates = 0          # results dropped because that index had already arrived
        self._waiting: dict[int, T] = {}

    def __len__(self) -> int:
        """Frames that have arrived but are still waiting for an earlier one."""
        return len(self._waiting)

    def add(self, index: int, item: T) -> bool:
        """Keep `item` for `index`; False (and counted) when that index arrived before."""
        if index < self.next or index in self._waiting:
            self.duplicates += 1
            return False
        self._waiting[index] = item
        return True

    def ready(self) -> Iterator[T]:
        """Yield every item that is next in order, advancing past each one."""
        while self.next in self._waiting:
            item = self._waiting.pop(self.next)
            self.next += 1
            yield item
