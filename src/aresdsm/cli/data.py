"""``ares put|get|status|reconfig``: the data and the configuration chain of a group."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from .. import runtime
from ..config import DEFAULT_GROUP, Configuration, load_cluster_file, validate_configuration
from ..errors import AresError
from .common import _connect, cluster_option, console, err_console, main


@main.command()
@click.argument("key")
@click.argument("value", required=False)
@click.option(
    "-f",
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    help="Read the value from a file.",
)
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@cluster_option
def put(key: str, value: str | None, path: str | None, group: str, cluster_path: str) -> None:
    """Write VALUE (or the contents of --file) to object KEY."""
    if (value is None) == (path is None):
        raise click.UsageError("give exactly one of VALUE or --file")
    data = Path(path).read_bytes() if path is not None else (value or "").encode()

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            return await store.write(key, data, group=group)

    tag = runtime.run(go())
    console.print(f"wrote {len(data)} bytes to {key!r} (tag {tag})")


@main.command()
@click.argument("key")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the value to a file.")
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@click.option("--tag", "show_tag", is_flag=True, help="Also print the value's tag on stderr.")
@cluster_option
def get(key: str, output: str | None, group: str, show_tag: bool, cluster_path: str) -> None:
    """Read object KEY and print its value (raw bytes) or save it with -o."""

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            return await store.read_tagged(key, group=group)

    tag, data = runtime.run(go())
    if show_tag:
        err_console.print(f"tag {tag}")
    if output:
        try:
            Path(output).write_bytes(data)
        except OSError as e:
            raise click.ClickException(f"cannot write {output}: {e.strerror or e}") from None
        err_console.print(f"saved {len(data)} bytes to {output}")
    else:
        sys.stdout.buffer.write(data)
        if sys.stdout.isatty():
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()


@main.command()
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@click.option("--storage", "show_storage", is_flag=True, help="Bytes held per configuration.")
@cluster_option
def status(group: str, show_storage: bool, cluster_path: str) -> None:
    """Show the group's configuration chain and every server's state and counters."""
    cf = load_cluster_file(cluster_path)

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            try:
                chain = await store.configurations(group)
                error = ""
            except AresError as e:
                chain, error = store.cseq(group), str(e)
            return chain, error, await store.stats(cf.servers)

    chain, error, stats = runtime.run(go())
    table = Table(
        "#", "configuration", "status", "dap", "quorum", "servers", title=f"group {group!r}"
    )
    for i, e in enumerate(chain):
        c = e.config
        dap = f"treas [n={c.n}, k={c.k}, δ={c.delta}]" if c.dap == "treas" else f"abd [n={c.n}]"
        table.add_row(str(i), c.id, e.status, dap, str(c.quorum_size), ",".join(c.server_ids))
    console.print(table)
    if error:
        console.print(f"[yellow]discovery stopped:[/] {error}")
    last = chain[-1].config if chain else cf.initial
    servers = Table(
        "server", "address", "state", "in last config", "objects", "stored bytes", "requests"
    )
    for s, st in zip(cf.servers, stats, strict=True):
        member = "yes" if last.has_member(s.id) else ""
        if isinstance(st, str) and "unauthorized" in st:  # up, but stats are for admins (§13)
            servers.add_row(s.id, s.address, "[yellow]unauthorized[/]", member, "", "", "")
        elif isinstance(st, str):
            servers.add_row(
                s.id, s.address, f"[red]down[/] ({escape(st[:50])})", member, "", "", ""
            )
        else:
            reqs = sum(v for k, v in st.counters.items() if k[0].isupper())
            servers.add_row(
                s.id,
                s.address,
                "[green]up[/]",
                member,
                str(st.objects),
                str(st.stored_bytes),
                str(reqs),
            )
    console.print(servers)
    if any(isinstance(st, str) and "unauthorized" in st for st in stats):
        console.print("[yellow]unauthorized:[/] server statistics need the admin role")
    if show_storage:
        _storage_table(group, [e.config.id for e in chain], cf.servers, stats)


def _storage_table(group: str, config_ids: list[str], servers: Any, stats: list[Any]) -> None:
    """Stored bytes per (server, configuration of the group): §8.3 made measurable."""
    table = Table("server", *config_ids, "total", title=f"stored object bytes, group {group!r}")
    totals = dict.fromkeys(config_ids, 0)
    for s, st in zip(servers, stats, strict=True):
        if isinstance(st, str):
            continue
        row = [st.bytes_by_config.get(f"{group}/{cid}", 0) for cid in config_ids]
        for cid, b in zip(config_ids, row, strict=True):
            totals[cid] += b
        table.add_row(s.id, *(str(b) for b in row), str(sum(row)))
    table.add_row("all", *(str(totals[c]) for c in config_ids), str(sum(totals.values())))
    console.print(table)


@main.command()
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@click.option(
    "--servers", "servers_s", help="The new configuration's servers (ids), comma separated."
)
@click.option("--add", "add_s", help="Servers to add to the current configuration.")
@click.option("--remove", "remove_s", help="Servers to remove from the current configuration.")
@click.option("--dap", type=click.Choice(["abd", "treas"]), help="Default: the current one.")
@click.option("--k", type=int, help="TREAS code dimension (default: current, or n - 2).")
@click.option("--delta", type=int, help="TREAS concurrency bound (default: current, or 4).")
@click.option(
    "--classic",
    is_flag=True,
    help="Run the original Ares rounds (discovery, separate put-config) on the group's chain.",
)
@cluster_option
def reconfig(
    group: str,
    servers_s: str | None,
    add_s: str | None,
    remove_s: str | None,
    dap: str | None,
    k: int | None,
    delta: int | None,
    classic: bool,
    cluster_path: str,
) -> None:
    """Replace the group's configuration: new servers and/or another DAP, while clients run."""
    import uuid

    from ..protocol.ops import CLASSIC, DEFAULT_SWITCHES

    # the objects `ares put` wrote follow the group's chain (batch on): so does --classic
    classic_switches = dataclasses.replace(CLASSIC, batch=True)

    if servers_s is not None and (add_s or remove_s):
        raise click.UsageError("give --servers, or --add/--remove, not both")
    cf = load_cluster_file(cluster_path)

    async def go() -> Any:
        switches = classic_switches if classic else DEFAULT_SWITCHES
        async with _connect(cluster_path, switches=switches) as st:
            chain = await st.configurations(group)
            current = chain[-1].config
            ids = _new_members(current.server_ids, servers_s, add_s, remove_s)
            members = tuple(cf.server(i) for i in ids)
            kind = dap or current.dap
            proposal = Configuration(
                id=f"c{len(chain)}-{uuid.uuid4().hex[:6]}",
                servers=members,
                dap=kind,  # type: ignore[arg-type]
                k=k
                if k is not None
                else (current.k if current.dap == "treas" else max(1, len(ids) - 2)),
                delta=delta
                if delta is not None
                else (current.delta if current.dap == "treas" else 4),
            )
            validate_configuration(proposal)
            t0 = time.perf_counter()
            decided = await st.reconfigure(proposal, group=group)
            return current, proposal, decided, time.perf_counter() - t0, st.channel.rounds

    current, proposal, decided, took, rounds = runtime.run(go())
    if decided.id != proposal.id:
        console.print(f"[yellow]another reconfiguration won:[/] {decided.describe()}")
        sys.exit(1)
    console.print(
        f"{current.describe()}\n  -> {decided.describe()}  ({took * 1e3:.0f} ms, {rounds} rounds)"
    )


def _new_members(
    current: tuple[str, ...], servers_s: str | None, add_s: str | None, remove_s: str | None
) -> list[str]:
    if servers_s is not None:
        ids = [x.strip() for x in servers_s.split(",") if x.strip()]
    else:
        add = [x.strip() for x in (add_s or "").split(",") if x.strip()]
        remove = {x.strip() for x in (remove_s or "").split(",") if x.strip()}
        unknown = remove - set(current)
        if unknown:
            raise click.BadParameter(
                f"--remove: {sorted(unknown)} not in the current configuration"
            )
        ids = [i for i in current if i not in remove] + [i for i in add if i not in current]
    if not ids:
        raise click.BadParameter("the new configuration needs at least one server")
    if len(set(ids)) != len(ids):
        raise click.BadParameter(f"duplicate servers in {ids}")
    return ids
