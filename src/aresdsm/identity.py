"""Who a cluster, a server and a data directory are (issue 10; docs/protocol.md §1, §13).

* A **cluster id** is made once, when a cluster is created (``ares cluster start``, or
  ``ares init`` for a hand-made cluster file), and kept in the cluster file's ``[cluster]`` table.
* Every server's **data directory** records, in ``identity.json`` (with a checksum), the cluster
  id, the server id, the digest of the initial configuration it was created with, and an
  **incarnation uid** made when the directory was created. A server never starts on a directory
  of another cluster or server id, nor on one created for another initial configuration; it
  starts on an empty directory only when told so (``--new initial`` / ``--new join``), because a
  server that lost its state must not answer for configurations whose quorums counted on it.
* Every client connection begins with a handshake (:class:`~aresdsm.wire.messages.Hello` /
  :class:`~aresdsm.wire.messages.Welcome`, in the transport): the client names the cluster, the
  server it expects, the initial configuration's digest, and -- when its configuration names
  one -- the incarnation; the server refuses a mismatch with one line and serves nothing.
* A configuration may name each member's incarnation (``ServerInfo.uid``): the reconfiguring
  client stamps new members with the uid they report (``Store.probe``), ``ares cluster start``
  writes the uids of the servers it creates into the cluster file. A re-created server then
  refuses to answer for those configurations, and clients refuse it in the handshake.

The initial-configuration digest leaves the uids out, so a cluster file that gains uids later
still matches the servers made from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import zlib
from pathlib import Path
from typing import Literal

import msgspec

from .config import Configuration, ServerInfo
from .errors import ConfigurationError
from .storage.sqlite import FILE_MODE, private_dir

IDENTITY_FILE = "identity.json"
PROTOCOL_VERSION = 2
"""Version of the wire protocol, checked in the handshake. 2: value digests are SHA-256
(:mod:`aresdsm.integrity`); 1: BLAKE2b-256."""
STATE_ENTRIES = ("state.sqlite3", "state.sqlite3-wal", "state.sqlite3-shm", "blobs")
"""What a data directory holds once a server stored anything (``server.log`` and the ready
file of local clusters do not count)."""
NewMember = Literal["initial", "join"]


class Identity(msgspec.Struct, frozen=True):
    cluster_id: str
    server_id: str
    incarnation: str
    initial_digest: str


class IdentityError(ConfigurationError):
    """A data directory, cluster file and server id that do not belong together."""


def new_cluster_id() -> str:
    return f"ares-{secrets.token_hex(8)}"


def new_uid() -> str:
    return secrets.token_hex(8)


def initial_digest(c: Configuration) -> str:
    """Digest of the initial configuration descriptor, without incarnation uids (and, for ABD,
    without k and δ, which it ignores and the cluster file does not record)."""
    k, delta = (c.k, c.delta) if c.dap == "treas" else (1, 0)
    servers = tuple(ServerInfo(s.id, s.address) for s in c.servers)
    bare = msgspec.structs.replace(c, servers=servers, k=k, delta=delta)
    return hashlib.sha256(msgspec.msgpack.encode(bare)).hexdigest()[:32]


def load_identity(data_dir: str | Path) -> Identity | None:
    """The identity recorded in a data directory (None: there is none). A damaged identity
    file is an IdentityError."""
    path = Path(data_dir) / IDENTITY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise IdentityError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        doc = json.loads(raw)
        body = doc["identity"]
        if zlib.crc32(json.dumps(body, sort_keys=True).encode()) != doc["crc32"]:
            raise ValueError("checksum mismatch")
        return msgspec.convert(body, Identity)
    except (ValueError, KeyError, TypeError, msgspec.ValidationError) as e:
        raise IdentityError(
            f"{path} is damaged ({e}): this data directory can no longer be trusted; "
            "replace the server by reconfiguration (docs/operations.md)"
        ) from None


def write_identity(data_dir: str | Path, identity: Identity) -> None:
    """Write identity.json durably (temporary file, fsync, rename, fsync the directory)."""
    d = Path(data_dir)
    private_dir(d)
    body = msgspec.to_builtins(identity)
    text = json.dumps(
        {"identity": body, "crc32": zlib.crc32(json.dumps(body, sort_keys=True).encode())},
        indent=1,
    )
    tmp = d / (IDENTITY_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(d / IDENTITY_FILE)
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def has_state(data_dir: str | Path) -> bool:
    d = Path(data_dir)
    for name in STATE_ENTRIES:
        p = d / name
        if p.is_dir():
            with contextlib.suppress(OSError):
                if any(p.iterdir()):
                    return True
        elif p.exists():
            return True
    return False


def create_identity(
    data_dir: str | Path, *, cluster_id: str, server_id: str, initial: Configuration
) -> Identity:
    """Stamp a new, empty data directory (a new incarnation of ``server_id``)."""
    ident = Identity(cluster_id, server_id, new_uid(), initial_digest(initial))
    write_identity(data_dir, ident)
    return ident


def open_data_dir(
    data_dir: str | Path,
    *,
    cluster_id: str,
    server_id: str,
    initial: Configuration,
    new: NewMember | None = None,
) -> Identity:
    """The identity a server may start with on ``data_dir``, or an IdentityError (one line)
    saying why not. ``new``: the operator says this is a new server (an initial member of the
    cluster, or one that will join by reconfiguration); only then is an empty directory used."""
    d = Path(data_dir)
    if not cluster_id:
        raise IdentityError(
            "the cluster file has no cluster id ([cluster] id): run `ares init --cluster FILE` "
            "once, when the cluster is created, and give every server and client that file"
        )
    ident = load_identity(d)
    digest = initial_digest(initial)
    if ident is not None:
        if ident.cluster_id != cluster_id:
            raise IdentityError(
                f"data directory {d} belongs to cluster {ident.cluster_id}, the cluster file "
                f"names cluster {cluster_id}: wrong cluster file or wrong directory"
            )
        if ident.server_id != server_id:
            raise IdentityError(
                f"data directory {d} belongs to server {ident.server_id}, not {server_id}: "
                "wrong --id or wrong --data-dir"
            )
        if ident.initial_digest != digest:
            raise IdentityError(
                f"data directory {d} was created with another initial configuration than the "
                "cluster file's [initial] table: the cluster file was edited or is another one"
            )
        return ident
    if has_state(d):
        raise IdentityError(
            f"data directory {d} holds server state but no {IDENTITY_FILE} (made by another "
            "aresdsm version, or the file was lost): it is not used"
        )
    if new is None:
        raise IdentityError(
            f"data directory {d} is empty: if {server_id} is a new server, start it once with "
            f"--new initial (a member of the initial configuration) or --new join (added later "
            f"by reconfiguration); if {server_id} lost its disk, it must not come back under "
            "its old id: add a new server by reconfiguration (docs/operations.md)"
        )
    member = initial.has_member(server_id)
    if new == "initial" and not member:
        raise IdentityError(
            f"--new initial: {server_id} is not in the initial configuration; use --new join"
        )
    if new == "join" and member:
        raise IdentityError(
            f"--new join: {server_id} is in the initial configuration, and server ids are never "
            "reused; a new server joins under a new id"
        )
    return create_identity(d, cluster_id=cluster_id, server_id=server_id, initial=initial)
