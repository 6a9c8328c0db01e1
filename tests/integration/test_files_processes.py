"""Fragmented files (docs/protocol.md §9.2) on real server processes: round trips on ABD and
TREAS, small edits, a reconfiguration in the middle of a file write, a block lost beyond the
failure budget, a writer killed between writing blocks and linking them, classic mode (one
chain per block), the CLI with a local disk too small, and the fsspec filesystem with pandas."""

from __future__ import annotations

import asyncio
import random
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aresdsm.client import Store
from aresdsm.config import ClientOptions, Configuration
from aresdsm.errors import OperationError
from aresdsm.files import ChunkParams, Files
from aresdsm.files.codec import Dead, decode
from aresdsm.local import LocalCluster
from aresdsm.protocol import ops

pytestmark = pytest.mark.slow

P = ChunkParams(min_bytes=4096, avg_bytes=16384, max_bytes=65536)


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with tempfile.TemporaryDirectory(prefix="ares-files-") as tmp:
        lc = LocalCluster.create(Path(tmp) / "c", n=3, spares=2, timeout_s=5.0)
        lc.start_all()
        try:
            yield lc
        finally:
            lc.stop()


def store(lc: LocalCluster, **kw: object) -> Store:
    return Store(
        lc.cluster.initial, options=lc.cluster.client, known_servers=lc.cluster.servers, **kw
    )  # type: ignore[arg-type]


async def test_round_trip_edit_list_stat_delete(cluster: LocalCluster) -> None:
    async with store(cluster) as s:
        data = bytearray(blob(600_000))
        await s.files.write("dir/a.bin", bytes(data), params=P)
        assert await s.files.read("dir/a.bin") == bytes(data)
        st = await s.files.stat("dir/a.bin")
        assert st.size_bytes == len(data) and st.blocks >= 10 and st.configuration == "c0"
        files: Files = s.files
        before = files.blocks_written
        data[300_000:301_024] = blob(1024, 2)  # 1 KiB in the middle
        await s.files.write("dir/a.bin", bytes(data))
        assert await s.files.read("dir/a.bin") == bytes(data)
        assert files.blocks_written - before <= 12  # journal, new, marks, link, tombstones
        got = [p async for p in s.files.read_range("dir/a.bin", 299_000, 4000)]
        assert b"".join(got) == bytes(data[299_000:303_000])
        async with s.files.open("dir/a.bin") as h:
            h.seek(len(data) - 10)
            assert await h.read(100) == bytes(data[-10:])
        await s.files.write("empty", b"")
        assert await s.files.read("empty") == b""
        assert await s.files.list() == ["dir/a.bin", "empty"]
        await s.files.delete("dir/a.bin")
        assert await s.files.list() == ["empty"]
        keys = await s.keys("file-block:dir/a.bin:")
        for k in keys:
            _, v = await s.read_tagged(k)
            assert isinstance(decode(v), Dead)


