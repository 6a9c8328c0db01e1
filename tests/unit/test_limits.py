"""aresdsm.limits and aresdsm.serverlog: every limit has a name, a default and a validation; the
[server] table of the cluster file and the `ares server` options set them; the data directory is
private (0700, files 0600); logs are one line per event, text or JSON; GetStats' running totals
match a recount under any sequence of puts and garbage collection (issue 13 items 4, issue 15
item 4)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aresdsm.config import (
    ClusterFile,
    Configuration,
    ServerInfo,
    dump_cluster_file,
    load_cluster_file,
    parse_cluster,
)
from aresdsm.errors import ConfigurationError
from aresdsm.limits import MAX_KEY_FIELD_BYTES, MAX_NAME_BYTES, ServerLimits, name_too_long
from aresdsm.protocol import abd, treas
from aresdsm.protocol.server_core import ServerCore
from aresdsm.serverlog import BadInputLog, JsonFormatter, configure, quote, state_events
from aresdsm.storage import SqliteStorage
from aresdsm.storage.base import Record, RecordKey
from aresdsm.storage.memory import apply_batch
from aresdsm.tags import Tag
from aresdsm.wire import Blob
from aresdsm.wire.messages import NextEntry, WriteConfig


def test_defaults_are_valid_and_named_with_units() -> None:
    limits = ServerLimits()
    assert 16 <= limits.max_connections <= 10_000
    assert limits.frame_timeout_s == 60.0 and limits.idle_timeout_s == 300.0
    assert MAX_KEY_FIELD_BYTES == 2 * MAX_NAME_BYTES + 1  # room for group + NUL + key


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"max_connections": 0}, "max_connections must be at least 1"),
        ({"frame_timeout_s": -1}, "frame_timeout_s must be a positive number"),
        ({"idle_timeout_s": float("inf")}, "idle_timeout_s must be a positive number"),
        ({"max_conn_reply_bytes": "8M"}, "max_conn_reply_bytes must be an integer"),
        ({"max_conections": 5}, "unknown key(s) ['max_conections']"),
    ],
)
def test_bad_limits_are_one_line_errors(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        ServerLimits.from_table(table)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_server_table_of_the_cluster_file_round_trips(tmp_path: Path) -> None:
    cf = ClusterFile(
        servers=(ServerInfo("s1", "127.0.0.1:1"),),
        initial=Configuration("c0", (ServerInfo("s1", "127.0.0.1:1"),)),
        server_limits={"max_connections": 100, "frame_timeout_s": 5.0},
        insecure=True,
    )
    path = tmp_path / "cluster.toml"
    path.write_text(dump_cluster_file(cf))
    back = load_cluster_file(path)
    assert back.server_limits == {"max_connections": 100, "frame_timeout_s": 5.0}
    limits = ServerLimits.from_table(back.server_limits)
    assert limits.max_connections == 100 and limits.frame_timeout_s == 5.0
    with pytest.raises(ConfigurationError, match=r"\[server\]: unknown key"):
        parse_cluster(
            {
                "servers": [{"id": "s1", "address": "127.0.0.1:1"}],
                "initial": {},
                "server": {"nope": 1},
            }
        )


def test_name_limits_never_echo_the_name() -> None:
    assert name_too_long("object key", "k" * 1024, 1024) is None
    reason = name_too_long("object key", "k" * 1025, 1024)
    assert reason == "object key of 1025 bytes exceeds the limit of 1024 bytes"
    assert name_too_long("object key", "é" * 600, 1024) is not None  # bytes, not characters


def test_data_directory_and_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        ddir = tmp_path / "data"
        ddir.mkdir(mode=0o755)
        os.chmod(ddir, 0o755)  # an existing, world-readable directory is narrowed
        st = SqliteStorage(ddir / "state.sqlite3", blob_threshold_bytes=10)
        rec = abd_record("k", b"a value larger than the threshold")
        st._commit([rec])
        st.close()
    finally:
        os.umask(old)
    assert ddir.stat().st_mode & 0o777 == 0o700
    assert (ddir / "blobs").stat().st_mode & 0o777 == 0o700
    files = [p for p in ddir.rglob("*") if p.is_file()]
    assert any(p.parent.name == "blobs" for p in files)  # a value file was written
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {
        p.name: "0o600" for p in files
    }


def abd_record(key: str, value: bytes) -> Record:
    return Record("abd", "g", "c0", key, b"\x92\x01\xa1w", value)


def test_quote_escapes_and_truncates() -> None:
    q = quote("\x1b[31mred\n" + "A" * 1000, 16)
    assert "\n" not in q and "\x1b" not in q and q.endswith("(1009 chars)")
    assert len(q) < 60


def test_bad_input_log_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("aresdsm.test-bad-input")
    bad = BadInputLog(logger, per_s=0.001, burst=3)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(100):
            bad.warning("bad frame", "x" * 10_000)
    assert len(caplog.records) == 3 and bad.suppressed == 97
    assert all(len(r.getMessage()) < 200 for r in caplog.records)


def test_json_log_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure("info", "json")
        logger = logging.getLogger("aresdsm-test-json")
        logger.info("listening on %s", "127.0.0.1:1\nx")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
        lines = capsys.readouterr().err.splitlines()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert len(lines) == 2  # one line per event, even with a newline and a traceback
    first, second = (json.loads(x) for x in lines)
    assert first["level"] == "info" and first["msg"] == "listening on 127.0.0.1:1\nx"
    assert first["logger"] == "aresdsm-test-json" and first["ts"].endswith("Z")
    assert "ValueError: boom" in second["exc"]
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "m"})), str)


def test_reconfiguration_steps_are_named_from_the_writes() -> None:
    core = ServerCore("s1")
    c0 = Configuration("c0", (ServerInfo("s1", "127.0.0.1:1"),))
    c1 = Configuration("c1", (ServerInfo("s1", "127.0.0.1:1"),), epoch=1)
    writes = core.install_config(c0)
    _, w2 = core.handle(WriteConfig("g", "c0", NextEntry(c1, "F"), gc=True))
    _, w3 = core.handle(abd.put_request("g", "c0", "k", Tag(1, "w"), Blob(b"v")))
    events = [text for _, text in state_events([*writes, *w2, *w3])]
    assert events == [
        "installed configuration c0",
        "g/c0: successor c1 recorded, status F",
        "g/c0: garbage-collected (its successor is finalized)",
    ]


def _recount(core: ServerCore) -> tuple[int, dict[str, int]]:
    by: dict[str, int] = {}
    for (g, c, _), reg in core.registers.items():
        by[f"{g}/{c}"] = by.get(f"{g}/{c}", 0) + len(reg.value)
    for (g, c, _), lst in core.lists.items():
        by[f"{g}/{c}"] = by.get(f"{g}/{c}", 0) + treas.stored_bytes(lst)
    return sum(by.values()), by


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "put", "put", "gc"]),
            st.sampled_from(["g1", "g2"]),
            st.sampled_from(["a", "b", "c"]),
            st.integers(1, 6),
            st.integers(0, 50),
        ),
        max_size=40,
    )
)
def test_running_totals_match_a_recount(ops: list[tuple[str, str, str, int, int]]) -> None:
    s1 = ServerInfo("s1", "127.0.0.1:1")
    others = tuple(ServerInfo(f"s{i}", f"127.0.0.1:{i}") for i in range(2, 5))
    configs = [
        Configuration("c0", (s1,)),
        Configuration("t0", (s1, *others), dap="treas", k=2, delta=1),
    ]
    core = ServerCore("s1")
    disk: dict[RecordKey, Record] = {}
    for c in configs:
        apply_batch(disk, core.install_config(c))
    for op, group, key, z, size in ops:
        cfg = configs[z % 2]
        if op == "gc":
            _, writes = core.handle(WriteConfig(group, cfg.id, NextEntry(configs[0], "F"), gc=True))
        else:
            _, writes = core.handle(
                abd.put_request(group, cfg.id, key, Tag(z, "w"), Blob(b"x" * size))
            )
        apply_batch(disk, writes)
        total, by = _recount(core)
        stats = core.stats()
        assert stats.stored_bytes == total
        assert {k: v for k, v in stats.bytes_by_config.items() if v or k in by} == by
    # ... and recovery from the records rebuilds the same totals
    recovered = ServerCore.recover("s1", list(disk.values())).stats()
    assert (recovered.objects, recovered.stored_bytes) == (
        core.stats().objects,
        core.stats().stored_bytes,
    )


def test_cli_errors_stay_one_line_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    missing = tmp_path / ("a-rather-long-directory-name-" * 6) / "cluster.toml"
    p = subprocess.run(
        [sys.executable, "-m", "aresdsm", "get", "--cluster", str(missing), "k"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error:"), p.stderr
