"""Event loop selection: uvloop when installed (the ``fast`` extra), else asyncio.

``ARES_EVENT_LOOP=asyncio`` in the environment forces the stdlib loop (tests run server processes
on both loops: their limits must hold on each)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def _uvloop_allowed() -> bool:
    return os.environ.get("ARES_EVENT_LOOP", "") != "asyncio"


def loop_name() -> str:
    if not _uvloop_allowed():
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """Run a coroutine to completion on a fresh event loop (uvloop if available and wanted)."""
    if use_uvloop and _uvloop_allowed():
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
