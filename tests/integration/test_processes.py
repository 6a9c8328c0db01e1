"""Real server processes, killed with SIGKILL and restarted (docs/architecture.md principle 6)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from aresdsm.check import check_file
from aresdsm.client import HistoryRecorder, Store
from aresdsm.errors import OperationError, OperationTimeout, QuorumUnavailable
from aresdsm.local import LocalCluster
from aresdsm.tags import Tag

pytestmark = pytest.mark.slow


async def _workload(
    store: Store, keys: list[str], deadline: float, acked: dict[str, list[Tag]], rng: random.Random
) -> int:
    failures = 0
    n = 0
    while time.monotonic() < deadline:
        key = rng.choice(keys)
        try:
            if rng.random() < 0.5:
                n += 1
                tag = await store.write(key, f"{store.client_id}-{n}".encode())
                acked[key].append(tag)
            else:
                await store.read(key)
        except OperationError:
            failures += 1
            await asyncio.sleep(0.02)
    return failures


def test_sigkill_and_restart_mid_run_loses_nothing(
    process_cluster: LocalCluster, tmp_path: Path
) -> None:
    lc = process_cluster
    keys = ["a", "b", "c"]
    acked: dict[str, list[Tag]] = {k: [] for k in keys}
    history = tmp_path / "history.jsonl"

    async def go() -> None:
        with open(history, "wb") as out:  # noqa: ASYNC230
            rec = HistoryRecorder(out)
            stores = [
                Store(lc.cluster.initial, options=lc.cluster.client, recorder=rec) for _ in range(4)
            ]
            deadline = time.monotonic() + 4.0
            tasks = [
                asyncio.create_task(_workload(s, keys, deadline, acked, random.Random(i)))
                for i, s in enumerate(stores)
            ]
            await asyncio.sleep(1.2)
            await asyncio.to_thread(lc.kill, "s2")
            await asyncio.sleep(1.2)
            await asyncio.to_thread(lc.restart, "s2")
            await asyncio.gather(*tasks)
            # kill another one: the restarted s2 must now count towards quorums
            await asyncio.to_thread(lc.kill, "s1")
            for k in keys:
                tag, _ = await stores[0].read_tagged(k)
                assert tag >= max(acked[k])  # zero acknowledged writes lost
            for s in stores:
                await s.close()

    asyncio.run(go())
    assert sum(len(v) for v in acked.values()) > 50
    result = check_file(history)
    assert result.verdict == "ok", result.explain()


def test_restart_of_every_server_keeps_acknowledged_state(process_cluster: LocalCluster) -> None:
    lc = process_cluster

    async def write() -> None:
        async with Store(lc.cluster.initial, options=lc.cluster.client) as st:
            for i in range(20):
                await st.write(f"k{i}", f"value-{i}".encode())

    asyncio.run(write())
    for sid in lc.cluster.initial.server_ids:
        lc.kill(sid)
    for sid in lc.cluster.initial.server_ids:
        lc.restart(sid)

    async def read() -> None:
        async with Store(lc.cluster.initial, options=lc.cluster.client) as st:
            for i in range(20):
                assert await st.read(f"k{i}") == f"value-{i}".encode()

    asyncio.run(read())


def test_quorum_down_fails_fast_with_a_clear_error(process_cluster: LocalCluster) -> None:
    lc = process_cluster
    lc.kill("s1")
    lc.kill("s3")

    async def go() -> None:
        async with Store(lc.cluster.initial, options=lc.cluster.client) as st:
            t0 = time.monotonic()
            with pytest.raises((QuorumUnavailable, OperationTimeout)) as info:
                await st.write("k", b"v")
            assert time.monotonic() - t0 < lc.cluster.client.timeout_s + 1
            assert "quorum" in str(info.value) or "timeout" in str(info.value)
            with pytest.raises((QuorumUnavailable, OperationTimeout)):
                await st.read("k")

    asyncio.run(go())
