"""update-config must read the older configurations c_μ..c_{ν−1} with SET_NEXT_AND_GET too, not
with the plain get-data an earlier rule allowed ("Configurations μ..ν−1 already have a successor,
so a plain get-data is enough there"). Found in review; with that plain get (test-only
switch ``broken_plain_get_older_sources``) the checker reports the lost write.

A plain get is not enough when the successor of such a configuration is still P: its own
reconfigurer may not have transferred yet, and a write can still complete on it with only ⊥ ACKs
after the plain get-data, from servers that the second reconfigurer's write-back of (c1, P) did
not reach.

Schedule with the plain get (c0 = s0 s1 s2, c1 = s3 s4 s5, c2 = s0 s1 s2 under a new id;
majorities of 2):
1. a writes v1 (completes everywhere).
2. w starts writing v2: get-tag fine; its PUT_DATA reaches s0 only (ACK next=⊥); s1 and s2 held.
3. r1 reconfigures c0 -> c1: Paxos decides c1; its SET_NEXT_AND_GET(c0, (c1, P)) reaches s1
   only (s0 and s2 held): r1 waits.
4. r2 reconfigures -> c2: read-config learns (c1, P) from s1, writes it back to s0, s1 (s2 held),
   Paxos on c1 decides c2; update-config: plain GetGroup on c0 answered by s1, s2 (s0 held) --
   neither has v2 -- and SET_NEXT_AND_GET on c1, which is still empty. c2 gets v1; r2 finalizes
   c2 on c1 (gc: c1 is collected).
5. w's PUT_DATA reaches s2, which has nextC[c0] = ⊥: ACK ⊥. w completes with {s0: ⊥, s2: ⊥}.
6. r2 reads k: its cseq has c2 F (mu = 2), it reads c2 only and returns v1 -- after v2 completed.
   (r1's transfer into c1 then answers OBSOLETE, r1 believes c1 was finalized by someone else.)

The fix (ares._update_config): every source c_i (i < ν) is read with SET_NEXT_AND_GET(c_i,
(c_{i+1}, P)), so that writing back the known successor and reading are one atomic step on each
server, and the §8.2 argument applies to every source: in step 4 s2 stores (c1, P) before it
answers, so w's PUT_DATA to s2 is answered with next = (c1, P) and w carries v2 on into c2.
"""

from __future__ import annotations

import pytest

from aresdsm.config import Configuration
from aresdsm.sim.scenario import Scenario
from aresdsm.testing import broken_switches
from aresdsm.wire.messages import GetGroup, PutBatch, PutData, WriteConfig


@pytest.mark.parametrize("broken", [False, True])
def test_plain_get_on_pending_predecessor_loses_completed_write(broken: bool) -> None:
    switches = broken_switches(broken_plain_get_older_sources=broken)
    reads: list[bytes] = []

    async def script(sc: Scenario) -> None:
        a, w = sc.client("a", switches), sc.client("w", switches)
        r1, r2 = sc.client("r1", switches), sc.client("r2", switches)
        await a.write("k", b"v1")
        await sc.run_for(0.01)

        # 2. w's put-data reaches s0 only
        sc.hold(
            "w-put-s1",
            lambda m: m.sender == "w" and isinstance(m.request, PutData) and m.server == "s1",
        )
        sc.hold(
            "w-put-s2",
            lambda m: m.sender == "w" and isinstance(m.request, PutData) and m.server == "s2",
        )
        write = sc.start(w.write("k", b"v2"))
        await sc.run_for(0.05)
        assert not write.done()

        # 3. r1's SET_NEXT_AND_GET on c0 reaches s1 only
        sc.hold(
            "r1-snag",
            lambda m: (
                m.sender == "r1"
                and isinstance(m.request, GetGroup)
                and m.request.config_id == "c0"
                and m.server in ("s0", "s2")
            ),
        )
        first = sc.start(r1.reconfig(Configuration("c1", tuple(sc.pool[3:6]))))
        await sc.run_for(0.05)
        assert not first.done()

        # 4. r2: write-back of (c1, P) not to s2; plain get on c0 not from s0
        sc.hold(
            "r2-wb",
            lambda m: m.sender == "r2" and isinstance(m.request, WriteConfig) and m.server == "s2",
        )
        sc.hold(
            "r2-get",
            lambda m: (
                m.sender == "r2"
                and isinstance(m.request, GetGroup)
                and m.request.config_id == "c0"
                and m.server == "s0"
            ),
        )
        # (proposing on top of the pending c1, as the original Ares does: a client of this
        # project completes c1 first, which reads c0 as the last source, SET_NEXT_AND_GET)
        decided = await r2.reconfig(Configuration("c2", tuple(sc.pool[0:3])), finish_first=False)
        assert decided.id == "c2"
        assert r2.cseq()[-1].status == "F"

        # 5. w's put reaches s2 (nextC[c0] still ⊥ there): w completes
        sc.release("w-put-s2")
        await write

        # 6. a read by r2 (mu = c2) after w completed
        await sc.run_for(0.05)
        got = await r2.read("k")
        sc.release("w-put-s1")
        sc.release("r1-snag")
        sc.release("r2-wb")
        sc.release("r2-get")
        await first
        # a client starting from c0 would still find v2 there (c0 is never collected: c1 is
        # never finalized); r2 does not look there
        reads.append(got)

    sc = Scenario.play(servers=6, initial=3, script=script)
    if broken:
        assert sc.check().verdict == "violation" and reads == [b"v1"]
    else:
        assert sc.check().verdict == "ok", sc.check().explain()
        assert reads == [b"v2"]


