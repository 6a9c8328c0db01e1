"""Tags: the version numbers of atomic registers (docs/protocol.md §2).

A tag is ``(z, writer)``: an integer and a writer id, ordered lexicographically with ``z`` first.
The initial tag ``TAG0 = (0, "")`` goes with the empty value. Writer ids must be unique per
*write ever made*: a client that runs several writes to one key at once gives each its own
writer id (:func:`writer_id`), otherwise two writes could pick the same tag for different values.
Operation numbers restart at 1 in every process, so a client name alone is not enough: two
processes that use one name (a restarted client, two copies of a script) would write different
values under one tag. Every client incarnation therefore adds a random incarnation suffix
(:func:`new_incarnation`) to its name; the writer id ``name~incarnation.op`` stays readable in
traces and histories.
"""

from __future__ import annotations

import secrets

import msgspec


class Tag(msgspec.Struct, frozen=True, order=True, array_like=True):
    """A register version ``(z, writer)``, compared lexicographically (``z`` first)."""

    z: int
    writer: str

    @property
    def deleted(self) -> bool:
        """This version is a tombstone: the object was deleted (:func:`tombstone_writer`)."""
        return self.writer.startswith(TOMBSTONE_MARK)

    def successor(self, writer: str) -> Tag:
        """The tag a writer that saw ``self`` as the maximum picks: ``(z + 1, writer)``."""
        return Tag(self.z + 1, writer)

    def __str__(self) -> str:
        return f"{self.z}:{self.writer}"


TAG0 = Tag(0, "")
"""The initial tag, paired with the empty value."""

TOMBSTONE_MARK = "\x01deleted "
"""Starts the writer id of a delete. A delete is an ordinary write (same two phases, same
quorums, a tag like any other: atomic with respect to every read and write) of the empty value
under a writer id that marks the version as a tombstone; a read that returns it reports the
object as absent. A client id may not start with the mark, so no real writer id does. (Not NUL:
servers refuse writer ids with NUL, which ends a TREAS record key's parts.)"""


def tombstone_writer(writer: str) -> str:
    """The writer id under which a delete is written (``Tag.deleted`` is then true)."""
    return TOMBSTONE_MARK + writer


def writer_id(client_id: str, op_seq: int, incarnation: str = "") -> str:
    """The writer id of operation number ``op_seq`` of incarnation ``incarnation`` of client
    ``client_id``: ``name~incarnation.op`` (unique per write). The simulator, whose client names
    are unique within a run, may leave the incarnation out."""
    if incarnation:
        return f"{client_id}~{incarnation}.{op_seq}"
    return f"{client_id}.{op_seq}"


def new_incarnation() -> str:
    """A random incarnation suffix (64 bits: two incarnations of one name never share one)."""
    return secrets.token_hex(8)
