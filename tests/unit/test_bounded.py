"""bounded.each: every item once, in order, never more than the limit at once, few tasks."""

from __future__ import annotations

import asyncio

import pytest

from secretsync.core import bounded


async def test_results_keep_the_order_of_the_items_and_the_limit_holds() -> None:
    running = peak = 0

    async def step(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(n % 3):  # finish out of order
            await asyncio.sleep(0)
        running -= 1
        return n * n

    items = list(range(50))
    assert await bounded.each(items, step, limit=4) == [n * n for n in items]
    assert peak == 4


async def test_a_batch_holds_limit_tasks_not_one_per_item() -> None:
    release = asyncio.Event()
    started = 0

    async def step(n: int) -> int:
        nonlocal started
        started += 1
        await release.wait()
        return n

    batch = asyncio.create_task(bounded.each(list(range(1000)), step, limit=8))
    while started < 8:
        await asyncio.sleep(0)
    # this test's task, the batch and its 8 workers: nothing parked per item
    assert len(asyncio.all_tasks()) == 1 + 1 + 8
    release.set()
    assert await batch == list(range(1000))


async def test_an_exception_cancels_the_other_steps_and_propagates() -> None:
    cancelled = 0

    async def step(n: int) -> int:
        nonlocal cancelled
        if n == 3:
            raise ValueError("step 3")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise
        return n

    with pytest.raises(ValueError, match="step 3"):
        await bounded.each(list(range(10)), step, limit=4)
    assert cancelled == 3  # the three steps in flight beside it; the rest never started


async def test_no_items_no_work() -> None:
    async def step(n: int) -> int:
        raise AssertionError("called")

    assert await bounded.each([], step, limit=4) == []
