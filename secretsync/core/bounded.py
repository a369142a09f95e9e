"""Run an async step over many items with at most N in flight.

N workers take the items in turn, so a batch holds N tasks, not one per item: a task parked
on a semaphore costs about 1.5 KB, and a cold fleet of 100 clusters of 1,000 objects would
hold 100,000 of them before the first request went out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import cast


async def each[T, R](
    items: Sequence[T], step: Callable[[T], Awaitable[R]], *, limit: int
) -> list[R]:
    """`step(item)` for every item, at most `limit` at once; the results in the items' order.

    An exception from a step cancels the others and propagates as itself (steps that expect
    failures return them instead)."""
    slots: list[R | None] = [None] * len(items)
    todo = iter(enumerate(items))

    async def worker() -> None:
        for index, item in todo:  # one iterator shared by the workers of this loop
            slots[index] = await step(item)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(max(limit, 1), len(items))):
                group.create_task(worker())
    except BaseExceptionGroup as failed:
        # callers translate errors by type: the first failure, as itself (steps running
        # beside it were cancelled)
        raise failed.exceptions[0] from None
    return cast(list[R], slots)  # every slot was filled
