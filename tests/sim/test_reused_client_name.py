"""Two incarnations of one client name never write under one tag (issue 10 item 4, §2 tags).

Operation numbers restart at 1 in every process. With writer ids ``name.op`` two processes that
use the client name ``app`` pick the same tag ``(1, app.1)`` for different values when their
writes run concurrently. Schedule (3 servers, majorities, one-round reads on):
1. incarnations A and B of ``app`` write v1 and v2 at once; both see tag 0 and choose z = 1.
2. A's put-data reaches s1 and s2, B's reaches s1 (after A's: same tag, not newer, ignored) and
   s0. Both writes complete: s1, s2 hold v1 and s0 holds v2, all under one tag.
3. x reads from {s0, s1}: every reply has the same tag, so the read takes one round and returns
   one of the replies with the max tag -- s0's v2. Then x reads from {s1, s2}: v1.
Both writes completed before the first read, so the reads must agree: a violation. With an
incarnation suffix in every writer id the two tags differ, every server keeps the larger one,
and both reads return it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from aresdsm.client import Store
from aresdsm.config import ClientOptions
from aresdsm.history import value_digest
from aresdsm.sim.cluster import SimChannel
from aresdsm.sim.scenario import Message, Scenario
from aresdsm.testing import broken_switches
from aresdsm.wire.messages import PutData


@pytest.mark.parametrize("broken", [False, True])
def test_two_incarnations_of_one_client_name_never_share_a_tag(broken: bool) -> None:
    switches = broken_switches(broken_writer_ids_without_incarnation=broken)

    async def script(sc: Scenario) -> None:
        x = sc.client("x")
        stores = []
        for name in ("A", "B"):  # two processes, one client name
            st = Store(
                sc.c0, client_id="app", options=ClientOptions(timeout_s=0.5), switches=switches
            )
            st.channel = SimChannel(sc.cluster, name, timeout_s=0.5, retransmit_s=1e9)  # type: ignore[assignment]
            stores.append(st)
        a, b = stores

        def put(sender: str, server: str) -> Callable[[Message], bool]:
            return lambda m: (
                m.sender == sender and m.server == server and isinstance(m.request, PutData)
            )

        sc.hold("A-s0", put("A", "s0"))
        sc.hold("B-s2", put("B", "s2"))
        sc.hold("B-s1", put("B", "s1"))
        ops = [sc.invoke("write", n, "k", value_digest(v)) for n, v in (("A", b"v1"), ("B", b"v2"))]
        wa = sc.start(a.write("k", b"v1"))
        wb = sc.start(b.write("k", b"v2"))
        await sc.run_for(0.05)
        sc.release("B-s1")  # after A's put-data reached s1
        await asyncio.gather(wa, wb)
        for op, v in zip(ops, (b"v1", b"v2"), strict=True):
            sc.complete(op, value_digest(v))
        await sc.run_for(0.01)
        sc.hold("x-s2", lambda m: m.sender == "x" and m.server == "s2")
        await x.read("k")  # from {s0, s1}
        await sc.run_for(0.01)
        sc.hold("x-s0", lambda m: m.sender == "x" and m.server == "s0")
        sc.release("x-s2")
        await x.read("k")  # from {s1, s2}

    sc = Scenario.play(servers=3, initial=3, script=script)
    result = sc.check()
    assert result.verdict == ("violation" if broken else "ok"), result.explain()
