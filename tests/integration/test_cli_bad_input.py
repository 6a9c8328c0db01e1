"""Bad cluster files and command lines give one clear line and exit code 1, never a traceback
(the `ares` CLI run as a subprocess; these cases were found in review)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

SERVERS = """
[cluster]
insecure = true
[[servers]]
id = "s1"
address = "127.0.0.1:{port}"
[[servers]]
id = "s2"
address = "127.0.0.1:{port2}"
"""


def _ares(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aresdsm", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def _clean_failure(p: subprocess.CompletedProcess[str]) -> None:
    out = p.stdout + p.stderr
    assert "Traceback" not in out, out[-1500:]
    assert p.returncode == 1, (p.returncode, out[-800:])


@pytest.mark.parametrize(
    ("name", "tail"),
    [
        ("k_not_int", '[initial]\ndap = "treas"\nk = "abc"\n'),
        ("k_list", '[initial]\ndap = "treas"\nk = [1]\n'),
        ("delta_not_int", '[initial]\ndap = "treas"\ndelta = "x"\n'),
        ("timeout_nan", "[initial]\n[client]\ntimeout_s = nan\n"),
        ("connect_timeout_nan", "[initial]\n[client]\nconnect_timeout_s = nan\n"),
        ("k_float", '[initial]\ndap = "treas"\nk = 1.9\n'),
        ("timeout_inf", "[initial]\n[client]\ntimeout_s = inf\n"),
        ("frame_zero", "[initial]\n[client]\nmax_frame_bytes = 0\n"),
    ],
)
def test_bad_cluster_file_values(tmp_path: Path, name: str, tail: str) -> None:
    f = tmp_path / f"{name}.toml"
    f.write_text(SERVERS.format(port=1, port2=2) + tail)
    _clean_failure(_ares("put", "k", "v", "--cluster", str(f)))


def test_non_utf8_cluster_file(tmp_path: Path) -> None:
    f = tmp_path / "latin1.toml"
    f.write_bytes(b'[[servers]]\nid = "s\xe9"\naddress = "127.0.0.1:1"\n[initial]\n')
    _clean_failure(_ares("status", "--cluster", str(f)))


def test_error_message_keeps_the_table_name(tmp_path: Path) -> None:
    """The message names the table, but rich renders '[initial]' / '[[servers]]' / '[client]' in
    the message as markup and drops them: 'missing  table', ': unknown key(s)', '[] entry 1'."""
    f = tmp_path / "c.toml"
    f.write_text(SERVERS.format(port=1, port2=2))  # no [initial]
    p = _ares("status", "--cluster", str(f))
    assert "[initial]" in p.stderr, p.stderr


def test_server_whose_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        f = tmp_path / "c.toml"
        f.write_text(
            SERVERS.format(port=port, port2=port + 1 if port < 65535 else 1) + "[initial]\n"
        )
        _clean_failure(
            _ares("server", "--id", "s1", "--cluster", str(f), "--data-dir", str(tmp_path / "d"))
        )


def test_server_with_unresolvable_listen_host(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(SERVERS.format(port=1, port2=2) + "[initial]\n")
    _clean_failure(
        _ares(
            "server",
            "--id",
            "s1",
            "--cluster",
            str(f),
            "--data-dir",
            str(tmp_path / "d"),
            "--listen",
            "no-such-host.invalid:7400",
        )
    )
