"""Least privilege per message (docs/protocol.md §13 "Roles"; docs/security.md).

A client's role comes from its certificate (:mod:`.tls`): ``read`` < ``write`` < ``admin``, each
allowed everything the ones before it are. The server shell (:meth:`aresdsm.server.Server.handle`)
asks :func:`required_role` for every request and answers ``unauthorized`` when the connection's
role is below it; the protocol core never sees the request.

What ordinary clients must still send -- and are allowed exactly that:

* reads: QueryTag, QueryData, QueryList, ReadConfig, LatestConfig, Ping, and ListKeys -- the
  object keys of a group, never values (``Store.groups()``, listings): a reader may read every
  object anyway (``read``);
* a reader's **write-back** of a value (phase 2 of a read, §4): PutData. The message alone
  cannot tell a write-back from a forged new value; the writer's MAC can (:mod:`.macs`,
  :func:`value_refusal`): on a server holding the write key ``K_write`` a PutData -- from any
  role -- is applied only when its MAC is valid or when it adds nothing the server does not hold
  already (:meth:`~aresdsm.protocol.server_core.ServerCore.holds_tag`), so a ``read`` client may
  send PutData and propagates, to a lagging server too, exactly the values writers wrote. On a
  server without ``K_write`` (a cluster file from before it existed) a ``read`` client's PutData
  is accepted only when it adds nothing the server holds already, otherwise it needs ``write``;
* a **write-back of a discovered configuration entry** (read-config §6, the piggyback §8.1):
  WriteConfig with a **P** entry (``read``) -- when the server holds the cluster's admin key,
  only with the admin MAC the entry was decided with (:mod:`.macs`: propagate, never invent).
  An F entry, with or without garbage collection, needs ``admin``: finalizing (and deleting
  the old configuration's data) is the reconfigurer's step. Clients without ``admin`` write
  discovered F entries back as P entries (``OpSwitches.write_back_final`` off), which is
  enough for discovery;
* **InstallConfig** needs ``admin``: a server that answers ``unknown-config`` counts, for a
  client without ``admin``, as one that does not answer (like a crashed one); allowing it would
  let a reader squat configuration ids on servers. Clients without ``admin`` do not send it.

Coverable writes (CvrPrepare, CvrAccept, §9.1) need ``write``. Everything else -- consensus
(Prepare, Accept), state transfer (GetGroup, SET_NEXT_AND_GET, PutBatch, CvrInject), Finalized,
group enumeration (ListChains), GetStats -- needs ``admin``. A message type missing from the
table needs ``admin`` (deny by default).
"""

from __future__ import annotations

from typing import Protocol

from ..tags import Tag
from ..wire.messages import (
    Accept,
    CvrAccept,
    CvrInject,
    CvrPrepare,
    Finalized,
    GetGroup,
    GetStats,
    InstallConfig,
    LatestConfig,
    ListChains,
    ListKeys,
    Ping,
    Prepare,
    PutBatch,
    PutData,
    QueryData,
    QueryList,
    QueryTag,
    ReadConfig,
    Request,
    WriteConfig,
)
from . import macs


class TagHolder(Protocol):
    def holds_tag(self, group: str, config_id: str, key: str, tag: Tag) -> bool: ...


REQUIRED: dict[type, str] = {
    Ping: "read",
    QueryTag: "read",
    QueryData: "read",
    QueryList: "read",
    ReadConfig: "read",
    LatestConfig: "read",
    ListKeys: "read",  # object keys, never values: a reader may read every object anyway
    PutData: "write",  # "read" for a write-back that adds nothing new: see required_role
    CvrPrepare: "write",  # a coverable write (docs/protocol.md §9.1): writers only
    CvrAccept: "write",
    CvrInject: "admin",  # state transfer of an open level
    WriteConfig: "admin",  # "read" for a P entry (discovery write-back): see required_role
    Prepare: "admin",
    Accept: "admin",
    GetGroup: "admin",
    PutBatch: "admin",
    InstallConfig: "admin",
    Finalized: "admin",
    ListChains: "admin",
    GetStats: "admin",
}
"""The role each request type needs at least (before the per-message refinements)."""


