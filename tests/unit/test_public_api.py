"""The public API (issue 15 item 5): names exported, the sync client complete and typed, and
test-only ``broken_*`` switches out of the public help text."""

from __future__ import annotations

import inspect
import pydoc

import aresdsm


def test_public_names_are_exported() -> None:
    for name in ("ClientOptions", "ClientMetrics", "SyncStore", "connect_sync", "OpSwitches"):
        assert name in aresdsm.__all__ and hasattr(aresdsm, name)


def test_sync_store_has_everything_the_store_has() -> None:
    skip = {"relocate", "ping", "cseq", "mode", "configuration"}  # async-only internals
    store_api = {
        n
        for n, f in inspect.getmembers(aresdsm.Store)
        if not n.startswith("_") and n not in skip and inspect.iscoroutinefunction(f)
    }
    assert store_api <= set(dir(aresdsm.SyncStore)), store_api - set(dir(aresdsm.SyncStore))
    for name in store_api:
        sync_params = inspect.signature(getattr(aresdsm.SyncStore, name)).parameters
        async_params = inspect.signature(getattr(aresdsm.Store, name)).parameters
        assert list(sync_params) == list(async_params), name
        assert getattr(aresdsm.SyncStore, name).__doc__, name


def test_connect_sync_is_typed_like_connect() -> None:
    sync = inspect.signature(aresdsm.connect_sync).parameters
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in sync.values())
    assert set(inspect.signature(aresdsm.connect).parameters) <= set(sync)
    assert aresdsm.connect_sync.__doc__


def test_help_shows_no_test_only_switches() -> None:
    for obj in (
        aresdsm.Store,
        aresdsm.SyncStore,
        aresdsm.OpSwitches,
        aresdsm.connect,
        aresdsm.connect_sync,
        aresdsm,
    ):
        text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
        assert "broken_" not in text, obj
