"""``ares s3 serve | key | gc``: the S3-compatible gateway (docs/s3.md).

Access keys come from a keys file (``--keys FILE``: ``[[keys]]`` tables with ``access_key``,
``secret_key`` and ``role`` -- read, write or admin) and/or ``--key ACCESS:SECRET:ROLE``
options; ``ares s3 key new --role write --keys FILE`` adds a fresh random one to a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from .. import runtime
from ..errors import ConfigurationError
from .common import _connect, cluster_option, console, main, trace_options


@main.group("s3")
def s3_group() -> None:
    """The S3-compatible gateway: serve, key, gc (docs/s3.md)."""


def _ring(keys_file: str | None, key: tuple[str, ...]) -> object:
    from ..s3.sigv4 import KeyRing, parse_key_option

    ring = KeyRing.load(keys_file) if keys_file else KeyRing()
    for k in key:
        ring.add(parse_key_option(k))
    return ring


@s3_group.command("serve")
@click.option(
    "--listen", default="127.0.0.1:9000", show_default=True, help="HOST:PORT to serve HTTP on."
)
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(dir_okay=False),
    help="Keys file (TOML, [[keys]] tables).",
)
@click.option("--key", multiple=True, help="An access key as ACCESS:SECRET:ROLE (repeatable).")
@click.option("--metrics-address", help="HOST:PORT for Prometheus metrics (/metrics).")
@click.option(
    "--region",
    default="us-east-1",
    show_default=True,
    help="The region clients sign for (any is accepted).",
)
@click.option(
    "--gc-delay-s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds a replaced object's data stays readable for GETs already under way.",
)
@click.option(
    "--min-part-mib",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Smallest multipart part but the last (S3: 5).",
)
@click.option(
    "--max-streams", type=click.IntRange(min=1), default=8, show_default=True,
    help="Requests moving object data served at once (the memory bound); more wait.",
)  # fmt: skip
@click.option(
    "--blocks-in-flight", type=click.IntRange(min=1, max=64), default=2, show_default=True,
    help="Blocks of at most 4 MiB one such request writes or reads ahead at once.",
)  # fmt: skip
@click.option(
    "--domain", "domains", multiple=True,
    help="Also accept virtual-hosted-style requests: Host BUCKET.DOMAIN (repeatable).",
)  # fmt: skip
@click.option(
    "--tls-cert", type=click.Path(dir_okay=False), help="Serve HTTPS: certificate chain (PEM)."
)
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Serve HTTPS: private key (PEM).")
@click.option("--broken-unconditional-cas", is_flag=True, hidden=True)
@cluster_option
@trace_options
def serve(
    listen: str,
    keys_file: str | None,
    key: tuple[str, ...],
    metrics_address: str | None,
    region: str,
    gc_delay_s: float,
    min_part_mib: int,
    max_streams: int,
    blocks_in_flight: int,
    domains: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    broken_unconditional_cas: bool,
    cluster_path: str,
    trace_file: str | None,
    otlp_endpoint: str | None,
    trace_sample: float | None,
) -> None:
    """Serve the cluster's buckets and objects over the S3 API on LISTEN."""
    try:
        from ..s3.server import serve as run_serve
    except ImportError as e:  # pragma: no cover - the s3 extra
        raise ConfigurationError(
            f"ares s3 needs the s3 extra (pip install aresdsm[s3]): {e}"
        ) from None
    ring = _ring(keys_file, key)
    if not len(ring):  # type: ignore[arg-type]
        raise ConfigurationError("no access keys: give --keys FILE or --key ACCESS:SECRET:ROLE")
    from .. import tracing
    from ..files.memory import bound_malloc_cache

    bound_malloc_cache()  # RSS follows the blocks in flight, not the bytes moved (docs/s3.md)
    with tracing.traced_process(
        "ares-s3", otlp_endpoint=otlp_endpoint, trace_file=trace_file, sample_ratio=trace_sample
    ):
        runtime.run(
            run_serve(
                lambda m: _connect(cluster_path, metrics=m),
                ring,  # type: ignore[arg-type]
                listen,
                metrics_address=metrics_address,
                region=region,
                gc_delay_s=gc_delay_s,
                min_part_bytes=min_part_mib * 1024 * 1024,
                ready=lambda url: console.print(f"S3 gateway on {url}"),
                broken_unconditional_cas=broken_unconditional_cas,
                max_streams=max_streams,
                blocks_in_flight=blocks_in_flight,
                domains=domains,
                tls_cert=tls_cert,
                tls_key=tls_key,
            )
        )


@s3_group.group("key")
def key_group() -> None:
    """Access keys of the gateway."""


@key_group.command("new")
@click.option("--role", type=click.Choice(["read", "write", "admin"]), required=True)
@click.option(
    "--keys",
    "keys_file",
    type=click.Path(dir_okay=False),
    help="Append to this keys file (created 0600).",
)
def key_new(role: str, keys_file: str | None) -> None:
    """Make a random access key with ROLE; print it (and append it to --keys)."""
    from ..s3.sigv4 import KeyRing, new_key

    k = new_key(role)
    entry = (
        f'[[keys]]\naccess_key = "{k.access_key}"\nsecret_key = "{k.secret_key}"\n'
        f'role = "{k.role}"\n'
    )
    if keys_file:
        path = Path(keys_file)
        if path.exists():
            KeyRing.load(path)  # refuse to append to a file that does not parse
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(("\n" if path.stat().st_size else "") + entry)
    console.print(
        f"AWS_ACCESS_KEY_ID={k.access_key}\nAWS_SECRET_ACCESS_KEY={k.secret_key}", highlight=False
    )


@s3_group.command("gc")
@click.argument("bucket")
@click.option(
    "--grace-s",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Leave data files younger than this (writes may still be publishing them).",
)
@cluster_option
def gc(bucket: str, grace_s: float, cluster_path: str) -> None:
    """Delete BUCKET's data files that no object and no open upload names (left by a gateway
    that stopped in the middle of a request)."""
    from ..s3.objects import Gateway

    async def go() -> int:
        async with _connect(cluster_path) as store:
            return await Gateway(store).gc(bucket, grace_s=grace_s)

    console.print(f"deleted {runtime.run(go())} unreferenced data files")


@s3_group.command("bench")
@click.option(
    "--object-mib", type=click.IntRange(0), default=256, show_default=True,
    help="Size of the large object (0: only the small writes).",
)  # fmt: skip
@click.option("--clients", type=click.IntRange(1), default=16, show_default=True)
@click.option(
    "--duration-s",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Per small-write cell.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False),
    default="bench-results/s3.json",
    show_default=True,
)
def bench(object_mib: int, clients: int, duration_s: float, json_out: str) -> None:
    """boto3 through the gateway vs ares file put/get and native 1 KiB writes (one cluster)."""
    import dataclasses
    import json
    import math

    from ..s3.bench import run_s3_bench

    r = run_s3_bench(
        object_bytes=object_mib * 1024 * 1024, clients=clients, duration_s=duration_s,
        log=console.print,
    )  # fmt: skip
    ratios = {k: v for k, v in r.ratios().items() if not math.isnan(v)}
    out = {
        k: None if isinstance(v, float) and math.isnan(v) else v  # not measured: null, not NaN
        for k, v in {**dataclasses.asdict(r), "ratios": ratios}.items()
    }
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(out, indent=1))
    console.print(
        " ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        + f"; gateway peak RSS {r.gateway_peak_rss_mb:.0f} MB"
    )
