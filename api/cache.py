"""A short-lived cache of computed answers, shared by the requests of one API process.

Operations screens poll the same panels (the overview, a sector's 24-hour chart) from every
desk; one computation every `ttl_s` serves them all. Concurrent misses of one key wait for a
single computation instead of each running the query."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class AnswerCache(Generic[T]):
    """Answers by key for `ttl_s` seconds, at most `max_entries` of them (least recent out)."""

    def __init__(self, ttl_s: float, *, max_entries: int = 512) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._answers: OrderedDict[Hashable, tuple[float, T]] = OrderedDict()
        self._pending: dict[Hashable, asyncio.Future[T]] = {}
        self.hits = 0
        self.misses = 0

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        """The cached answer for `key`, or the one `compute` gives (computed once at a time)."""
        if self.ttl_s <= 0:
            return await compute()
        now = time.monotonic()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > now:
            self.hits += 1
            self._answers.move_to_end(key)
            return cached[1]
        task = self._pending.get(key)
        if task is None:
            # a task of its own: a caller that goes away does not cancel it for the others
            self.misses += 1
            task = asyncio.ensure_future(compute())
            self._pending[key] = task
            task.add_done_callback(lambda done: self._store(key, done))
        else:
            self.hits += 1
        return await asyncio.shield(task)

    def _store(self, key: Hashable, done: asyncio.Future[T]) -> None:
        self._pending.pop(key, None)
        if done.cancelled() or done.exception() is not None:
            return
        self._answers[key] = (time.monotonic() + self.ttl_s, done.result())
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)