async def test_reconfiguration_in_the_middle_of_a_file_write(cluster: LocalCluster) -> None:
    servers = cluster.cluster.servers
    async with store(cluster) as s, store(cluster) as admin:
        data = blob(2_000_000, 3)
        real = s.cvr_write
        calls = 0
        go_on = asyncio.Event()
        midway = asyncio.Event()

        async def paced(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 10:  # some blocks written, most not: the reconfiguration starts now
                midway.set()
                await go_on.wait()
            return await real(*args, **kwargs)

        s.cvr_write = paced  # type: ignore[method-assign]
        task = asyncio.ensure_future(s.files.write("moving", data, params=P))
        await midway.wait()
        c1 = Configuration("c1", servers[2:5])
        reconf = asyncio.ensure_future(admin.reconfigure(c1))
        await asyncio.sleep(0.05)
        go_on.set()  # the write goes on while the reconfiguration runs
        assert (await reconf).id == "c1"
        await task
        assert calls > 20
        assert await s.files.read("moving") == data
    async with store(cluster) as fresh:
        assert await fresh.files.read("moving") == data
        assert (await fresh.files.stat("moving")).configuration == "c1"


async def test_block_lost_beyond_the_failure_budget_is_a_clear_error(
    cluster: LocalCluster,
) -> None:
    async with store(cluster) as s:
        await s.files.write("fragile", blob(200_000), params=P)
    cluster.kill("s1")
    cluster.kill("s2")
    opts = ClientOptions(timeout_s=1.0, connect_timeout_s=0.3)
    async with Store(cluster.cluster.initial, options=opts) as s:
        with pytest.raises(OperationError):
            await s.files.read("fragile")


WRITER = textwrap.dedent(
    """
    import asyncio, os, random, sys
    from aresdsm.client import connect
    from aresdsm.files import ChunkParams
    from aresdsm.files.layer import Files

    async def die(*args, **kwargs):
        os.kill(os.getpid(), 9)  # killed after its blocks are written, before any link

    Files._link = die
    async def main():
        async with connect(sys.argv[1]) as s:
            data = bytearray(random.Random(1).randbytes(300_000))
            data[150_000:150_000] = random.Random(7).randbytes(100_000)
            await s.files.write("killed", bytes(data))
    asyncio.run(main())
    """
)


async def test_writer_killed_between_blocks_and_link(cluster: LocalCluster) -> None:
    base = blob(300_000)
    async with store(cluster) as s:
        await s.files.write("killed", base, params=P)
        live = set(await s.keys("file-block:killed:"))
    r = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", WRITER, str(cluster.cluster_path)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    async with store(cluster) as s:
        orphans = set(await s.keys("file-block:killed:")) - live
        assert orphans  # written, never linked
        assert await s.files.read("killed") == base  # no dangling pointer, no torn read
        assert await s.files.collect("killed", grace_s=0) == len(orphans)
        for k in orphans:
            _, v = await s.read_tagged(k)
            assert isinstance(decode(v), Dead)
        assert await s.files.read("killed") == base


async def test_classic_mode_one_chain_per_block(cluster: LocalCluster) -> None:
    classic = ops.OpSwitches(piggyback=False, batch=False, gc=False)
    servers = cluster.cluster.servers
    async with store(cluster, switches=classic) as s:
        data = blob(150_000, 5)
        await s.files.write("old-style", data, params=P)
        blocks = (await s.files.stat("old-style")).blocks
        keys = ["file:old-style", *await s.keys("file-block:old-style:")]
        assert len(keys) == blocks + 1
        c1 = Configuration("c1", servers[1:4])
        assert (await s.reconfigure(c1, keys=keys, concurrency=4)).id == "c1"
        assert await s.files.read("old-style") == data


def ares(
    *args: str, cwd: Path, limit_bytes: int | None = None, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    def limit() -> None:
        if limit_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        [sys.executable, "-m", "aresdsm", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
        preexec_fn=limit,
    )


def test_cli_put_get_ls_stat_rm_and_a_full_local_disk(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    c = ("--cluster", str(cluster.cluster_path))
    src = tmp_path / "in.bin"
    src.write_bytes(blob(3_000_000, 4))
    r = ares("file", "put", str(src), "docs/in.bin", "--avg-kib", "64", *c, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr == b""  # quiet when not on a terminal
    r = ares("file", "get", "docs/in.bin", str(tmp_path / "out.bin"), *c, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    r = ares("file", "get", "docs/in.bin", "-", *c, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == src.read_bytes()
    assert ares("file", "ls", *c, cwd=tmp_path).stdout.split() == [b"docs/in.bin"]
    r = ares("file", "stat", "docs/in.bin", *c, cwd=tmp_path)
    assert r.returncode == 0 and b"3000000 bytes" in r.stdout
    # a local disk too small (a file-size limit stands in for a full disk): one clear line,
    # no torn output file left behind
    r = ares(
        "file",
        "get",
        "docs/in.bin",
        str(tmp_path / "small.bin"),
        *c,
        cwd=tmp_path,
        limit_bytes=1_000_000,
    )
    assert r.returncode == 1
    assert b"error:" in r.stderr and b"Traceback" not in r.stderr
    assert not (tmp_path / "small.bin").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".small")] == []
    r = ares("file", "put", str(tmp_path / "nope"), "x", *c, cwd=tmp_path)
    assert r.returncode == 1 and b"error:" in r.stderr
    r = ares("file", "put", str(src), "bad//name", *c, cwd=tmp_path)
    assert r.returncode == 1 and b"error:" in r.stderr
    r = ares("file", "get", "missing", "-", *c, cwd=tmp_path)
    assert r.returncode == 1 and b"no file" in r.stderr
    # change part of the file in place, from a file and from stdin; read ranges back
    want = bytearray(src.read_bytes())
    (tmp_path / "patch.bin").write_bytes(b"P" * 1024)
    r = ares("file", "write-at", "docs/in.bin", "1500000", "patch.bin", *c, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
    want[1_500_000:1_501_024] = b"P" * 1024
    r = ares("file", "write-at", "docs/in.bin", "3000000", "-", *c, cwd=tmp_path, stdin=b"tail")
    assert r.returncode == 0, r.stderr.decode()
    want += b"tail"
    r = ares(
        "file",
        "get",
        "docs/in.bin",
        "-",
        "--offset",
        "1499990",
        "--length",
        "1044",
        *c,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and r.stdout == bytes(want[1_499_990:1_501_034])
    r = ares(
        "file",
        "get",
        "docs/in.bin",
        str(tmp_path / "t.bin"),
        "--offset",
        "2999999",
        *c,
        cwd=tmp_path,
    )
    assert r.returncode == 0 and (tmp_path / "t.bin").read_bytes() == bytes(want[2_999_999:])
    assert ares("file", "get", "docs/in.bin", "-", *c, cwd=tmp_path).stdout == bytes(want)
    r = ares("file", "write-at", "docs/in.bin", "9000000", "patch.bin", *c, cwd=tmp_path)
    assert r.returncode == 1 and b"past the end" in r.stderr and b"Traceback" not in r.stderr
    assert ares("file", "rm", "docs/in.bin", *c, cwd=tmp_path).returncode == 0
    assert ares("file", "ls", *c, cwd=tmp_path).stdout == b""


def test_fsspec_and_pandas(cluster: LocalCluster) -> None:
    import fsspec
    import pandas as pd

    opts = {"cluster": str(cluster.cluster_path)}
    df = pd.DataFrame({"x": range(1000), "y": [f"v{i}" for i in range(1000)]})
    df.to_csv("ares://data/x.csv", index=False, storage_options=opts)
    back = pd.read_csv("ares://data/x.csv", storage_options=opts)
    assert back.equals(df)
    with fsspec.open("ares://data/raw.bin", "wb", **opts) as f:
        f.write(b"\x00\x01" * 50_000)
    with fsspec.open("ares://data/raw.bin", "rb", **opts) as f:
        assert f.read() == b"\x00\x01" * 50_000
    fs = fsspec.filesystem("ares", **opts)
    assert sorted(fs.ls("data", detail=False)) == ["data/raw.bin", "data/x.csv"]
    assert fs.info("data/raw.bin")["size"] == 100_000
    assert fs.cat_file("data/raw.bin", 3, 7) == b"\x01\x00\x01\x00"
    assert fs.cat_file("data/raw.bin", -3) == b"\x01\x00\x01"
    assert fs.cat_file("data/raw.bin", 99_998, 200_000) == b"\x00\x01"
    assert fs.info("data")["type"] == "directory"
    fs.rm("data/raw.bin")
    assert fs.ls("data", detail=False) == ["data/x.csv"]
    with pytest.raises(FileNotFoundError):
        fs.info("data/raw.bin")
