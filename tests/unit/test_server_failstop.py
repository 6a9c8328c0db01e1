"""server.py after a failed commit (fail-stop, persist before reply). Found in review: requests
handled between the failed commit and ``stop()`` closing the transports (frames that arrived in
the same event-loop iteration as the failure) were answered at once -- ``barrier()`` was None,
the in-flight commit being done -- from state that is not, and never will be, durable: an ACK
for a PUT_DATA that a restart forgets, or a QUERY_DATA reporting the failed commit's value. Now
such requests get a ``storage`` error and ``barrier()`` returns the failed commit's future.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol import abd
from aresdsm.server import Server
from aresdsm.storage.base import Write
from aresdsm.storage.memory import MemoryStorage
from aresdsm.tags import Tag
from aresdsm.wire.blob import Blob
from aresdsm.wire.messages import Ack, DataReply, Envelope, QueryData


class _FailingStorage(MemoryStorage):
    """Commit number ``fail_at`` (1-based) fails, like a full disk."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.attempts = 0

    async def _run_commit(self, batch: list[Write]) -> None:
        self.attempts += 1
        if self.attempts == self.fail_at:
            raise OSError("disk full")
        await super()._run_commit(batch)


class _Conn:
    """The part of server._Conn that Server.handle uses; records what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, Any]] = []
        self.pending = 0
        self.reply_bytes = 0
        self.paused = False
        self.transport = None
        self.level = 3  # a plaintext (insecure) connection: every request allowed
        self.identity = None
        self.peer = "test"

    def send(self, rid: int, reply: Any) -> None:
        self.sent.append((rid, reply))

    def encode(self, rid: int, reply: Any) -> list[Any]:
        return [(rid, reply)]  # (len 2: a stand-in for the encoded size)

    def write(self, bufs: list[Any]) -> None:
        self.sent.extend(bufs)

    def request_done(self, reply_bytes: int = 0) -> None:
        self.pending -= 1
        self.reply_bytes -= reply_bytes

    def release(self, bufs: list[Any], size: int) -> None:
        self.write(bufs)
        self.request_done(size)


def test_requests_after_a_failed_commit_get_no_answer_from_undurable_state() -> None:
    c0 = Configuration("c0", (ServerInfo("s1", "127.0.0.1:1"),))

    async def main() -> tuple[list[tuple[int, Any]], list[Any]]:
        storage = _FailingStorage(fail_at=2)
        server = Server(server_id="s1", host="127.0.0.1", port=0, storage=storage)
        await server.bootstrap(c0)  # commit 1
        conn = _Conn()
        fail = server._fail

        def fail_then_more_frames(exc: BaseException) -> None:
            fail(exc)
            # frames that were already read in this loop iteration (another connection's
            # data_received runs before the stop() task's first step)
            server.handle(
                conn, Envelope(2, abd.put_request("g", "c0", "k", Tag(2, "w"), Blob(b"v2")))
            )
            server.handle(conn, Envelope(3, QueryData("g", "c0", "k")))

        server._fail = fail_then_more_frames  # type: ignore[method-assign]
        server.handle(conn, Envelope(1, abd.put_request("g", "c0", "k", Tag(1, "w"), Blob(b"v1"))))
        await asyncio.sleep(0.05)  # commit 2 fails: no reply to 1 (correct), stop() runs
        durable = list(storage.load())
        return conn.sent, durable

    sent, durable = asyncio.run(main())
    durable_data = [r for r in durable if r.ns == "abd"]
    assert durable_data == []  # nothing of k is on stable storage
    leaked = [(rid, r) for rid, r in sent if isinstance(r, Ack | DataReply)]
    assert leaked == [], f"replies sent for state that is not durable: {leaked}"
    assert [(rid, type(r).__name__, getattr(r, "code", None)) for rid, r in sent] == [
        (2, "ErrorReply", "storage"),
        (3, "ErrorReply", "storage"),
    ]
