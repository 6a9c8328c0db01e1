"""Logging: one line per event, text or JSON, and bounded logging of what peers send.

- :func:`configure` sets up the root logger of a process (``--log-level``, ``--log-format``).
  Each record is one line: a message with a newline or a traceback is escaped, so a log line is
  always one event (grep, journald, log shippers).
- :class:`BadInputLog` logs bad input from the network at most ``per_s`` lines a second (a token
  bucket of ``burst``) and counts what it dropped; :func:`quote` keeps at most a short escaped
  prefix of any text a peer chose. One hostile frame can no longer grow the log by its size.
- :func:`state_events` names the reconfiguration steps a request made on a server (docs/protocol.md
  §5, §6, §8.3, §8.5) from the writes the pure core returned: the core stays free of I/O and the
  shell logs what became of its state (a new configuration installed, a consensus value accepted,
  a successor recorded, a configuration garbage-collected or finalized).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

from .storage.base import Record, Write

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")


class _OneLine(logging.Formatter):
    """The stdlib text format, with embedded newlines (messages, tracebacks) escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg (and exc, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str = "warning", fmt: str = "text") -> None:
    """(Re)configure the process's root logger: one handler on stderr."""
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter()
        if fmt == "json"
        else _OneLine("%(asctime)s %(name)s %(levelname)s %(message)s")
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())


def quote(text: object, max_chars: int = 64) -> str:
    """At most ``max_chars`` characters of ``text``, escaped (``repr``), with the total length."""
    s = str(text)
    head = s[:max_chars]
    shown = repr(head)[1:-1]  # backslash-escapes control characters, quotes and non-printables
    if len(shown) > 2 * max_chars:
        shown = shown[: 2 * max_chars]
    if len(s) > max_chars:
        return f"{shown}... ({len(s)} chars)"
    return shown


class BadInputLog:
    """Rate-limited warnings about bad input (token bucket; suppressed lines are counted)."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        per_s: float,
        burst: int,
        max_chars: int = 64,
        level: int = logging.WARNING,
    ) -> None:
        self.logger = logger
        self.level = level
        self.per_s = per_s
        self.burst = burst
        self.max_chars = max_chars
        self._tokens = float(burst)
        self._last = time.monotonic()
        self.suppressed = 0
        self.logged = 0

    def warning(self, what: str, detail: object = None) -> None:
        """Log ``what`` (our own text) and a quoted prefix of ``detail`` (the peer's)."""
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.per_s)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return
        self._tokens -= 1.0
        self.logged += 1
        extra = ""
        if self.suppressed:
            extra = f" ({self.suppressed} similar lines suppressed)"
            self.suppressed = 0
        if detail is None:
            self.logger.log(self.level, "%s%s", what, extra)
        else:
            self.logger.log(self.level, "%s: %s%s", what, quote(detail, self.max_chars), extra)


def state_events(writes: Iterable[Write]) -> list[tuple[int, str]]:
    """(log level, text) of the reconfiguration steps in a core's writes (data records are
    skipped; a Paxos promise alone is DEBUG, every other step INFO)."""
    from .protocol import paxos, reconfig_server
    from .protocol.server_core import CFG_NS, FINAL_NS, GC_NS

    out: list[tuple[int, str]] = []
    info = logging.INFO
    for w in writes:
        ns = w.ns
        if ns in ("abd", "treas") or not isinstance(w, Record):
            continue
        where = f"{quote(w.group)}/{quote(w.config_id)}"
        if ns == CFG_NS:
            out.append((info, f"installed configuration {quote(w.config_id)}"))
        elif ns == reconfig_server.NS:
            entry = _decode_next(w.meta)
            text = f"successor {quote(entry[0])} recorded, status {entry[1]}" if entry else ""
            out.append((info, f"{where}: {text or 'successor recorded'}"))
        elif ns == paxos.NS:
            acc = _decode_acceptor(w.meta)
            level = info if acc.startswith("accepted") else logging.DEBUG
            out.append((level, f"{where}: consensus {acc}"))
        elif ns == GC_NS:
            out.append((info, f"{where}: garbage-collected (its successor is finalized)"))
        elif ns == FINAL_NS:
            out.append((info, f"{where}: configuration finalized"))
    return out


def _decode_next(meta: bytes) -> tuple[str, str] | None:
    import msgspec

    from .wire.messages import NextEntry

    try:
        e = msgspec.msgpack.decode(meta, type=NextEntry)
    except msgspec.DecodeError:  # pragma: no cover - the core encoded it
        return None
    return e.config.id, e.status


def _decode_acceptor(meta: bytes) -> str:
    import msgspec

    from .protocol.paxos import AcceptorState

    try:
        st = msgspec.msgpack.decode(meta, type=AcceptorState)
    except msgspec.DecodeError:  # pragma: no cover - the core encoded it
        return "state recorded"
    if st.accepted_value is not None:
        return (
            f"accepted configuration {quote(st.accepted_value.id)} "
            f"at ballot {quote(st.accepted_ballot)}"
        )
    return f"promised ballot {quote(st.promised)}"
