"""The simulator's §10.4 check ("a promise never decreases, also across restarts",
docs/testing.md) must remember what ACCEPTED replies gave away too (found in review: it only
remembered PROMISE replies). An ACCEPT raises the promise
too (promised = accepted_ballot = b) and its ACCEPTED reply gives it away, but an acceptor that
forgets that state on restart is not reported: InvariantMonitor.on_reply ignores ACCEPTED, and
after_restart checks only replied_promises (src/aresdsm/sim/cluster.py:110-129).

Measured with a ServerCore whose _on_accept persists nothing (accepted ballot and value lost on
restart): 800 swarm seeds (3 reconfigurers x 3 reconfigurations, fault interval 3 ms) reported
nothing, although such an acceptor can let two values be decided for one (group, configuration).
"""

from __future__ import annotations

from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol import paxos
from aresdsm.protocol.server_core import ServerCore
from aresdsm.sim.cluster import InvariantMonitor
from aresdsm.wire.messages import Accept, Accepted, Ballot, Prepare


def test_forgotten_accept_is_reported_after_restart() -> None:
    c0 = Configuration("c0", (ServerInfo("s0", "h:1"), ServerInfo("s1", "h:2")))
    c1 = Configuration("c1", (ServerInfo("s1", "h:2"),), epoch=1)
    mon = InvariantMonitor()
    core = ServerCore("s0")
    core.install_config(c0)

    prep = Prepare("g", "c0", Ballot(1, "p"))
    reply, _ = core.handle(prep)
    mon.on_reply("s0", prep, reply)
    acc = Accept("g", "c0", Ballot(2, "q"), c1)  # b=2 >= promised: accepted without a prepare
    reply, _ = core.handle(acc)
    assert isinstance(reply, Accepted)
    mon.on_reply("s0", acc, reply)

    # the restarted acceptor lost the accept: promised is back at (1, p), nothing accepted
    mon.on_crash("s0")
    restarted = ServerCore("s0")
    restarted.install_config(c0)
    restarted.acceptors[("g", "c0")] = paxos.AcceptorState(Ballot(1, "p"), None, None)
    mon.after_restart("s0", restarted)

    assert mon.failures, "an acceptor that forgot an ACCEPTED ballot (and value) went unreported"
