"""An in-memory fake of the two Store calls the files layer uses (tests only, never src).

Sequential coverable registers (docs/protocol.md §9.1): cvr_write succeeds iff its base is the
latest tag. Hooks let a test pause a write or lose a key, to force interleavings and faults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aresdsm.errors import OperationError, QuorumUnavailable
from aresdsm.tags import TAG0, Tag


@dataclass(frozen=True)
class FakeCvrResult:
    ok: bool
    tag: Tag
    value: bytes | None


class FakeStore:
    def __init__(self) -> None:
        self.regs: dict[tuple[str, str], tuple[Tag, bytes]] = {}
        self.n = 0
        self.writes: list[str] = []
        self.fresh_writes = 0
        self.reads: list[str] = []
        self.before_write: Callable[[str], Awaitable[None]] | None = None
        self.lost: set[str] = set()
        self.ambiguous_once: set[str] = set()

    async def cvr_write(
        self,
        key: str,
        value: bytes,
        base: Tag,
        *,
        group: str = "default",
        timeout_s=None,
        fresh: bool = False,
    ) -> FakeCvrResult:
        assert not fresh or base == TAG0
        if fresh:
            self.fresh_writes += 1
        if self.before_write is not None:
            await self.before_write(key)
        await asyncio.sleep(0)
        if key in self.lost:
            raise QuorumUnavailable(f"{key}: too many servers crashed")
        tag, cur = self.regs.get((group, key), (TAG0, None))
        if tag != base:
            return FakeCvrResult(False, tag, cur)
        self.n += 1
        new = Tag(tag.z + 1, f"w{self.n}")
        self.regs[(group, key)] = (new, bytes(value))
        self.writes.append(key)
        if key in self.ambiguous_once:
            self.ambiguous_once.discard(key)
            raise OperationError("ambiguous: may or may not have taken effect")
        return FakeCvrResult(True, new, None)

    async def read_tagged(
        self, key: str, *, group: str = "default", timeout_s=None
    ) -> tuple[Tag, bytes | None]:
        await asyncio.sleep(0)
        self.reads.append(key)
        if key in self.lost:
            raise QuorumUnavailable(f"{key}: too many servers crashed")
        return self.regs.get((group, key), (TAG0, None))

    async def keys(self, prefix: str = "", *, group: str = "default", timeout_s=None) -> list[str]:
        return sorted(k for g, k in self.regs if g == group and k.startswith(prefix))

    def live_blocks(self, name: str) -> list[str]:
        from aresdsm.files.codec import Dead, decode

        out = []
        for (_, k), (_, v) in self.regs.items():
            if k.startswith(f"file-block:{name}:") and not isinstance(decode(v), Dead):
                out.append(k)
        return out
