"""Every call's deadline in one heap, served by one task (measured cheaper than a cancel scope per call)."""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Protocol

import structlog
import trio

from interlink.net.connection import FlushQueue

log = structlog.get_logger("interlink.gateway")


class Expiring(Protocol):
    """What has a deadline: a call (gateway/call.py)."""

    log_fields: dict[str, object]

    def deadline_passed(self) -> None: ...


class DeadlineTimers:
    """All call deadlines of a gateway in one heap, served by one task (no timer task per call).

    A call that ends before its deadline clears its entry (`cancel`); cleared entries are compacted away
    once they are the majority, so the heap holds about as many entries as there are calls in flight.
    """

    def __init__(self, flush_queue: FlushQueue) -> None:
        self._flush_queue = flush_queue
        self._heap: list[list] = []  # [deadline, tie-breaker, Expiring or None]
        self._counter = itertools.count()
        self._cancelled = 0
        self._scope: trio.CancelScope | None = None
        self._wake_at = -math.inf  # the scope's deadline, mirrored (a plain float compare per call, not a property)

    def add(self, deadline: float, item: Expiring) -> list:
        entry = [deadline, next(self._counter), item]
        heapq.heappush(self._heap, entry)
        if deadline < self._wake_at:  # earlier than the task's wake-up (never while it is not sleeping)
            self._wake_at = self._scope.deadline = deadline  # type: ignore[union-attr]
        return entry

    def cancel(self, entry: list) -> None:
        if entry[2] is not None:
            entry[2] = None
            self._cancelled += 1
            if self._cancelled > 512 and self._cancelled * 2 > len(self._heap):
                self._heap = [live for live in self._heap if live[2] is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    async def run(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._scope = scope
                self._wake_at = scope.deadline = self._heap[0][0] if self._heap else math.inf
                await trio.sleep_forever()
            self._scope = None
            self._wake_at = -math.inf
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                _, _, item = heapq.heappop(self._heap)
                if item is None:
                    self._cancelled -= 1
                    continue
                try:
                    item.deadline_passed()
                except Exception:  # one broken call must not stop every other call's deadline
                    log.exception("call.deadline_failed", **item.log_fields)
            self._flush_queue.flush()
