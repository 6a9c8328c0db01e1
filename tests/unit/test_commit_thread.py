"""The storage engine's commit thread (issue 18): group commits run in order on one thread of
their own, their outcome (a failure too) comes back to the event loop, an idle thread ends and
the next commit starts another, and a waiter that went away is no error."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from aresdsm.storage.base import Record
from aresdsm.storage.committer import CommitThread
from aresdsm.storage.sqlite import SqliteStorage


async def test_jobs_run_in_order_on_one_thread() -> None:
    ct = CommitThread()
    ran: list[tuple[int, str]] = []
    loop_thread = threading.current_thread().name
    futs = [ct.run(lambda i=i: ran.append((i, threading.current_thread().name))) for i in range(50)]
    await asyncio.gather(*futs)
    assert [i for i, _ in ran] == list(range(50))
    assert {name for _, name in ran} == {ct.name} and ct.name != loop_thread
    assert ct.threads_started == 1


async def test_a_failure_reaches_the_waiter() -> None:
    ct = CommitThread()

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await ct.run(fail)
    await ct.run(lambda: None)  # the thread goes on


async def test_an_idle_thread_ends_and_the_next_job_starts_another() -> None:
    ct = CommitThread("idle-test-commit", idle_exit_s=0.05)
    await ct.run(lambda: None)
    deadline = time.monotonic() + 30
    while ct._running or any(t.name == ct.name for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the idle commit thread did not end"
        await asyncio.sleep(0.02)
    done: list[int] = []
    await ct.run(lambda: done.append(1))
    assert done == [1] and ct.threads_started == 2


async def test_a_cancelled_waiter_is_no_error() -> None:
    ct = CommitThread()
    release = threading.Event()
    errors: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    fut = ct.run(release.wait)
    fut.cancel()
    release.set()
    await ct.run(lambda: None)  # (after the first one's outcome came back)
    await asyncio.sleep(0)
    assert fut.cancelled() and not errors


async def test_sqlite_commits_go_through_the_commit_thread(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "db.sqlite3")
    try:
        for i in range(20):
            await st.submit([Record("abd", "g", "c0", f"k{i}", b"m", b"v")])
        assert st.commits == 20 and st._committer.threads_started == 1
        assert len(list(st.load())) == 20
    finally:
        st.close()
