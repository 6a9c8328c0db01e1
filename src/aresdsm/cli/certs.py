"""``ares certs``: the cluster CA and the certificates it issues (docs/security.md).

``ares cluster start`` makes a CA and the first certificates; this group issues more (servers,
clients with a role), lists them, and revokes one by adding its serial number (or name) to the
cluster's deny list, which servers re-read without a restart. Rotating the CA (``init
--force``) revokes everything at once: every certificate must then be issued again.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import click
from rich.markup import escape
from rich.table import Table

from ..config import load_cluster_file
from ..errors import ConfigurationError
from ..security.tls import ROLES
from .common import _default_cluster, console, main


def _ca_dir(ca_dir: str | None, cluster_path: str) -> Path:
    """The CA's directory: --ca-dir, else the one of the cluster file's [tls] ca."""
    if ca_dir is not None:
        return Path(ca_dir)
    cf = load_cluster_file(cluster_path, insecure=True)
    if cf.client.tls is None:
        raise ConfigurationError(f"{cluster_path} has no [tls] table; pass --ca-dir")
    return Path(cf.client.tls.ca).parent


ca_dir_option = click.option(
    "--ca-dir",
    type=click.Path(file_okay=False),
    help="Directory of ca.pem and ca.key (default: that of the cluster file's [tls] ca).",
)
cluster_option = click.option(
    "--cluster",
    "cluster_path",
    default=_default_cluster,
    show_default="$ARES_CLUSTER or ./ares-data/cluster.toml",
    help="Cluster file whose [tls] table names the CA.",
)
days_option = click.option(
    "--days", type=click.IntRange(1, 36500), default=825, show_default=True, help="Validity."
)


@main.group()
def certs() -> None:
    """Certificates: a cluster CA, server and client certificates (roles), revocation."""


@certs.command("init")
@click.option("--ca-dir", required=True, type=click.Path(file_okay=False))
@click.option("--name", default="aresdsm", show_default=True, help="Cluster name (in the CA).")
@click.option(
    "--force", is_flag=True, help="Replace an existing CA (rotation: reissue every certificate)."
)
def certs_init(ca_dir: str, name: str, force: bool) -> None:
    """Create a new cluster CA in CA_DIR (ca.pem, ca.key 0600)."""
    from ..security.certs import ADMIN_MAC_KEY, WRITE_MAC_KEY, create_ca

    got = create_ca(ca_dir, name, force=force)
    console.print(f"CA {got.cert} (key {got.key}, serial {got.serial})")
    console.print(
        f"admin MAC key {Path(ca_dir) / ADMIN_MAC_KEY}: for servers and admin clients only "
        "([tls] admin_key)"
    )
    console.print(
        f"write MAC key {Path(ca_dir) / WRITE_MAC_KEY}: for servers, writers and admins, never "
        "readers ([tls] write_key)"
    )


@certs.command("server")
@click.argument("server_id")
@click.option("--host", "hosts", multiple=True, help="Also name this host/IP (for tools).")
@click.option("--out", type=click.Path(file_okay=False), help="Default: the CA directory.")
@ca_dir_option
@cluster_option
@days_option
def certs_server(
    server_id: str,
    hosts: tuple[str, ...],
    out: str | None,
    ca_dir: str | None,
    cluster_path: str,
    days: int,
) -> None:
    """Issue a certificate for server SERVER_ID (add its cert/key to its [[servers]] entry)."""
    from ..security.certs import issue_server

    got = issue_server(
        _ca_dir(ca_dir, cluster_path), server_id, out_dir=out, hosts=hosts, days=days
    )
    console.print(f"server {escape(server_id)}: serial {got.serial}")
    console.print(f'  cert = "{got.cert}"\n  key = "{got.key}"')


@certs.command("client")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the client may do.")
@click.option("--out", type=click.Path(file_okay=False), help="Default: the CA directory.")
@ca_dir_option
@cluster_option
@days_option
def certs_client(
    name: str, role: str, out: str | None, ca_dir: str | None, cluster_path: str, days: int
) -> None:
    """Issue a client certificate for NAME with ROLE (read < write < admin)."""
    from ..security.certs import issue_client

    ca = _ca_dir(ca_dir, cluster_path)
    got = issue_client(ca, name, role, out_dir=out, days=days)
    console.print(f"client {escape(name)} (role {role}): serial {got.serial}")
    console.print("a cluster file for this client uses:")
    console.print(
        escape(f'[tls]\nca = "{ca / "ca.pem"}"\ncert = "{got.cert}"\nkey = "{got.key}"'),
    )


@certs.command("list")
@ca_dir_option
@cluster_option
def certs_list(ca_dir: str | None, cluster_path: str) -> None:
    """The certificates in the CA directory: identity, serial, expiry, revoked or not."""
    from ..security.certs import describe_cert
    from ..security.tls import CLIENT_URI, SERVER_URI, DenyList

    d = _ca_dir(ca_dir, cluster_path)
    try:
        deny_file = load_cluster_file(cluster_path, insecure=True).deny_file
    except ConfigurationError:
        deny_file = None
    deny = DenyList(deny_file or d / "denied.txt").entries()
    table = Table("file", "identity", "serial", "expires", "revoked")
    for p in sorted(d.glob("*.pem")):
        info = describe_cert(p)
        ident = " ".join(info.uris) or info.subject
        names = {
            unquote(u.split("=", 1)[1]).upper()
            for u in info.uris
            if u.startswith((CLIENT_URI, SERVER_URI))
        }
        revoked = "yes" if info.serial in deny or names & deny else ""
        table.add_row(
            p.name, escape(ident), info.serial, info.not_after.date().isoformat(), revoked
        )
    console.print(table)


@certs.command("revoke")
@click.argument("what")
@cluster_option
def certs_revoke(what: str, cluster_path: str) -> None:
    """Revoke a certificate: add its serial number (hex) or its client name / server id to the
    cluster's deny list. Servers re-read it within a second and close its connections."""
    cf = load_cluster_file(cluster_path)
    if cf.deny_file is None:
        raise ConfigurationError(f"{cluster_path}: [tls] has no deny_file")
    word = what.strip()
    if not word or any(c in word for c in "#\n\r"):
        raise click.BadParameter("give one serial number or name (no '#', no newline)")
    with open(cf.deny_file, "a", encoding="utf-8") as f:
        f.write(word + "\n")
    console.print(f"revoked {escape(word)} (deny list {cf.deny_file})")
