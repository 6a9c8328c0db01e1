"""The Store retries a write after OperationTimeout / QuorumUnavailable -- or while its first
attempt is still waiting -- when relocate() moved the client to a later configuration (§8.5). The
first attempt's put-data may already have reached servers, so the retry must finish the write
with the tag it chose (ares.finish_write); retried from scratch under a fresh tag (found in
review; test-only switch ``broken_retry_write_with_new_tag``), one write installs its value under
two tags, and with a write of another value in between, readers see v2, then v3, then v2 again.

Schedule with the retry from scratch (9 servers: c0 = s0-s2, c1 = s3-s5, c2 = s6-s8, majorities):
1. a writes v1; r reconfigures c0 -> c1. The Store client w reads once and knows [c0 F, c1 F].
2. w writes v2 with tag t1: its PUT_DATA reaches s3 only; those to s4, s5 are held.
3. r reconfigures c1 -> c2: its SET_NEXT_AND_GET on c1 is answered by s3 (t1) and s4, so c2
   gets (t1, v2). x reads k: v2. y writes v3 (tag > t1); x reads v3.
4. w's attempt is still waiting: its hedge relocation asks LATEST_CONFIG, learns c2 (F, epoch 2,
   later than its c1), and the write is retried there -- from scratch, with tag t2 > tag(v3)
   and the same value v2.
5. x reads k: v2. v2 was read, then v3 (written after that read), then v2 again.
With the fix, step 4 puts (t1, v2) into c2, where v3's newer tag stays: x reads v3, and the
write of v2 is linearized before x's first read.
"""

from __future__ import annotations

import asyncio

import pytest

from aresdsm.client import Store
from aresdsm.config import ClientOptions, Configuration, ServerInfo
from aresdsm.errors import OperationTimeout
from aresdsm.history import value_digest
from aresdsm.sim.cluster import SimChannel
from aresdsm.sim.scenario import Scenario
from aresdsm.tags import writer_id
from aresdsm.testing import broken_switches
from aresdsm.wire.messages import PutData, Reply, Request


class _SimStoreChannel(SimChannel):
    """SimChannel plus the single-server ``request`` the Store uses for LATEST_CONFIG."""

    async def request(
        self, server: ServerInfo, req: Request, *, timeout_s: float | None = None
    ) -> Reply:
        fut: asyncio.Future[Reply] = self.cluster.loop.create_future()

        def done(reply: Reply) -> None:
            if not fut.done():
                fut.set_result(reply)

        self._send(server.id, req, done)
        try:
            return await asyncio.wait_for(fut, timeout_s or 1.0)
        except TimeoutError:
            raise OperationTimeout(f"{server.id} did not answer") from None

    async def close(self) -> None:
        """Nothing to close in the simulator."""


@pytest.mark.parametrize("broken", [False, True])
def test_store_write_retry_keeps_its_tag(broken: bool) -> None:
    switches = broken_switches(broken_retry_write_with_new_tag=broken)

    async def script(sc: Scenario) -> None:
        a, r, x, y = sc.client("a"), sc.client("r"), sc.client("x"), sc.client("y")
        await a.write("k", b"v1")
        assert (await r.reconfig(Configuration("c1", tuple(sc.pool[3:6])))).id == "c1"

        store = Store(sc.c0, client_id="w", options=ClientOptions(timeout_s=0.5), switches=switches)
        store.channel = _SimStoreChannel(sc.cluster, "w", timeout_s=0.5, retransmit_s=1e9)  # type: ignore[assignment]
        assert await store.read("k") == b"v1"
        assert [e.config.id for e in store.cseq()] == ["c0", "c1"]
        await sc.run_for(0.01)

        first_attempt = writer_id("w", 1, store.incarnation)  # the first attempt's put-data only
        sc.hold(
            "w-put",
            lambda m: (
                m.sender == "w"
                and isinstance(m.request, PutData)
                and m.request.tag.writer == first_attempt
                and m.server in ("s4", "s5")
            ),
        )
        op = sc.invoke("write", "w", "k", value_digest(b"v2"))
        write = sc.start(store.write("k", b"v2"))
        await sc.run_for(0.01)
        assert not write.done()
        assert (await r.reconfig(Configuration("c2", tuple(sc.pool[6:9])))).id == "c2"
        assert await x.read("k") == b"v2"  # t1, transferred into c2
        await y.write("k", b"v3")
        assert await x.read("k") == b"v3"
        assert not write.done()
        await write  # the hedge relocation finds c2; the retry runs there
        assert [e.config.id for e in store.cseq()][-1] == "c2"
        sc.complete(op, value_digest(b"v2"))
        await sc.run_for(0.01)
        await x.read("k")
        await store.close()

    sc = Scenario.play(servers=9, initial=3, script=script)
    assert sc.check().verdict == ("violation" if broken else "ok"), sc.check().explain()
