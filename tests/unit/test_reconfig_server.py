"""Server rules of the reconfiguration service (docs/protocol.md §6)."""

from __future__ import annotations

from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol import reconfig_server as rs
from aresdsm.wire.messages import Ack, ErrorReply, NextEntry, NextReply

D = Configuration("d", (ServerInfo("s1", "h:1"),))
E = Configuration("e", (ServerInfo("s2", "h:2"),))


def test_read_config_reports_what_is_stored() -> None:
    assert rs.on_read_config(None) == NextReply(None)
    assert rs.on_read_config(NextEntry(D, "P")) == NextReply(NextEntry(D, "P"))


def test_write_config_upgrades_p_to_f_but_never_downgrades() -> None:
    new, reply = rs.on_write_config(None, NextEntry(D, "P"))
    assert new == NextEntry(D, "P") and reply == Ack()
    new, _ = rs.on_write_config(NextEntry(D, "P"), NextEntry(D, "F"))
    assert new == NextEntry(D, "F")
    same, reply = rs.on_write_config(NextEntry(D, "F"), NextEntry(D, "P"))
    assert same is None and reply == Ack()  # §10 invariant 3


def test_a_second_successor_is_refused() -> None:
    new, reply = rs.on_write_config(NextEntry(D, "P"), NextEntry(E, "P"))
    assert new is None and isinstance(reply, ErrorReply) and reply.code == "invariant"
