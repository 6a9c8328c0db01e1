"""The Store retries a write once after OperationTimeout / QuorumUnavailable when relocate()
moved the client (§8.5). The first attempt's put-data may already have reached servers, so the
retry must finish the write with the tag it chose (ares.finish_write); retried from scratch
under a fresh tag (found in review; test-only switch ``broken_retry_write_with_new_tag``), one
write installs its value under two tags, and with a write of another value in between, readers
see v2, then v3, then v2 again.

Schedule with the retry from scratch (9 servers: c0 = s0-s2, c1 = s3-s5, c2 = s6-s8, majorities):
1. a writes v1; r reconfigures c0 -> c1 -> c2 (all finalized). The Store client w reads once
   and knows [c0 F, c1 F, c2 F].
2. w writes v2 with tag t1: its PUT_DATA reaches s6 only; those to s7, s8 are held.
3. x reads k from {s6, s7}: v2 (t1), and writes it back. y writes v3 (tag > t1); x reads v3.
4. w's round times out. relocate(): s0-s2 answer LATEST_CONFIG with c1 (F) -- known, but not
   w's last entry -- so w adopts c1, discovers c2 again, returns True; the write is retried
   with tag t2 > tag(v3) and the same value v2.
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


@pytest.mark.parametrize("broken", [False, True])
def test_store_write_retry_keeps_its_tag(broken: bool) -> None:
    switches = broken_switches(broken_retry_write_with_new_tag=broken)

    async def script(sc: Scenario) -> None:
        a, r, x, y = sc.client("a"), sc.client("r"), sc.client("x"), sc.client("y")
        await a.write("k", b"v1")
        assert (await r.reconfig(Configuration("c1", tuple(sc.pool[3:6])))).id == "c1"
        assert (await r.reconfig(Configuration("c2", tuple(sc.pool[6:9])))).id == "c2"

        store = Store(sc.c0, client_id="w", options=ClientOptions(timeout_s=0.5), switches=switches)
        store.channel = _SimStoreChannel(sc.cluster, "w", timeout_s=0.5, retransmit_s=1e9)  # type: ignore[assignment]
        assert await store.read("k") == b"v1"
        assert [e.config.id for e in store.cseq()] == ["c0", "c1", "c2"]
        await sc.run_for(0.01)

        first_attempt = writer_id("w", 1)  # the first attempt's put-data only
        first_attempt_until = sc.now() + 0.4  # (sent now; the retry comes after the 0.5 s timeout)
        sc.hold(
            "w-put",
            lambda m: (
                m.sender == "w"
                and isinstance(m.request, PutData)
                and m.request.tag.writer == first_attempt
                and sc.now() < first_attempt_until
                and m.server != "s6"
            ),
        )
        op = sc.invoke("write", "w", "k", value_digest(b"v2"))
        write = sc.start(store.write("k", b"v2"))
        await sc.run_for(0.05)
        assert await x.read("k") == b"v2"  # from s6 (t1), written back
        await sc.run_for(0.01)
        await y.write("k", b"v3")
        await sc.run_for(0.01)
        assert await x.read("k") == b"v3"
        await sc.run_for(0.6)  # w's put-data round times out; relocate(); the retry begins
        await write
        sc.complete(op, value_digest(b"v2"))
        await sc.run_for(0.01)
        await x.read("k")

    sc = Scenario.play(servers=9, initial=3, script=script)
    assert sc.check().verdict == ("violation" if broken else "ok"), sc.check().explain()
