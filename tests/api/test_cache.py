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


async def test_a_stale_answer_is_given_at_once_while_a_new_one_is_computed() -> None:
    cache: AnswerCache[bytes] = AnswerCache(ttl_s=1e-9, stale_s=3600.0)
    computed: list[int] = []

    async def compute() -> bytes:
        computed.append(len(computed) + 1)
        return str(computed[-1]).encode()

    assert await cache.get("q", compute) == b"1"  # nothing yet: computed while waiting
    assert await cache.get("q", compute) == b"1"  # stale: given, and a refresh starts
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await cache.get("q", compute) == b"1":
        assert loop.time() < deadline, "the answer was never refreshed"
        await asyncio.sleep(0.01)


async def test_answers_past_the_byte_budget_push_out_the_least_recent() -> None:
    cache: AnswerCache[bytes] = AnswerCache(ttl_s=60, max_bytes=400, size=len)
    runs: list[str] = []

    def answer(key: str, size: int):  # type: ignore[no-untyped-def]
        async def compute() -> bytes:
            runs.append(key)
            return b"x" * size

        return compute

    for key in ("a", "b", "c"):
        await cache.get(key, answer(key, 100))
    await cache.get("a", answer("a", 100))  # a hit: "a" is now the most recent
    await cache.get("d", answer("d", 100))  # 400 bytes: all fit
    await cache.get("e", answer("e", 100))  # over: "b", the least recent, goes
    await cache.get("b", answer("b", 100))
    assert runs == ["a", "b", "c", "d", "e", "b"]
    await cache.get("huge", answer("huge", 200))  # more than a quarter: given, not kept
    await cache.get("huge", answer("huge", 200))
    assert runs[-2:] == ["huge", "huge"]
