"""A Store restarted under the same ``client_id`` must not reuse a tag of its earlier life.

Found while driving the real Store through the swarm (issue 14 item 5): writer ids were
``client_id.N`` with N counted from 1 by every Store, so a restarted client's first write could
choose the tag of its crashed predecessor's pending write -- (1, "w.1") for two different
values. Servers that hold one value ignore the other (same tag), and reads alternate: v2, then
v1, then v2 again after v2's write completed. Writer ids now carry the Store's incarnation
(random by default; the simulator passes a seeded one).
"""

from __future__ import annotations

from aresdsm.client import Store
from aresdsm.config import ClientOptions
from aresdsm.history import value_digest
from aresdsm.sim.cluster import SimChannel
from aresdsm.sim.scenario import Scenario
from aresdsm.wire.messages import PutData


def test_a_restarted_client_does_not_reuse_its_predecessors_tags() -> None:
    tags = []

    async def script(sc: Scenario) -> None:
        def store() -> Store:
            channel = SimChannel(sc.cluster, "w", timeout_s=0.5, retransmit_s=1e9)
            options = ClientOptions(timeout_s=0.5)
            return Store(sc.c0, client_id="w", options=options, channel=channel)

        a, b = sc.client("a"), sc.client("b")
        first = store()
        sc.hold(
            "w1-put",
            lambda m: m.sender == "w" and isinstance(m.request, PutData) and m.server != "s0",
        )
        sc.invoke("write", "w", "k", value_digest(b"v1"))  # never returns: the client dies
        task = sc.start(first.write("k", b"v1"))
        await sc.run_for(0.05)
        task.cancel()
        sc.cluster.rules.pop("w1-put")
        sc.cluster.held = []  # its other put-data messages are lost with it
        second = store()  # restarted under the same name
        sc.hold("w2-s0", lambda m: m.sender == "w" and m.server == "s0")
        i = sc.invoke("write", "w", "k", value_digest(b"v2"))
        tags.append(await second.write("k", b"v2"))
        sc.complete(i, value_digest(b"v2"))
        sc.cluster.rules.clear()
        sc.hold("a-s0", lambda m: m.sender == "a" and m.server == "s0")
        await a.read("k")  # from s1, s2
        sc.hold("b-s2", lambda m: m.sender == "b" and m.server == "s2")
        await b.read("k")  # from s0, s1
        await a.read("k")  # from s1, s2

    sc = Scenario.play(servers=3, script=script)
    assert sc.check().verdict == "ok", sc.check().explain()
    assert tags and tags[0].writer.startswith("w~")
