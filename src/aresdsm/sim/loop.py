"""An asyncio event loop on virtual time (docs/architecture.md principle 5).

The loop is a normal ``SelectorEventLoop`` whose clock is a number the loop itself advances: its
selector never waits, it moves time forward to the next timer. Everything the real client
algorithms use -- futures, tasks, ``asyncio.gather``, ``asyncio.sleep``, ``call_later`` -- works
unchanged and runs as fast as the CPU allows, and the order of events depends only on what was
scheduled, so one seed gives one execution.

If nothing is scheduled and nothing is ready while a task still waits, the simulation is stuck;
:class:`SimulationStalled` says so instead of hanging.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class SimulationStalled(RuntimeError):
    """Every task waits and no timer is scheduled: nothing can ever happen again."""


class _Keys(Mapping[Any, selectors.SelectorKey]):
    def __init__(self, keys: dict[Any, selectors.SelectorKey]) -> None:
        self._keys = keys

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys[fileobj]

    def __iter__(self) -> Any:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class VirtualSelector(selectors.BaseSelector):
    """Accepts registrations (the loop's self-pipe) and turns waiting into advancing time."""

    def __init__(self) -> None:
        self._keys: dict[Any, selectors.SelectorKey] = {}
        self.loop: SimLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, id(fileobj), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        assert self.loop is not None
        if timeout is None:
            raise SimulationStalled(f"nothing scheduled at virtual time {self.loop.time():.6f}")
        self.loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return _Keys(self._keys)

    def close(self) -> None:
        self._keys.clear()


class SimLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        selector = VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += max(0.0, seconds)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh virtual-time loop and close it (no leaked tasks)."""
    loop = SimLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
