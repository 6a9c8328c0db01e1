"""The audit log of admin operations (docs/security.md "Audit log"): who, what, when.

One JSON object per line, appended to ``audit.log`` in the server's data directory (or a path
given with ``ares server --audit-log``), mode 0600. A line is written when the server has decided
an admin operation (consensus, state transfer, install, finalize, garbage collection, group
enumeration, stats) or refused a request for lack of role::

    {"ts": "2026-11-28T03:01:02.123Z", "server": "s1", "who": "admin (role admin, serial 1F..)",
     "peer": "127.0.0.1:53122", "op": "Prepare", "group": "default", "config": "c0",
     "detail": "ballot 3/ab12", "outcome": "Promise"}

Fields are the request's own (ids are bounded by the decoder and the core: 1 KiB each), written
with JSON escaping; the file is line-buffered and flushed per line, not fsynced (an audit trail,
not protocol state).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import IO, Any

from ..wire.messages import (
    Accept,
    Finalized,
    GetGroup,
    InstallConfig,
    ListChains,
    Prepare,
    PutBatch,
    Request,
    WriteConfig,
)

log = logging.getLogger("aresdsm.audit")
MAX_FIELD_CHARS = 200
"""Longer fields are cut (ids may be 1 KiB; a line stays readable)."""


def _cut(s: str) -> str:
    return s if len(s) <= MAX_FIELD_CHARS else s[:MAX_FIELD_CHARS] + "..."


def describe(req: Request) -> tuple[str, str, str]:
    """(group, configuration, detail) of an admin request, for the log."""
    group = _cut(str(getattr(req, "group", "")))
    config = _cut(str(getattr(req, "config_id", "")))
    if isinstance(req, Prepare):
        detail = f"ballot {req.ballot.round}/{req.ballot.proposer}"
    elif isinstance(req, Accept):
        detail = f"ballot {req.ballot.round}/{req.ballot.proposer} value {req.value.describe()}"
    elif isinstance(req, WriteConfig):
        detail = f"next {req.entry.config.id} {req.entry.status} gc={req.gc}"
    elif isinstance(req, GetGroup):
        detail = f"page after {req.after!r}" + (
            f" set_next {req.set_next.config.id} {req.set_next.status}" if req.set_next else ""
        )
    elif isinstance(req, PutBatch):
        detail = f"{len(req.items)} objects"
    elif isinstance(req, InstallConfig):
        config = _cut(req.config.id)
        detail = req.config.describe()
    elif isinstance(req, Finalized):
        detail = f"{req.entry.config.id} F"
    elif isinstance(req, ListChains):
        detail = f"prefix {req.prefix!r} after {req.after!r}"
    else:
        detail = ""
    return group, config, _cut(detail)


class AuditLog:
    """Appends one line per event; a failure to write is logged once and does not stop the
    server (the operation itself is durable in the store either way)."""

    def __init__(self, path: str | Path, server_id: str) -> None:
        self.path = Path(path)
        self.server_id = server_id
        self._file: IO[str] | None = None
        self._failed = False

    def _open(self) -> IO[str] | None:
        if self._file is None and not self._failed:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
            except OSError as e:
                self._failed = True
                log.error("cannot open audit log %s: %s", self.path, e)
        return self._file

    def record(self, *, who: str, peer: str, req: Request, outcome: str) -> None:
        f = self._open()
        if f is None:
            return
        group, config, detail = describe(req)
        now = time.time()
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now * 1000) % 1000:03d}Z",
            "server": self.server_id,
            "who": _cut(who),
            "peer": peer,
            "op": type(req).__name__,
            "group": group,
            "config": config,
            "detail": detail,
            "outcome": outcome,
        }
        try:
            f.write(json.dumps(event, ensure_ascii=True) + "\n")
        except OSError as e:
            if not self._failed:
                log.error("cannot write audit log %s: %s", self.path, e)
            self._failed = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
