"""A client's view of a chain after it relocated (docs/protocol.md §8.5): an operation that started
before the relocation comes back with a view that ends before the adopted configuration; that
is not a divergence (found in review: it was reported as an InvariantViolation after the
operation had taken effect)."""

from __future__ import annotations

import pytest

from aresdsm.client import Store
from aresdsm.config import Configuration, ServerInfo
from aresdsm.errors import InvariantViolation
from aresdsm.protocol import ares

S = tuple(ServerInfo(f"s{i}", f"127.0.0.1:{7000 + i}") for i in range(3))
C0, C1, C5, X = (
    Configuration(cid, S, epoch=e) for cid, e in (("c0", 0), ("c1", 1), ("c5", 5), ("x", 1))
)
G = ares.CLUSTER_CHAIN


async def test_an_adopted_view_survives_an_older_disjoint_one() -> None:
    store = Store(C0)
    adopted = (ares.CseqEntry(C5, "F"),)
    store._learn(G, adopted)  # what relocate() leaves: later than anything known
    assert store.cseq() == adopted
    store._learn(G, (ares.CseqEntry(C0, "F"), ares.CseqEntry(C1, "F")))  # an older operation
    assert store.cseq() == adopted
    await store.close()


async def test_real_divergence_still_raises() -> None:
    store = Store(C0)
    store._learn(G, (ares.CseqEntry(C0, "F"), ares.CseqEntry(C1, "F")))
    with pytest.raises(InvariantViolation):
        store._learn(G, (ares.CseqEntry(C0, "F"), ares.CseqEntry(X, "F")))
    await store.close()
