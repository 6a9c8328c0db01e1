"""``ares s3 serve``: one gateway process -- a Store connected to the cluster, the aiohttp
application on ``--listen`` (HTTP, or HTTPS with ``--tls-cert``/``--tls-key``: TLS belongs to
the transport, the S3 rules do not see it), Prometheus metrics on ``--metrics-address``;
stopped by SIGINT or SIGTERM, after which the data files waiting for their deletion delay are
deleted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..config import parse_address
from ..errors import ConfigurationError
from ..metrics import ClientMetrics
from .app import MAX_STREAMS, S3App, S3Metrics
from .objects import BLOCKS_IN_FLIGHT, Gateway
from .sigv4 import KeyRing

log = logging.getLogger("aresdsm.s3")


async def serve(
    store_factory: Callable[[ClientMetrics], Any],
    keys: KeyRing,
    listen: str,
    *,
    metrics_address: str | None = None,
    region: str = "us-east-1",
    gc_delay_s: float = 30.0,
    min_part_bytes: int | None = None,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    broken_unconditional_cas: bool = False,
    max_streams: int = MAX_STREAMS,
    blocks_in_flight: int = BLOCKS_IN_FLIGHT,
    domains: tuple[str, ...] = (),
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> None:
    """Serve until ``stop`` is set (or a signal arrives). ``ready(url)`` is called once the
    port listens (with the real port when ``listen`` asked for port 0). ``tls_cert`` and
    ``tls_key``: serve HTTPS; ``domains``: also accept virtual-hosted-style requests
    (``BUCKET.DOMAIN``)."""
    host, port = _listen_address(listen)
    ssl_ctx = _tls_context(tls_cert, tls_key)
    metrics = S3Metrics()
    store = store_factory(ClientMetrics(metrics.registry))
    kw: dict[str, Any] = {"gc_delay_s": gc_delay_s, "blocks_in_flight": blocks_in_flight}
    if min_part_bytes is not None:
        kw["min_part_bytes"] = min_part_bytes
    gateway = Gateway(store, **kw)
    gateway.broken_unconditional_cas = broken_unconditional_cas
    app = S3App(
        gateway, keys, region=region, metrics=metrics, max_streams=max_streams, domains=domains,
        scheme="https" if ssl_ctx is not None else "http",
    )  # fmt: skip
    runner = web.AppRunner(app.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=256, ssl_context=ssl_ctx)
    await site.start()
    mrunner: web.AppRunner | None = None
    if metrics_address:
        from prometheus_client import generate_latest

        async def expose(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(metrics.registry), content_type="text/plain")

        mapp = web.Application()
        mapp.router.add_get("/metrics", expose)
        mrunner = web.AppRunner(mapp, access_log=None, handle_signals=False)
        await mrunner.setup()
        mh, mp = parse_address(metrics_address)
        await web.TCPSite(mrunner, mh, mp).start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    bound = runner.addresses[0] if runner.addresses else (host, port)
    url = f"{'https' if ssl_ctx is not None else 'http'}://{bound[0]}:{bound[1]}"
    log.warning("S3 gateway listening on %s", url)
    if ready is not None:
        ready(url)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if mrunner is not None:
            await mrunner.cleanup()
        await gateway.close()
        await store.close()


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """HTTPS on the gateway itself (TLS 1.2 at least), or None for plain HTTP."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigurationError("--tls-cert and --tls-key go together")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigurationError(f"--tls-cert {cert} / --tls-key {key}: {e}") from None
    return ctx


def _listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT to listen on (port 0: any free port, reported by ``ready``)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"--listen {text!r}: expected HOST:PORT (port 0..65535)")
    return host.strip("[]"), int(port)
