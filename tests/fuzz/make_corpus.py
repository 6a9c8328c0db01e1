"""Writes the seed corpus of fuzz_server.py (tests/fuzz/corpus/): one file per request type,
well-formed frames naming the target's configurations, plus a few concatenations. Rerun after a
wire-format change: ``python tests/fuzz/make_corpus.py``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fuzz_server import ABD, CHAIN, TREAS, S

from aresdsm.config import Configuration
from aresdsm.tags import Tag
from aresdsm.wire import Blob, Encoder, Envelope
from aresdsm.wire.messages import (
    Accept,
    Ballot,
    BatchItem,
    Finalized,
    GetGroup,
    GetStats,
    InstallConfig,
    LatestConfig,
    ListChains,
    NextEntry,
    Ping,
    Pong,
    Prepare,
    PutBatch,
    PutData,
    QueryData,
    QueryList,
    QueryTag,
    ReadConfig,
    WriteConfig,
)

C1 = Configuration("c1", S[:2], epoch=1)
REQUESTS = [
    Ping(b"x"),
    QueryTag(CHAIN, "c0", "g\x00a"),
    QueryData(CHAIN, "c0", "g\x00a"),
    QueryList(CHAIN, "t0", "g\x00a"),
    PutData(CHAIN, "c0", "g\x00a", Tag(2, "w"), Blob(b"new")),
    PutData(CHAIN, "t0", "g\x00b", Tag(2, "w"), Blob(b"element")),
    PutBatch(
        CHAIN,
        "c0",
        (
            BatchItem("g\x00x", Tag(1, "w"), Blob(b"1")),
            BatchItem("g\x00y", Tag(1, "w"), Blob(b"22")),
        ),
    ),
    GetGroup(CHAIN, "c0", after="", limit=10),
    GetGroup(CHAIN, "c0", after="", limit=5, set_next=NextEntry(C1, "P")),
    ListChains(prefix="", after="", limit=10),
    ReadConfig(CHAIN, "c0"),
    WriteConfig(CHAIN, "c0", NextEntry(C1, "P"), gc=False),
    WriteConfig(CHAIN, "c0", NextEntry(C1, "F"), gc=True),
    Prepare(CHAIN, "c0", Ballot(1, "p")),
    Accept(CHAIN, "c0", Ballot(1, "p"), C1),
    InstallConfig(C1),
    LatestConfig(CHAIN),
    Finalized(CHAIN, NextEntry(C1, "F")),
    GetStats(),
    Pong(b"not a request"),
    PutData(CHAIN, TREAS.id, "k" * 3000, Tag(1, "w"), Blob(b"long key")),
]


def main() -> None:
    out = Path(__file__).with_name("corpus")
    out.mkdir(exist_ok=True)
    enc = Encoder()
    frames = [enc.encode_bytes(Envelope(i + 1, r)) for i, r in enumerate(REQUESTS)]
    seeds = [*frames, b"".join(frames[4:7]) + frames[2], b"".join(frames[11:16]) + frames[1]]
    seeds.append(frames[0][:7])  # an incomplete frame
    for seed in seeds:
        (out / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)
    assert ABD.id == "c0"


if __name__ == "__main__":
    main()
