"""The server core's per-request checks made cheaper (issue 18) answer exactly as the full
checks did: names are checked per request type with one length sum for the common case, and a
configuration's membership and incarnation checks are made once per configuration -- while a
configuration damaged later is refused again, and refused configurations are never remembered."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aresdsm.config import Configuration, ServerInfo
from aresdsm.limits import MAX_CONFIG_ID_BYTES, MAX_GROUP_BYTES, MAX_KEY_FIELD_BYTES, name_too_long
from aresdsm.protocol import server_core
from aresdsm.protocol.server_core import CFG_NS, ServerCore, _bad_names
from aresdsm.storage.base import DamagedRecord
from aresdsm.tags import Tag
from aresdsm.wire.blob import Blob
from aresdsm.wire.messages import (
    BatchItem,
    ErrorReply,
    GetGroup,
    ListChains,
    ListKeys,
    PutBatch,
    QueryTag,
    ReadConfig,
    Request,
    TagReply,
)

CFG = Configuration("c0", tuple(ServerInfo(f"s{i}", f"h:{i}", "") for i in (1, 2, 3)))


def _reference(req: Request) -> str | None:
    """The checks as they were before issue 18: every name field of any request, one by one."""
    for name, what, max_bytes in server_core._NAME_FIELDS:
        value = getattr(req, name, None)
        if isinstance(value, str):
            reason = name_too_long(what, value, max_bytes)
            if reason is not None:
                return reason
    if isinstance(req, PutBatch):
        for item in req.items:
            reason = name_too_long("object key", item.key, MAX_KEY_FIELD_BYTES)
            if reason is not None:
                return reason
    return None


def _reason(req: Request) -> str | None:
    bad = _bad_names(req)
    return None if bad is None else bad.message


_NAME = st.one_of(
    st.text(max_size=8),
    st.builds(lambda c, n: c * n, st.sampled_from("ké\U0001f600"), st.integers(0, 2100)),
)


@given(_NAME, _NAME, _NAME, _NAME)
def test_name_checks_answer_as_the_field_by_field_checks(a: str, b: str, c: str, d: str) -> None:
    for req in (
        QueryTag(a, b, c),
        ReadConfig(a, b),
        GetGroup(a, b, c, 10),
        ListKeys(a, b, c, d, 10),
        ListChains(a, b, 10),
        PutBatch(
            a, b, (BatchItem(c, Tag(1, "w"), Blob(b"")), BatchItem(d, Tag(1, "w"), Blob(b"")))
        ),
    ):
        assert _reason(req) == _reference(req), req


def test_each_name_field_is_checked_at_its_own_limit() -> None:
    assert _bad_names(QueryTag("g" * MAX_GROUP_BYTES, "c", "k")) is None
    assert _bad_names(QueryTag("g" * (MAX_GROUP_BYTES + 1), "c", "k")) is not None
    assert _bad_names(QueryTag("g", "c" * (MAX_CONFIG_ID_BYTES + 1), "k")) is not None
    assert _bad_names(QueryTag("g", "c", "k" * MAX_KEY_FIELD_BYTES)) is None
    assert _bad_names(QueryTag("g", "c", "k" * (MAX_KEY_FIELD_BYTES + 1))) is not None
    assert _bad_names(QueryTag("g", "c", "é" * (MAX_KEY_FIELD_BYTES // 2 + 1))) is not None
    assert _bad_names(ListChains("p" * (MAX_KEY_FIELD_BYTES + 1), "", 10)) is not None
    assert _bad_names(ListKeys("g", "c", "", "a" * (MAX_KEY_FIELD_BYTES + 1), 10)) is not None


def _core(incarnation: str = "") -> ServerCore:
    core = ServerCore("s1", incarnation=incarnation)
    core.install_config(CFG)
    return core


def _code(reply: object) -> str:
    return reply.code if isinstance(reply, ErrorReply) else type(reply).__name__


def test_a_configuration_damaged_after_it_was_served_is_refused() -> None:
    core = _core()
    assert isinstance(core.handle(QueryTag("g", "c0", "k"))[0], TagReply)
    assert isinstance(core.handle(QueryTag("g", "c0", "k"))[0], TagReply)  # (remembered)
    core.mark_damaged(DamagedRecord(CFG_NS, "", "c0", "", None, "checksum mismatch"))
    assert _code(core.handle(QueryTag("g", "c0", "k"))[0]) == "damaged"
    assert _code(core.handle(QueryTag("g", "c0", "k"))[0]) == "damaged"


def test_refused_configurations_are_refused_every_time() -> None:
    core = _core()
    other = Configuration("c9", (ServerInfo("s7", "h:7"),))
    core.install_config(other)  # (known, but s1 is not a member)
    for _ in range(2):
        assert _code(core.handle(QueryTag("g", "c9", "k"))[0]) == "not-member"
        assert _code(core.handle(QueryTag("g", "nope", "k"))[0]) == "unknown-config"
    recreated = ServerCore("s1", incarnation="new-uid")
    named = Configuration("c1", (ServerInfo("s1", "h:1", "old-uid"),))
    recreated.install_config(named)
    for _ in range(2):
        assert _code(recreated.handle(QueryTag("g", "c1", "k"))[0]) == "wrong-incarnation"
    assert not recreated._served and "c9" not in core._served


def test_request_types_skipped_by_the_audit_check_are_never_admin_operations() -> None:
    """The shell skips ``is_admin_operation`` for the types in ``_NEVER_AUDITED``: each must need
    less than admin by its type alone (a type missing from REQUIRED counts as admin)."""
    from aresdsm.security.roles import REQUIRED
    from aresdsm.server import _NEVER_AUDITED, _REQUEST_TYPES
    from aresdsm.wire.messages import WriteConfig

    assert WriteConfig not in _NEVER_AUDITED
    for kind in _NEVER_AUDITED:
        assert REQUIRED.get(kind, "admin") != "admin", kind
    admin_types = {k for k in _REQUEST_TYPES if REQUIRED.get(k, "admin") == "admin"}
    assert admin_types and not admin_types & _NEVER_AUDITED
