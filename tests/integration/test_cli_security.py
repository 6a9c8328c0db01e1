"""Secure by default, from the command line (docs/security.md): ``ares cluster start`` makes a CA
and certificates and a cluster file that uses them; ``ares certs`` issues a read-only client that
can read but not write; revoking it by name takes effect without a restart; plaintext needs
``--insecure``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from test_cli import ares

pytestmark = pytest.mark.slow


def test_secure_cluster_certs_roles_and_revocation(tmp_path: Path) -> None:
    r = ares("cluster", "start", "-n", "3", "--dir", "data", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    try:
        cluster = tmp_path / "data" / "cluster.toml"
        text = cluster.read_text()
        assert "[tls]" in text and "insecure" not in text
        certs = tmp_path / "data" / "certs"
        assert stat.S_IMODE(certs.stat().st_mode) == 0o700
        assert stat.S_IMODE((certs / "ca.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((certs / "write-mac.key").stat().st_mode) == 0o600
        assert "write_key" in text  # the admin's file: servers, writers and admins hold it
        r = ares("put", "greeting", "hello", "--cluster", str(cluster), cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode()

        r = ares(
            "certs", "client", "bob", "--role", "read", "--cluster", str(cluster), cwd=tmp_path
        )
        assert r.returncode == 0, r.stderr.decode()
        bob = tmp_path / "bob.toml"
        bob.write_text(
            text.replace("client-admin.pem", "client-bob.pem").replace(
                "client-admin.key", "client-bob.key"
            )
        )
        r = ares("get", "greeting", "--cluster", str(bob), cwd=tmp_path)
        assert r.returncode == 0 and r.stdout == b"hello", r.stderr.decode()
        r = ares("put", "greeting", "evil", "--cluster", str(bob), cwd=tmp_path)
        assert r.returncode == 1 and b"unauthorized" in r.stderr, r.stderr.decode()
        r = ares("status", "--cluster", str(bob), cwd=tmp_path)
        assert b"unauthorized" in r.stdout + r.stderr

        r = ares("certs", "list", "--cluster", str(cluster), cwd=tmp_path)
        assert r.returncode == 0 and b"client-bob.pem" in r.stdout, r.stderr.decode()
        r = ares("certs", "revoke", "bob", "--cluster", str(cluster), cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode()
        r = ares("get", "greeting", "--cluster", str(bob), cwd=tmp_path)
        assert r.returncode == 1, r.stdout
        r = ares("get", "greeting", "--cluster", str(cluster), cwd=tmp_path)
        assert r.returncode == 0 and r.stdout == b"hello"
        audit = (tmp_path / "data" / "s1" / "audit.log").read_text()
        assert '"outcome": "unauthorized"' in audit and "bob (role read" in audit
    finally:
        r = ares("cluster", "stop", "--dir", "data", cwd=tmp_path)
        assert r.returncode == 0, r.stderr.decode()


def test_plaintext_needs_insecure(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[[servers]]\nid = "s1"\naddress = "127.0.0.1:1"\n[initial]\n')
    r = ares("get", "k", "--cluster", str(f), cwd=tmp_path)
    assert r.returncode == 1 and b"no [tls] table" in r.stderr, r.stderr.decode()
    r = ares("server", "--id", "s1", "--cluster", str(f), "--data-dir", "d", cwd=tmp_path)
    assert r.returncode == 1 and b"no [tls] table" in r.stderr, r.stderr.decode()


def test_certs_init_and_server_and_a_server_without_its_certificate(tmp_path: Path) -> None:
    r = ares("certs", "init", "--ca-dir", "ca", "--name", "prod", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "ca" / "ca.pem").exists() and (tmp_path / "ca" / "admin-mac.key").exists()
    assert (tmp_path / "ca" / "write-mac.key").exists()
    r = ares("certs", "init", "--ca-dir", "ca", cwd=tmp_path)
    assert r.returncode == 1 and b"already exists" in r.stderr  # never overwritten silently
    r = ares("certs", "server", "s1", "--host", "10.0.0.11", "--ca-dir", "ca", cwd=tmp_path)
    assert r.returncode == 0 and b"serial" in r.stdout, r.stderr.decode()
    r = ares("certs", "client", "x", "--role", "root", "--ca-dir", "ca", cwd=tmp_path)
    assert r.returncode == 2  # click refuses the unknown role
    f = tmp_path / "c.toml"
    f.write_text(
        '[tls]\nca = "ca/ca.pem"\ncert = "ca/server-s1.pem"\nkey = "ca/server-s1.key"\n'
        '[[servers]]\nid = "s1"\naddress = "127.0.0.1:1"\n'
        'cert = "ca/server-s1.pem"\nkey = "ca/server-s1.key"\n'
        '[[servers]]\nid = "s2"\naddress = "127.0.0.1:2"\n[initial]\nservers = ["s1"]\n'
    )
    r = ares("server", "--id", "s2", "--cluster", str(f), "--data-dir", "d", cwd=tmp_path)
    assert r.returncode != 0 and b"no cert/key for server 's2'" in r.stderr, r.stderr.decode()


def test_insecure_cluster_on_request(tmp_path: Path) -> None:
    r = ares("cluster", "start", "-n", "1", "--insecure", "--dir", "data", cwd=tmp_path)
    assert r.returncode == 0 and b"plaintext" in r.stdout, r.stderr.decode()
    try:
        cluster = str(tmp_path / "data" / "cluster.toml")
        assert "insecure = true" in Path(cluster).read_text()
        assert not (tmp_path / "data" / "certs").exists()
        assert ares("put", "k", "v", "--cluster", cluster, cwd=tmp_path).returncode == 0
        r = ares("get", "k", "--cluster", cluster, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout == b"v"
    finally:
        assert ares("cluster", "stop", "--dir", "data", cwd=tmp_path).returncode == 0
    log = (tmp_path / "data" / "s1" / "server.log").read_text()
    assert "plaintext" in log.lower()
