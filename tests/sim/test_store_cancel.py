"""Cancelling a Store operation cancels its attempt (found by the swarm's client crashes, issue 14
item 5): the attempt ran as a task of its own that kept sending -- a "crashed" client went on
writing -- and its failure was logged as "Task exception was never retrieved"."""

from __future__ import annotations

import asyncio

from aresdsm.client import Store
from aresdsm.config import ClientOptions
from aresdsm.sim.cluster import SimChannel
from aresdsm.sim.scenario import Scenario
from aresdsm.wire.messages import PutData


def test_a_cancelled_write_stops_sending() -> None:
    sent_after: list[str] = []

    async def script(sc: Scenario) -> None:
        channel = SimChannel(sc.cluster, "w", timeout_s=5.0, retransmit_s=0.01)
        store = Store(sc.c0, client_id="w", options=ClientOptions(timeout_s=5.0), channel=channel)
        sc.hold("w-put", lambda m: m.sender == "w" and isinstance(m.request, PutData))
        task = sc.start(store.write("k", b"v"))
        await sc.run_for(0.5)  # past the hedge: its relocation runs next to the attempt
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        before = len(sc.cluster.held)
        await sc.run_for(1.0)
        sent_after.extend(str(h.msg.request) for h in sc.cluster.held[before:])
        assert not [t for t in asyncio.all_tasks() if "_write_once" in repr(t) and not t.done()]

    Scenario.play(servers=3, script=script)
    assert sent_after == []  # no retransmission after the cancel
