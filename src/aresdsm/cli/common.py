"""Shared pieces of the ``ares`` command line: the root group, consoles, common options.

The command line is a thin layer over the library (click + rich); one module per command group
(architecture.md): :mod:`.server`, :mod:`.cluster`, :mod:`.data`, :mod:`.tools`, :mod:`.certs`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from .. import serverlog
from ..errors import AresError

console = Console(highlight=False)
# soft_wrap: an error stays one line even when stderr is a file or a pipe (no wrapping at 80)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

DEFAULT_DIR = "./ares-data"


def _default_cluster() -> str:
    return os.environ.get("ARES_CLUSTER", str(Path(DEFAULT_DIR) / "cluster.toml"))


cluster_option = click.option(
    "--cluster",
    "cluster_path",
    default=_default_cluster,
    show_default="$ARES_CLUSTER or ./ares-data/cluster.toml",
    help="Cluster file (TOML) naming the servers and the initial configuration.",
)


def _connect(cluster_path: str, **kwargs: Any) -> Any:
    """A Store that keeps the configuration chains it learns next to the cluster file."""
    from ..client import connect

    return connect(cluster_path, cseq_cache=chain_cache_path(cluster_path), **kwargs)


timeout_option = click.option(
    "--timeout-s",
    type=click.FloatRange(min=0, min_open=True),
    help="Deadline of the whole command's operation (default: [client] timeout_s).",
)


def chain_cache_path(cluster_path: str) -> Path:
    return Path(cluster_path).with_name(Path(cluster_path).name + ".chains.json")


def trace_options(f: Any) -> Any:
    """--trace FILE / --otlp-endpoint / --trace-sample for commands that run clients."""
    f = click.option("--trace-sample", type=float, help="Sampling ratio of new traces.")(f)
    f = click.option(
        "--otlp-endpoint", help="Also export spans over OTLP/HTTP, e.g. http://localhost:4318."
    )(f)
    return click.option(
        "--trace",
        "trace_file",
        type=click.Path(dir_okay=False),
        help="Write spans (JSON lines) to FILE; servers started here write FILE.<server id>.",
    )(f)


def _tracing_for(
    trace_file: str | None, otlp_endpoint: str | None, trace_sample: float | None
) -> Any:
    from .. import tracing

    if otlp_endpoint:  # inherited by the server processes started from here
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    if trace_sample is not None:
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = str(trace_sample)
    return tracing.traced_process(
        "ares-client", otlp_endpoint=otlp_endpoint, trace_file=trace_file, sample_ratio=trace_sample
    )


class AresGroup(click.Group):
    """Turns aresdsm errors into a one-line message and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AresError as e:  # (escaped: messages name TOML tables like [client])
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
            sys.exit(1)


_F = TypeVar("_F", bound=Callable[..., Any])


def log_options(default_level: str) -> Callable[[_F], _F]:
    """--log-level / --log-format (on ``ares`` itself and on ``ares server``)."""

    def deco(f: _F) -> _F:
        f = click.option(
            "--log-format",
            type=click.Choice(serverlog.FORMATS),
            default=None,
            help="Log lines as text or as one JSON object per line (default: text).",
        )(f)
        f = click.option(
            "--log-level",
            type=click.Choice(serverlog.LEVELS, case_sensitive=False),
            default=None,
            help=f"Least severe level logged (default: {default_level}).",
        )(f)
        return f

    return deco


@click.group(cls=AresGroup)
@click.version_option(package_name="aresdsm")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@log_options("warning")
def main(verbose: int, log_level: str | None, log_format: str | None) -> None:
    """aresdsm: Ares II, an atomic, reconfigurable distributed shared memory."""
    if log_level is None and verbose:
        log_level = ("info", "debug")[min(verbose, 2) - 1]
    # what was asked for explicitly; `ares server` has a default of its own (info)
    click.get_current_context().obj = {"log_level": log_level, "log_format": log_format}
    serverlog.configure(log_level or "warning", log_format or "text")
