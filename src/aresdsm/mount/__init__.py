"""``ares mount``: the large-object layer as a POSIX file system (FUSE; docs/mount.md).

Above the client and :mod:`aresdsm.files`; nothing in protocol/ or files/ imports it. pyfuse3 is
an optional dependency (install extra ``fuse``): it is imported only when a mount starts.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from ..errors import AresError
from .meta import Meta

__all__ = ["Meta", "serve"]


async def serve(
    store: Any,
    mountpoint: str,
    options: Any = None,
    *,
    allow_other: bool = False,
    fs_hook: Any = None,
) -> None:
    """Mount ``store``'s group at ``mountpoint`` and serve until unmounted (``ares umount``,
    ``fusermount3 -u``) or SIGTERM/SIGINT. pyfuse3 runs on this asyncio loop (its asyncio
    mode), the same loop as the Store."""
    import pyfuse3
    import pyfuse3.asyncio

    from .fs import AresFS, MountOptions

    pyfuse3.asyncio.enable()
    ops = AresFS(store, options or MountOptions())
    if fs_hook is not None:
        fs_hook(ops)
    fuse_options = set(pyfuse3.default_options) | {"fsname=ares", "subtype=ares"}
    if allow_other:
        fuse_options.add("allow_other")
    try:
        pyfuse3.init(ops, mountpoint, fuse_options)
    except RuntimeError as e:  # libfuse said no (not a directory, busy, no permission)
        raise AresError(f"cannot mount {mountpoint}: {e} (see the lines above)") from None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, pyfuse3.terminate)
    try:
        await pyfuse3.main()
        await ops.drain()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        pyfuse3.close(unmount=True)
