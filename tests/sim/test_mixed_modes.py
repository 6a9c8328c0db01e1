"""A client with ``piggyback`` off (OpSwitches(piggyback=False): discovery-based, classic rounds,
on the group's chain) next to a default (Ares II) reconfigurer. Found in review: following the
original Ares to the letter, such a writer loses a completed write (test-only switch
``broken_classic_ignores_ack_next``); now its phase 2 follows the next its put-data ACKs carry.

The Ares II reconfigurer merges put-config and get-data into one SET_NEXT_AND_GET (§8.2). That is
safe only for writers that look at the `next` piggybacked on their PUT_DATA ACKs. A classic writer
ignores it and relies on its read-config after the put instead -- which is only sound against a
reconfigurer whose put-config completed *before* its get-data started (the original Ares).

c0 = s0 s1 s2 (majorities), c1 = s3 s4 s5.
1. a writes v1.
2. r (default switches) reconfigures c0 -> c1: Paxos decides c1; its SET_NEXT_AND_GET(c0,(c1,P))
   reaches s0 (answers with v1, stores (c1, P)); those to s1 and s2 are held.
3. w (piggyback off) writes v2: read-config (its ReadConfig to s0 held) sees ⊥ from s1, s2;
   get-tag; PUT_DATA reaches s0 (ACK says (c1, P), ignored by classic) and s2 (ACK ⊥); the one
   to s1 is held. Its read-config after the put again asks s1, s2: ⊥. The write returns.
4. r's SET_NEXT_AND_GET reaches s1 (v1). r's quorum {s0, s1} reported v1 only: c1 gets v1, c1 is
   finalized, c0 collected.
5. A read (any client) now returns v1 although v2's write completed before it started.
With the fix, w follows (c1, P) from s0's ACK in step 3 and puts v2 into c1 as well.
"""

from __future__ import annotations

import pytest

from aresdsm.config import Configuration
from aresdsm.sim.scenario import Scenario
from aresdsm.testing import broken_switches
from aresdsm.wire.messages import GetGroup, PutData, ReadConfig


@pytest.mark.parametrize(
    ("reconfigurer", "broken"), [("ares2", False), ("ares2", True), ("classic", True)]
)
def test_classic_writer_next_to_an_ares2_reconfigurer(reconfigurer: str, broken: bool) -> None:
    """With a classic reconfigurer (separate put-config first) even the original writer is
    safe; with an Ares II one, only the writer that follows its ACKs' next."""
    classic_on_group_chain = broken_switches(
        piggyback=False, fast_read=False, broken_classic_ignores_ack_next=broken
    )
    reads: list[bytes] = []

    async def script(sc: Scenario) -> None:
        a = sc.client("a")
        r = sc.client("r", classic_on_group_chain if reconfigurer == "classic" else None)
        w = sc.client("w", classic_on_group_chain)
        await a.write("k", b"v1")
        await sc.run_for(0.01)

        def snag_to(server: str):  # type: ignore[no-untyped-def]
            return lambda m: (
                m.sender == "r" and isinstance(m.request, GetGroup) and m.server == server
            )

        sc.hold("r-snag-s1", snag_to("s1"))
        sc.hold("r-snag-s2", snag_to("s2"))
        reconf = sc.start(r.reconfig(Configuration("c1", tuple(sc.pool[3:6]))))
        await sc.run_for(0.05)
        assert not reconf.done()

        sc.hold(
            "w-rc-s0",
            lambda m: m.sender == "w" and isinstance(m.request, ReadConfig) and m.server == "s0",
        )
        sc.hold(
            "w-put-s1",
            lambda m: m.sender == "w" and isinstance(m.request, PutData) and m.server == "s1",
        )
        await w.write("k", b"v2")  # completes

        sc.release("r-snag-s1")  # r's quorum is {s0, s1}; s2 (which has v2) stays held
        assert (await reconf).id == "c1"
        await sc.run_for(0.05)
        reads.append(await a.read("k"))

    sc = Scenario.play(servers=6, initial=3, script=script)
    if reconfigurer == "ares2" and broken:
        assert reads == [b"v1"] and sc.check().verdict == "violation"
    else:
        assert reads == [b"v2"], f"read returned {reads} after the write of v2 completed"
        assert sc.check().verdict == "ok", sc.check().explain()
