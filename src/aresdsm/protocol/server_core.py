"""The pure server: requests in, (reply, writes to persist) out (architecture.md principle 1).

:class:`ServerCore` holds one server's protocol state in memory and dispatches each request to the
pure rule of its role (ABD, protocol.md §4.1). It does no I/O, reads no clock and draws no random
number: the process shell (:mod:`aresdsm.server`) and the simulator (:mod:`aresdsm.sim`) both drive
it, persist the returned writes, and release the reply only once they -- and everything applied
before -- are durable (persist before reply, protocol.md §1 "Durability").

Every request names (group, configuration, object); the server answers ``unknown-config`` for a
configuration it does not know and ``not-member`` for one it is not part of, and never creates
state for either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from ..config import Configuration
from ..storage.base import Record, Write
from ..tags import Tag
from ..wire.blob import Blob
from ..wire.messages import (
    Ack,
    ErrorReply,
    GetStats,
    Ping,
    Pong,
    PutData,
    QueryData,
    QueryTag,
    Reply,
    Request,
    Stats,
)
from . import abd

CFG_NS = "cfg"
StateKey = tuple[str, str, str]
"""(group, config_id, key)"""

_tag_enc = msgspec.msgpack.Encoder()
_tag_dec = msgspec.msgpack.Decoder(Tag)
_cfg_dec = msgspec.msgpack.Decoder(Configuration)


@dataclass
class ServerCore:
    server_id: str
    configs: dict[str, Configuration] = field(default_factory=dict)
    registers: dict[StateKey, abd.Register] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    # -- recovery --------------------------------------------------------------------------------

    @classmethod
    def recover(cls, server_id: str, records: list[Record] | tuple[Record, ...]) -> ServerCore:
        core = cls(server_id)
        for r in records:
            if r.ns == CFG_NS:
                cfg = _cfg_dec.decode(r.meta)
                core.configs[cfg.id] = cfg
            elif r.ns == abd.NS:
                value = Blob(bytes(r.data) if r.data is not None else b"")
                core.registers[(r.group, r.config_id, r.key)] = abd.Register(
                    _tag_dec.decode(r.meta), value
                )
        return core

    def install_config(self, c: Configuration) -> list[Write]:
        """Learn a configuration (the initial one at bootstrap). Returns the writes to persist."""
        if c.id in self.configs:
            return []
        self.configs[c.id] = c
        return [Record(CFG_NS, "", c.id, "", msgspec.msgpack.encode(c))]

    # -- dispatch --------------------------------------------------------------------------------

    def handle(self, req: Request) -> tuple[Reply, list[Write]]:
        kind = type(req).__name__
        self.counters[kind] = self.counters.get(kind, 0) + 1
        if isinstance(req, QueryTag | QueryData | PutData):
            err = self._check_config(req.config_id)
            if err is not None:
                return err, []
            skey = (req.group, req.config_id, req.key)
            reg = self.registers.get(skey, abd.INITIAL)
            if isinstance(req, QueryTag):
                return abd.on_query_tag(reg), []
            if isinstance(req, QueryData):
                return abd.on_query_data(reg), []
            new, ack = abd.on_put_data(reg, req)
            if new is None:
                return ack, []
            self.registers[skey] = new
            return ack, [
                Record(
                    abd.NS,
                    req.group,
                    req.config_id,
                    req.key,
                    _tag_enc.encode(new.tag),
                    new.value.data,
                )
            ]
        if isinstance(req, Ping):
            return Pong(req.payload), []
        if isinstance(req, GetStats):
            return self.stats(), []
        return ErrorReply("bad-request", f"unexpected message {kind}"), []  # pragma: no cover

    def _check_config(self, config_id: str) -> ErrorReply | None:
        c = self.configs.get(config_id)
        if c is None:
            self.counters["unknown-config"] = self.counters.get("unknown-config", 0) + 1
            return ErrorReply(
                "unknown-config",
                f"server {self.server_id} does not know configuration {config_id!r}",
            )
        if not c.has_member(self.server_id):
            return ErrorReply(
                "not-member",
                f"server {self.server_id} is not a member of configuration {config_id!r}",
            )
        return None

    def stats(self, stored_bytes: int | None = None) -> Stats:
        if stored_bytes is None:
            stored_bytes = sum(len(r.value) for r in self.registers.values())
        return Stats(self.server_id, dict(self.counters), len(self.registers), stored_bytes)


__all__ = ["Ack", "ServerCore"]
