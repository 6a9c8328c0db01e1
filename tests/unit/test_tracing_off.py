"""Tracing off costs nothing: OpenTelemetry is not even imported (docs/protocol.md §12)."""

from __future__ import annotations

import subprocess
import sys


def test_operations_without_tracing_never_import_opentelemetry() -> None:
    code = """
import asyncio, sys
from aresdsm import tracing
from aresdsm.coding import ErasureCoder
from aresdsm.sim import run_simulation
assert run_simulation(3).ok
ErasureCoder(n=5, k=3).encode(b"x" * 1000)
assert not tracing.enabled()
assert tracing.span("x") is tracing.span("y")   # one shared no-op
assert tracing.inject() is None
assert not any(m.startswith("opentelemetry") for m in sys.modules), "imported"
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