def required_role(
    req: Request,
    core: TagHolder,
    admin_key: bytes | None = None,
    write_keys: tuple[bytes, ...] = (),
) -> str:
    """The least role that may send ``req`` to a server whose state is ``core``. With the
    cluster's ``admin_key`` a P entry needs a valid admin MAC to be written back by anyone but
    an admin (:mod:`.macs`); with ``write_keys`` the writer's MAC, not the role, decides whether
    a PutData may add a value (:func:`value_refusal`), so a reader may send one."""
    if isinstance(req, WriteConfig):
        if req.entry.status != "P":
            return "admin"
        if admin_key is None or macs.valid(
            admin_key, req.group, req.config_id, req.entry.config, req.entry.mac
        ):
            return "read"
        return "admin"
    if isinstance(req, PutData):
        if write_keys:
            return "read"
        held = core.holds_tag(req.group, req.config_id, req.key, req.tag)
        return "read" if held else "write"
    return REQUIRED.get(type(req), "admin")


_WRITE, _ADMIN = 2, 3  # (tls.role_level of "write" and "admin")


def refusal(
    req: Request,
    core: TagHolder,
    level: int,
    admin_key: bytes | None,
    write_keys: tuple[bytes, ...] = (),
) -> str | None:
    """None if a connection of role ``level`` may send ``req``; else the role it needs. The
    checks that look at server state (PutData's tag, a P entry's MAC) run only for connections
    they could refuse: an admin's request costs one comparison. (The writer's MAC of the values
    a request carries is checked for every role: :func:`value_refusal`.)"""
    if level >= _ADMIN:
        return None
    if isinstance(req, PutData) and level >= _WRITE:
        return None
    need = required_role(req, core, admin_key, write_keys)
    return None if level >= ROLE_LEVELS[need] else need


def value_refusal(req: Request, core: TagHolder, write_keys: tuple[bytes, ...]) -> str | None:
    """Propagate, never invent (docs/protocol.md §13): None if every value ``req`` carries
    (PutData, each PutBatch item) has a valid writer MAC under one of ``write_keys``, or adds
    nothing this server does not hold already; else why not (one line). Whatever the sender's
    role: the right to create a value is the key, not the certificate."""
    if isinstance(req, PutData):
        return _value_problem(
            core, write_keys, req.group, req.config_id, req.key, req.tag, req.digest, req.mac
        )
    if isinstance(req, PutBatch):
        for item in req.items:
            problem = _value_problem(
                core,
                write_keys,
                req.group,
                req.config_id,
                item.key,
                item.tag,
                item.digest,
                item.mac,
            )
            if problem is not None:
                return problem
    return None


def _value_problem(
    core: TagHolder,
    keys: tuple[bytes, ...],
    group: str,
    config_id: str,
    key: str,
    tag: Tag,
    digest: bytes,
    mac: bytes,
) -> str | None:
    if macs.value_mac_valid(keys, group, key, tag, digest, mac):
        return None
    if core.holds_tag(group, config_id, key, tag):
        return None  # a write-back of what the server has: adds nothing
    what = "carries no writer MAC" if not mac else "carries a writer MAC that does not verify"
    return (
        f"a value with tag number {tag.z} {what} (only a writer holding the cluster's write key "
        "can create a value; docs/security.md)"
    )


ROLE_LEVELS = {"read": 1, "write": _WRITE, "admin": _ADMIN}


def is_admin_operation(req: Request) -> bool:
    """Requests the audit log records: every one that needs ``admin`` by its type, and
    WriteConfig with an F entry (finalize, garbage collection)."""
    if isinstance(req, WriteConfig):
        return req.entry.status == "F"
    return REQUIRED.get(type(req), "admin") == "admin"
