"""One deadline per operation with one loop timer (``net.client.within``, issue 18): it cuts the
operation off with the caller's exception, bounds every round inside it (``remaining_s``),
nests (the earlier deadline wins), and leaves the task as it found it -- a cancellation of the
caller's own stays a cancellation. It replaced ``asyncio.timeout_at`` plus two context
managers per operation; these are the semantics that replacement must keep."""

from __future__ import annotations

import asyncio

import pytest

from aresdsm.errors import OperationTimeout
from aresdsm.net.client import remaining_s, within


def _late() -> OperationTimeout:
    return OperationTimeout("late")


async def test_the_deadline_cuts_the_call_off_with_the_callers_exception() -> None:
    task = asyncio.current_task()
    assert task is not None
    with pytest.raises(OperationTimeout, match="late"):
        await within(asyncio.sleep(10), 0.02, _late)
    assert task.cancelling() == 0  # its cancellation was taken back
    await asyncio.sleep(0)  # and nothing is left pending on the task
    assert remaining_s(7.0) == 7.0  # no deadline outside


async def test_rounds_inside_see_the_deadline_and_the_earlier_one_wins() -> None:
    seen: list[float] = []

    async def inner() -> None:
        seen.append(remaining_s(100.0))

    async def outer() -> None:
        seen.append(remaining_s(100.0))
        await within(inner(), 50.0, _late)  # later than the outer one: the outer one counts

    await within(outer(), 1.0, _late)
    assert len(seen) == 2 and all(0.5 < s <= 1.0 for s in seen)


async def test_a_result_passes_through_and_the_timer_is_gone() -> None:
    async def quick() -> int:
        await asyncio.sleep(0)
        return 42

    assert await within(quick(), 0.05, _late) == 42
    await asyncio.sleep(0.1)  # past the deadline: the timer must not cancel anything now
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_the_callers_own_cancellation_stays_a_cancellation() -> None:
    started = asyncio.Event()

    async def op() -> None:
        started.set()
        await asyncio.sleep(10)

    t = asyncio.get_running_loop().create_task(within(op(), 5.0, _late))
    await started.wait()
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
