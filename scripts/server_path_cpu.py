"""CPU per request of the server's request path alone, in process (issue 18): no sockets, no
TLS, no client -- only what the server does from a received chunk of frames to its replies
(framing, decoding, the shell's checks, the writer MAC, the core, the group commit, encoding,
the coalesced write to a transport that discards it). A round feeds one chunk holding 64
requests (write: 64 QueryTag + 64 PutData of 1 KiB with valid writer MACs, as the two phases
of 64 writes in flight; read: 64 QueryData) and waits for their commit; a repeat runs 100
rounds. It prints the *minimum* over the repeats of process CPU per request (every thread of
the process: the commit thread too), which moves far less than wall-clock figures when other
programs load the machine. Works against older commits (``PYTHONPATH=/tmp/old/src``).

    python scripts/server_path_cpu.py write memory     # the request path alone
    python scripts/server_path_cpu.py write sqlite     # and the SQLite group commits
    python scripts/server_path_cpu.py read sqlite [REPEATS]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from aresdsm.config import Configuration, ServerInfo
from aresdsm.protocol import abd
from aresdsm.security import macs
from aresdsm.server import Server, _Conn
from aresdsm.storage.base import Storage
from aresdsm.storage.memory import MemoryStorage
from aresdsm.storage.sqlite import SqliteStorage
from aresdsm.tags import Tag
from aresdsm.wire.blob import Blob
from aresdsm.wire.codec import Encoder
from aresdsm.wire.messages import Envelope, QueryData, QueryTag

WRITE_KEY = b"k" * 32
CFG = Configuration("c0", tuple(ServerInfo(f"s{i}", f"127.0.0.1:{i}") for i in (1, 2, 3)))
IN_FLIGHT = 64
ROUNDS = 100


class _Sink:
    """A transport that takes everything and sends nothing."""

    def write(self, data: Any) -> None:
        pass

    def writelines(self, bufs: Any) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _chunk(kind: str, z: int, rid: int, enc: Encoder) -> bytes:
    value = Blob(b"v" * 1024)
    frames = []
    for j in range(IN_FLIGHT):
        key = f"default\x00k{j}"
        if kind == "write":
            frames.append(enc.encode_bytes(Envelope(rid, QueryTag("", "c0", key))))
            tag = Tag(z, "w1")
            put = abd.put_request("", "c0", key, tag, value)
            mac = macs.value_mac(WRITE_KEY, "", key, tag, put.digest)
            frames.append(
                enc.encode_bytes(Envelope(rid + 1, msgspec.structs.replace(put, mac=mac)))
            )
        else:
            frames.append(enc.encode_bytes(Envelope(rid, QueryData("", "c0", key))))
        rid += 2
    return b"".join(frames)


async def main(kind: str, engine: str, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        storage: Storage = (
            MemoryStorage() if engine == "memory" else SqliteStorage(Path(tmp) / "db.sqlite3")
        )
        server = Server(
            server_id="s1", host="127.0.0.1", port=0, storage=storage, write_keys=(WRITE_KEY,)
        )
        await server.bootstrap(CFG)
        conn = _Conn(server)
        conn.connection_made(_Sink())  # type: ignore[arg-type]
        enc = Encoder()
        await _run(conn, storage, [_chunk("write", 1, 1, enc)])  # (every object exists)
        per_round = IN_FLIGHT * (2 if kind == "write" else 1)
        best = float("inf")
        z = 2
        for _ in range(repeats):
            chunks = [_chunk(kind, z + i, 1, enc) for i in range(ROUNDS)]
            z += ROUNDS
            c0 = time.process_time()
            await _run(conn, storage, chunks)
            best = min(best, (time.process_time() - c0) / (ROUNDS * per_round) * 1e6)
        print(
            f"{kind} {engine}: {best:.1f} us CPU per request (minimum of {repeats} repeats of "
            f"{ROUNDS} x {per_round} requests; server path only: no sockets, no TLS)"
        )
        storage.close()


async def _run(conn: _Conn, storage: Storage, chunks: list[bytes]) -> None:
    for chunk in chunks:
        conn.data_received(chunk)
        await storage.drain()
        await asyncio.sleep(0)  # (the coalesced flush)


if __name__ == "__main__":
    args = sys.argv[1:]
    run = main(
        args[0], args[1] if len(args) > 1 else "memory", int(args[2]) if len(args) > 2 else 7
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(run)
    else:
        uvloop.run(run)
