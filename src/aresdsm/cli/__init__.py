"""The ``ares`` command line: a thin layer over the library (click + rich), one module per
command group; importing this package registers every command on :data:`main`."""

from __future__ import annotations

from . import certs, chaos, cluster, data, files, mount, s3, server, tools  # noqa: F401  (register the commands)
from .common import chain_cache_path, main


def _register_optional() -> None:
    try:
        from ..sim.command import sim
    except ImportError:  # pragma: no cover - the simulator ships with the package
        return
    main.add_command(sim)


_register_optional()

__all__ = ["chain_cache_path", "main"]
