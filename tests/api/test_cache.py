"""The answer cache: one computation for concurrent askers, expiry, failures not kept."""

from __future__ import annotations

import asyncio

import pytest

from api.cache import AnswerCache


async def test_concurrent_misses_share_one_computation_and_hits_follow() -> None:
    cache: AnswerCache[int] = AnswerCache(ttl_s=60)
    runs = 0
    gate = asyncio.Event()

    async def compute() -> int:
        nonlocal runs
        runs += 1
        await gate.wait()
        return 42

    waiting = [asyncio.create_task(cache.get("k", compute)) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiting) == [42] * 10
    assert await cache.get("k", compute) == 42
    assert runs == 1


async def test_an_expired_answer_is_computed_again() -> None:
    cache: AnswerCache[int] = AnswerCache(ttl_s=0.01)
    values = iter([1, 2])

    async def compute() -> int:
        return next(values)

    assert await cache.get("k", compute) == 1
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (answer := await cache.get("k", compute)) == 1:
        assert loop.time() < deadline
        await asyncio.sleep(0.005)
    assert answer == 2


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    cache: AnswerCache[int] = AnswerCache(ttl_s=60)

    async def broken() -> int:
        await asyncio.sleep(0)
        raise RuntimeError("database down")

    results = await asyncio.gather(
        cache.get("k", broken), cache.get("k", broken), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)

    async def fine() -> int:
        return 7

    assert await cache.get("k", fine) == 7


async def test_a_caller_that_goes_away_does_not_cancel_the_others() -> None:
    cache: AnswerCache[str] = AnswerCache(ttl_s=60)
    gate = asyncio.Event()

    async def compute() -> str:
        await gate.wait()
        return "done"

    first = asyncio.create_task(cache.get("k", compute))
    second = asyncio.create_task(cache.get("k", compute))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    gate.set()
    assert await second == "done"
