"""An in-memory, sequential fake of the Store calls the S3 gateway and the file layer use
(tests only, never src): coverable registers as docs/protocol.md §9.1 specifies them (a write
succeeds iff its base is the newest tag; a stale answer names the newest version) and plain
registers. Every call is counted, so a test can assert how many register operations an S3
request costs."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aresdsm.files import Files
from aresdsm.tags import TAG0, Tag


@dataclass(frozen=True)
class CvrResult:
    ok: bool
    tag: Tag
    value: bytes | None


class FakeStore:
    def __init__(self) -> None:
        self.regs: dict[tuple[str, str], tuple[Tag, bytes | None]] = {}
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, str]] = []
        """(call, key) in order."""
        self.n = 0
        self.files = Files(self)

    def _count(self, call: str, key: str) -> None:
        self.calls[call] += 1
        self.log.append((call, key))

    async def cvr_write(
        self, key: str, value: bytes, base: Tag, *, group: str = "default",
        timeout_s: float | None = None, fresh: bool = False,
    ) -> CvrResult:  # fmt: skip
        self._count("cvr_write", key)
        await asyncio.sleep(0)
        tag, cur = self.regs.get((group, key), (TAG0, None))
        if tag != base:
            return CvrResult(False, tag, cur)
        self.n += 1
        new = Tag(tag.z + 1, f"w{self.n}")
        self.regs[(group, key)] = (new, bytes(value))
        return CvrResult(True, new, bytes(value))

    async def read_tagged(
        self, key: str, *, group: str = "default", timeout_s: float | None = None
    ) -> tuple[Tag, bytes | None]:
        self._count("read_tagged", key)
        await asyncio.sleep(0)
        return self.regs.get((group, key), (TAG0, None))

    async def read(self, key: str, *, group: str = "default") -> bytes | None:
        self._count("read", key)
        await asyncio.sleep(0)
        return self.regs.get((group, key), (TAG0, None))[1]

    async def write(self, key: str, value: bytes, *, group: str = "default") -> None:
        self._count("write", key)
        await asyncio.sleep(0)
        tag, _ = self.regs.get((group, key), (TAG0, None))
        self.n += 1
        self.regs[(group, key)] = (Tag(tag.z + 1, f"w{self.n}"), bytes(value))

    async def delete(self, key: str, *, group: str = "default") -> None:
        self._count("delete", key)
        self.regs.pop((group, key), None)

    async def keys(
        self, prefix: str = "", *, group: str = "default", timeout_s: float | None = None
    ) -> list[str]:
        self._count("keys", prefix)
        return sorted(
            k for (g, k), (_, v) in self.regs.items()
            if g == group and k.startswith(prefix) and v is not None
        )  # fmt: skip

    async def list(self, prefix: str = "", *, group: str = "default") -> list[str]:
        return await self.keys(prefix, group=group)

    async def iter_keys(
        self, prefix: str = "", *, group: str = "default", verify: bool = True
    ) -> AsyncIterator[str]:
        for k in await self.keys(prefix, group=group):
            yield k

    async def groups(self) -> list[str]:
        return sorted({g for g, _ in self.regs})

    async def close(self) -> None:
        pass

    def reset_counts(self) -> None:
        self.calls.clear()
        self.log.clear()


def other_gateway_view(store: FakeStore) -> Any:
    """A second gateway over the same registers (its own caches), as another process."""
    from aresdsm.s3.objects import Gateway

    return Gateway(store, gc_delay_s=0.0)
