from __future__ import annotations

import pytest

from aresdsm.config import (
    Configuration,
    ServerInfo,
    dump_cluster_file,
    parse_address,
    parse_cluster,
    quorum_size,
    validate_configuration,
)
from aresdsm.errors import ConfigurationError
from aresdsm.tags import TAG0, Tag, writer_id


def test_tags_order_lexicographically_z_first() -> None:
    assert Tag(1, "a") < Tag(1, "b") < Tag(2, "") < Tag(10, "a")
    assert Tag(0, "a") > TAG0
    assert max([Tag(3, "x"), Tag(3, "y"), Tag(2, "z")]) == Tag(3, "y")
    assert Tag(4, "w").successor("me") == Tag(5, "me")


def test_writer_ids_unique_per_operation() -> None:
    assert writer_id("c", 1) != writer_id("c", 2)


@pytest.mark.parametrize(
    ("dap", "n", "k", "q"),
    [
        ("abd", 1, 1, 1),
        ("abd", 3, 1, 2),
        ("abd", 4, 1, 3),
        ("abd", 5, 1, 3),
        ("treas", 5, 3, 4),
        ("treas", 5, 1, 3),
        ("treas", 6, 2, 4),
        ("treas", 3, 3, 3),
    ],
)
def test_quorum_sizes(dap: str, n: int, k: int, q: int) -> None:
    assert quorum_size(dap, n, k) == q


def test_two_quorums_intersect_in_k_servers() -> None:
    for n in range(1, 12):
        for k in range(1, n + 1):
            q = quorum_size("treas", n, k)
            assert 2 * q - n >= k  # |Q1 ∩ Q2| >= k
            assert q <= n


def _servers(n: int) -> tuple[ServerInfo, ...]:
    return tuple(ServerInfo(f"s{i}", f"127.0.0.1:{7000 + i}") for i in range(n))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (Configuration("c", ()), "at least one server"),
        (
            Configuration("c", (ServerInfo("a", "h:1"), ServerInfo("a", "h:2"))),
            "duplicate server ids",
        ),
        (
            Configuration("c", (ServerInfo("a", "h:1"), ServerInfo("b", "h:1"))),
            "duplicate server addresses",
        ),
        (Configuration("c", _servers(3), dap="treas", k=4), "1 <= k <= n"),
        (Configuration("c", _servers(3), dap="treas", k=2, delta=-1), "delta >= 0"),
        (Configuration("", _servers(3)), "must not be empty"),
        (Configuration("c", (ServerInfo("a", "nohostport"),)), "host:port"),
    ],
)
def test_invalid_configurations_are_rejected(cfg: Configuration, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        validate_configuration(cfg)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_address("[::1]:9") == ("::1", 9)
    for bad in ["x", ":80", "h:0", "h:70000", "h:port"]:
        with pytest.raises(ConfigurationError):
            parse_address(bad)


def _cluster_dict() -> dict[str, object]:
    return {
        "cluster": {"insecure": True},
        "servers": [{"id": f"s{i}", "address": f"127.0.0.1:{7000 + i}"} for i in range(3)],
        "initial": {"id": "c0", "dap": "abd", "servers": ["s0", "s1", "s2"]},
        "client": {"timeout_s": 3},
    }


def test_cluster_file_round_trip() -> None:
    cf = parse_cluster(_cluster_dict())
    assert cf.initial.n == 3 and cf.client.timeout_s == 3.0
    import tomllib

    again = parse_cluster(tomllib.loads(dump_cluster_file(cf)))
    assert again.initial == cf.initial and again.servers == cf.servers


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("servers"), "at least one"),
        (lambda d: d["initial"].update(servers=["s0", "zz"]), "'zz' is not defined"),
        (lambda d: d["initial"].update(dap="raid"), "unknown DAP"),
        (lambda d: d["servers"][0].update(address="nowhere"), "host:port"),
        (lambda d: d["servers"][0].update(port=3), "unknown key"),
        (lambda d: d.update(bogus={}), "unknown table"),
        (lambda d: d["client"].update(timeout_s=-1), "positive"),
        (lambda d: d["client"].update(timeout_s="soon"), "client"),
        (
            lambda d: d["servers"].append({"id": "s0", "address": "127.0.0.1:1"}),
            "duplicate server ids",
        ),
        (lambda d: d["servers"][0].pop("id"), "missing required key 'id'"),
    ],
)
def test_bad_cluster_files_get_clear_errors(mutate: object, message: str) -> None:
    d = _cluster_dict()
    mutate(d)  # type: ignore[operator]
    with pytest.raises(ConfigurationError, match=message):
        parse_cluster(d)


def test_load_cluster_file_reports_toml_errors(tmp_path: object) -> None:
    from pathlib import Path

    from aresdsm.config import load_cluster_file

    p = Path(str(tmp_path)) / "bad.toml"
    p.write_text("[servers\n")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_cluster_file(p)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_cluster_file(Path(str(tmp_path)) / "missing.toml")


def test_configuration_size_limits() -> None:
    """A descriptor arrives from the network too: bounded in servers, and TREAS within what
    the coder handles (found in review: n = 33 was decided by consensus, then every operation
    of the group failed)."""
    from aresdsm.config import MAX_SERVERS, MAX_TREAS_N, ServerInfo, validate_configuration

    def servers(n: int) -> tuple[ServerInfo, ...]:
        return tuple(ServerInfo(f"s{i}", f"127.0.0.1:{1000 + i}") for i in range(n))

    from aresdsm import coding

    assert coding.MAX_N == MAX_TREAS_N  # config mirrors the coder's limit without importing it
    validate_configuration(Configuration("t", servers(MAX_TREAS_N), "treas", 3, 1))
    with pytest.raises(ConfigurationError, match="TREAS codes at most"):
        validate_configuration(Configuration("t", servers(MAX_TREAS_N + 1), "treas", 3, 1))
    validate_configuration(Configuration("a", servers(MAX_SERVERS)))
    with pytest.raises(ConfigurationError, match="at most"):
        validate_configuration(Configuration("a", servers(MAX_SERVERS + 1)))
