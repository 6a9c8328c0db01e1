"""The commit thread of a storage engine: group commits run off the event loop, on one thread
of their own (docs/protocol.md §1 "Durability": persist before reply; docs/design.md "Commit
thread").

A commit blocks on ``fsync``, so it cannot run on the event loop; it used to go through
``asyncio.to_thread`` -- a copied context, a ``concurrent.futures`` future chained to an asyncio
one, the thread pool's locks and work item -- for every group commit. Commits of one engine are
sequential anyway (:meth:`~aresdsm.storage.base.Storage._flush_loop` starts one when the previous
one returned), so one thread per engine does: a job goes through a queue, its outcome comes back
with one ``call_soon_threadsafe``. That is the least a thread hop costs (one wake-up each way),
and a lone request's commit waits for nothing else in a shared pool.

The thread starts at the first commit and ends after ``idle_exit_s`` without one (an idle server,
and the many short-lived engines of a test run, hold no thread); it is a daemon thread, so it
never delays the exit of a process (a server drains its commits before it closes the engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable

IDLE_EXIT_S = 30.0
"""Seconds without a commit after which the thread ends (the next commit starts another)."""

_Job = tuple[Callable[[], None], "asyncio.Future[None]", asyncio.AbstractEventLoop]


class CommitThread:
    """Runs functions one at a time, in order, on a thread of its own; :meth:`run` returns an
    asyncio future of the outcome."""

    def __init__(self, name: str = "aresdsm-commit", *, idle_exit_s: float = IDLE_EXIT_S) -> None:
        self.name = name
        self.idle_exit_s = idle_exit_s
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False
        self.threads_started = 0
        """Threads started so far (tests: one serves many commits)."""

    def run(self, fn: Callable[[], None]) -> asyncio.Future[None]:
        """Queue ``fn``; the future (of the running loop) completes with its outcome."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._jobs.put((fn, fut, loop))
            if not self._running:
                self._running = True
                self.threads_started += 1
                threading.Thread(target=self._work, name=self.name, daemon=True).start()
        return fut

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.idle_exit_s)
            except queue.Empty:
                with self._lock:  # (run() queues and checks _running under the same lock)
                    if self._jobs.empty():
                        self._running = False
                        return
                continue
            fn, fut, loop = job
            del job
            error: BaseException | None = None
            try:
                fn()
            except BaseException as e:  # (as concurrent.futures: the waiter gets it)
                error = e
            del fn
            with contextlib.suppress(RuntimeError):  # (a closed loop: nobody waits any more)
                loop.call_soon_threadsafe(_settle, fut, error)
            del fut, loop, error


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():  # (cancelled: the waiter went away)
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
