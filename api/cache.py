"""A short-lived cache of computed answers, shared by the requests of one API process.

Operations screens poll the same panels (the overview, a sector's 24-hour chart) from every
desk; one computation every `ttl_s` serves them all. Concurrent misses of one key wait for a
single computation instead of each running the query. With `stale_s`, an answer older than
`ttl_s` but younger than `stale_s` is still given at once while one recomputation runs in the
background, so a polled panel never makes its caller wait."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class AnswerCache(Generic[T]):
    """Answers by key: fresh for `ttl_s`, given while refreshed up to `stale_s`; at most
    `max_entries` (and, with `size`, `max_bytes`) of them, least recently used out first."""

    def __init__(
        self,
        ttl_s: float,
        *,
        stale_s: float = 0.0,
        max_entries: int = 512,
        max_bytes: int | None = None,
        size: Callable[[T], int] | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.stale_s = max(stale_s, ttl_s)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = size
        self._answers: OrderedDict[Hashable, tuple[float, T, int]] = OrderedDict()
        self._pending: dict[Hashable, asyncio.Future[T]] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        """The cached answer for `key`, or the one `compute` gives (computed once at a time)."""
        if self.ttl_s <= 0:
            return await compute()
        cached = self._answers.get(key)
        if cached is not None:
            age = time.monotonic() - cached[0]
            if age < self.stale_s:
                self.hits += 1
                self._answers.move_to_end(key)
                if age >= self.ttl_s:
                    self._start(key, compute)  # refreshed in the background
                return cached[1]
        if key in self._pending:
            self.hits += 1
        else:
            self.misses += 1
        # a task of its own: a caller that goes away does not cancel it for the others
        return await asyncio.shield(self._start(key, compute))

    def _start(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        task = self._pending.get(key)
        if task is None:
            task = self._pending[key] = asyncio.ensure_future(compute())
            task.add_done_callback(lambda done: self._store(key, done))
        return task

    def _store(self, key: Hashable, done: asyncio.Future[T]) -> None:
        self._pending.pop(key, None)
        if done.cancelled() or done.exception() is not None:
            return  # the waiting callers get the error; the next ask tries again
        answer = done.result()
        self._forget(key)
        weight = self.size(answer) if self.size is not None else 0
        if self.max_bytes is not None and weight > self.max_bytes // 4:
            return  # a very large answer goes to its askers, it is not kept
        self._answers[key] = (time.monotonic(), answer, weight)
        self._bytes += weight
        while len(self._answers) > self.max_entries or (
            self.max_bytes is not None and self._bytes > self.max_bytes
        ):
            self._forget(next(iter(self._answers)))

    def _forget(self, key: Hashable) -> None:
        gone = self._answers.pop(key, None)
        if gone is not None:
            self._bytes -= gone[2]
