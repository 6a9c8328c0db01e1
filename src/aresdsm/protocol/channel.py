"""The injected interface between client algorithms and network (docs/architecture.md principle 2).

A :class:`Channel` runs one *round*: send a request to every server of a configuration and wait
for a quorum of successful replies of the expected type. The real implementation
(:class:`aresdsm.net.client.TcpChannel`) uses TCP connections and real timeouts; the simulator's
uses virtual time. The client algorithms never see sockets, clocks or random numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from ..config import Configuration, ServerInfo
from ..wire.messages import NextEntry, Reply, Request

R = TypeVar("R", bound=Reply)


class ConfigurationObsolete(Exception):
    """A server answered OBSOLETE (docs/protocol.md §8.3): the configuration's successor ``next`` is
    finalized and holds everything; the round is abandoned and the caller moves on to it."""

    def __init__(self, next_entry: NextEntry) -> None:
        super().__init__(f"configuration superseded by {next_entry.config.id}")
        self.next = next_entry

    def __reduce__(self) -> tuple[type[ConfigurationObsolete], tuple[NextEntry]]:
        return (ConfigurationObsolete, (self.next,))


RequestFor = Request | Callable[[int, ServerInfo], Request]
"""One request for every server, or a function of (server index, server) -> its request."""


class Channel(Protocol):
    async def round(
        self,
        c: Configuration,
        request: RequestFor,
        *,
        expect: type[R],
        phase: str,
        need: int | None = None,
        accept: Callable[[Any], bool] | None = None,
    ) -> list[tuple[ServerInfo, R]]:
        """Send ``request`` to all servers of ``c``; return the first ``need`` (default: ``c``'s
        quorum size) replies of type ``expect``.

        Error replies, replies of another type and replies that ``accept`` rejects (a value
        that does not match its digest) do not count. Raises
        :class:`~aresdsm.errors.QuorumUnavailable` as soon as so many servers failed that
        ``need`` replies cannot come, and :class:`~aresdsm.errors.OperationTimeout` when the
        round's deadline passes, and :class:`ConfigurationObsolete` as soon as one server
        answers OBSOLETE. ``phase`` names the round for tracing and counters.
        """
        ...


class StoreChannel(Channel, Protocol):
    """What the :class:`~aresdsm.client.Store` needs of its transport: rounds, one request to
    one server (LATEST_CONFIG, stats, ping), closing, and its round counters. The real one is
    :class:`~aresdsm.net.client.TcpChannel`; the simulator injects its own."""

    rounds: int
    rounds_by_phase: dict[str, int]
    messages: int
    may_install: bool
    """Whether this client may finalize and install configurations (the admin role,
    docs/protocol.md §13); without it the Store writes discovered F entries back as P."""

    async def request(
        self, server: ServerInfo, req: Request, *, timeout_s: float | None = None
    ) -> Reply: ...

    async def close(self) -> None: ...