@pytest.mark.parametrize("broken", [False, True])
def test_retry_after_a_failed_reconfiguration_loses_a_slow_write(broken: bool) -> None:
    """The same hole with one reconfigurer: its first attempt (c0 -> c1) completes
    SET_NEXT_AND_GET on a quorum {s0, s1} and then stalls for good (crash, timeout, or a TREAS
    decode that exceeds delta), so it never transfers. Its retry finds (c1, P), decides c2 on c1,
    reads c0 with a plain get-data from {s1, s2}: a slow write whose PUT_DATA reached s0 before
    the first SET_NEXT_AND_GET and reaches s2 only now completes with {s0: ⊥, s2: ⊥} and is
    missing from c2, which is finalized."""

    switches = broken_switches(broken_plain_get_older_sources=broken)
    reads: list[bytes] = []

    async def script(sc: Scenario) -> None:
        a, w, r = sc.client("a", switches), sc.client("w", switches), sc.client("r", switches)
        await a.write("k", b"v1")
        await sc.run_for(0.01)

        def put_to(server: str):  # type: ignore[no-untyped-def]
            return lambda m: (
                m.sender == "w" and isinstance(m.request, PutData) and m.server == server
            )

        sc.hold("w-put-s1", put_to("s1"))
        sc.hold("w-put-s2", put_to("s2"))
        write = sc.start(w.write("k", b"v2"))
        await sc.run_for(0.05)

        # first attempt: SET_NEXT_AND_GET answered by s0 (which has v2) and s1; the transfer
        # into c1 never happens (the reconfigurer stalls)
        sc.hold(
            "snag-s2",
            lambda m: (
                m.sender == "r"
                and isinstance(m.request, GetGroup)
                and m.request.config_id == "c0"
                and m.server == "s2"
            ),
        )
        sc.hold("stall", lambda m: m.sender == "r" and isinstance(m.request, PutBatch))
        first = sc.start(r.reconfig(Configuration("c1", tuple(sc.pool[3:6]))))
        await sc.run_for(0.05)
        assert not first.done()
        # s2's SET_NEXT_AND_GET is lost; the stalled transfer stays held (never delivered), the
        # retry's transfer is not held
        sc.cluster.rules.pop("snag-s2")
        sc.cluster.held = [h for h in sc.cluster.held if h.rule != "snag-s2"]
        sc.cluster.rules.pop("stall")

        # the retry: write-back of (c1, P) not to s2, plain get on c0 not from s0
        sc.hold(
            "wb-s2",
            lambda m: m.sender == "r" and isinstance(m.request, WriteConfig) and m.server == "s2",
        )
        sc.hold(
            "get-s0",
            lambda m: (
                m.sender == "r"
                and isinstance(m.request, GetGroup)
                and m.request.config_id == "c0"
                and m.server == "s0"
            ),
        )
        c2 = Configuration("c2", tuple(sc.pool[0:3]))  # on top of the pending c1 (original Ares)
        assert (await r.reconfig(c2, finish_first=False)).id == "c2"

        sc.release("w-put-s2")  # s2 never heard of c1: ACK ⊥, the write completes
        await write
        await sc.run_for(0.05)
        reads.append(await r.read("k"))
        first.cancel()

    sc = Scenario.play(servers=6, initial=3, script=script)
    if broken:
        assert sc.check().verdict == "violation" and reads == [b"v1"]
    else:
        assert sc.check().verdict == "ok", sc.check().explain()
        assert reads == [b"v2"]
