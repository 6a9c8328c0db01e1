"""``ares put|get|status|groups|reconfig``: the data, its groups and the cluster's configuration
chain (docs/protocol.md §2, §6, §8.4)."""

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
from .common import _connect, cluster_option, console, err_console, main, timeout_option


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
@timeout_option
@cluster_option
def put(
    key: str,
    value: str | None,
    path: str | None,
    group: str,
    timeout_s: float | None,
    cluster_path: str,
) -> None:
    """Write VALUE (or the contents of --file) to object KEY."""
    if (value is None) == (path is None):
        raise click.UsageError("give exactly one of VALUE or --file")
    data = Path(path).read_bytes() if path is not None else (value or "").encode()

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            return await store.write(key, data, group=group, timeout_s=timeout_s)

    tag = runtime.run(go())
    console.print(f"wrote {len(data)} bytes to {key!r} (tag {tag})")


@main.command()
@click.argument("key")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the value to a file.")
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@click.option("--tag", "show_tag", is_flag=True, help="Also print the value's tag on stderr.")
@timeout_option
@cluster_option
def get(
    key: str,
    output: str | None,
    group: str,
    show_tag: bool,
    timeout_s: float | None,
    cluster_path: str,
) -> None:
    """Read object KEY and print its value (raw bytes) or save it with -o."""

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            return await store.read_tagged(key, group=group, timeout_s=timeout_s)

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
@click.option("--storage", "show_storage", is_flag=True, help="Bytes held per configuration.")
@timeout_option
@cluster_option
def status(show_storage: bool, timeout_s: float | None, cluster_path: str) -> None:
    """Show the cluster's configuration chain and every server's state and counters."""
    from ..protocol import ares

    cf = load_cluster_file(cluster_path)

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            try:
                chain = await store.configurations(timeout_s=timeout_s)
                error = ""
            except AresError as e:
                chain, error = store.cseq(), str(e)
            known = {s.id: s for s in cf.servers}
            for entry in chain:
                known.update({s.id: s for s in entry.config.servers})
            return chain, error, list(known.values()), await store.stats(list(known.values()))

    chain, error, servers_known, stats = runtime.run(go())
    table = Table(
        "#", "configuration", "status", "dap", "quorum", "servers", title="configuration chain"
    )
    for e in chain:
        c = e.config
        dap = f"treas [n={c.n}, k={c.k}, δ={c.delta}]" if c.dap == "treas" else f"abd [n={c.n}]"
        table.add_row(str(c.epoch), c.id, e.status, dap, str(c.quorum_size), ",".join(c.server_ids))
    console.print(table)
    if error:
        console.print(f"[yellow]discovery stopped:[/] {error}")
    down = {s.id for s, st in zip(servers_known, stats, strict=True) if isinstance(st, str)}
    if chain and chain[-1].status == "P":
        c = chain[-1].config
        missing = [i for i in c.server_ids if i in down]
        console.print(
            f"[yellow]pending:[/] {c.id} was decided but its transfer did not finish "
            f"(its reconfigurer stopped, or its servers did not answer); "
            f"{c.n - len(missing)} of its {c.n} servers answer, it needs {c.quorum_size}"
            + (f" (down: {', '.join(missing)})" if missing else "")
            + ". Complete it with: ares reconfig --finish"
        )
    last = chain[-1].config if chain else cf.initial
    servers = Table(
        "server", "address", "state", "in last config", "objects", "stored bytes", "requests"
    )
    for s, st in zip(servers_known, stats, strict=True):
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
        _storage_table(ares.CLUSTER_CHAIN, [e.config.id for e in chain], servers_known, stats)


@main.command()
@timeout_option
@cluster_option
def groups(timeout_s: float | None, cluster_path: str) -> None:
    """List the groups that hold objects (one per line; not a snapshot)."""

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            return await store.groups(timeout_s=timeout_s)

    for g in runtime.run(go()):
        console.print(escape(g))


def _storage_table(group: str, config_ids: list[str], servers: Any, stats: list[Any]) -> None:
    """Stored bytes per (server, configuration of the chain): §8.3 made measurable."""
    table = Table("server", *config_ids, "total", title="stored object bytes")
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
@click.option(
    "--servers", "servers_s", help="The new configuration's servers (ids), comma separated."
)
@click.option("--add", "add_s", help="Servers to add to the current configuration.")
@click.option("--remove", "remove_s", help="Servers to remove from the current configuration.")
@click.option("--dap", type=click.Choice(["abd", "treas"]), help="Default: the current one.")
@click.option("--k", type=int, help="TREAS code dimension (default: current, or n - 2).")
@click.option("--delta", type=int, help="TREAS concurrency bound (default: current, or 4).")
@click.option(
    "--force",
    is_flag=True,
    help="Accept a configuration that survives no crash, or fewer than the current one.",
)
@click.option(
    "--finish",
    is_flag=True,
    help="Only complete a decided but unfinished reconfiguration (see ares status).",
)
@click.option(
    "--classic",
    is_flag=True,
    help="Run the original Ares rounds (discovery, separate put-config) on the cluster's chain.",
)
@timeout_option
@cluster_option
def reconfig(
    servers_s: str | None,
    add_s: str | None,
    remove_s: str | None,
    dap: str | None,
    k: int | None,
    delta: int | None,
    force: bool,
    finish: bool,
    classic: bool,
    timeout_s: float | None,
    cluster_path: str,
) -> None:
    """Replace the cluster's configuration: new servers and/or another DAP, while clients run.
    One reconfiguration moves every object of every group."""
    import uuid

    from ..protocol.ops import CLASSIC, DEFAULT_SWITCHES

    # the objects `ares put` wrote follow the cluster's chain (batch on): so does --classic
    classic_switches = dataclasses.replace(CLASSIC, batch=True)

    if servers_s is not None and (add_s or remove_s):
        raise click.UsageError("give --servers, or --add/--remove, not both")
    if finish and (servers_s or add_s or remove_s or dap or k is not None or delta is not None):
        raise click.UsageError("--finish takes no new configuration")
    cf = load_cluster_file(cluster_path)

    async def go() -> Any:
        switches = classic_switches if classic else DEFAULT_SWITCHES
        async with _connect(cluster_path, switches=switches) as st:
            t0 = time.perf_counter()
            if finish:
                chain = await st.finish_reconfiguration(timeout_s=timeout_s)
                return chain[-1].config, None, None, time.perf_counter() - t0, st.channel.rounds
            chain = await st.configurations(timeout_s=timeout_s)
            if chain[-1].status == "P":
                chain = await st.finish_reconfiguration(timeout_s=timeout_s)
            current = chain[-1].config
            ids = _new_members(current.server_ids, servers_s, add_s, remove_s)
            members = tuple(cf.server(i) for i in ids)
            kind = dap or current.dap
            proposal = Configuration(
                id=f"c{current.epoch + 1}-{uuid.uuid4().hex[:6]}",
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
            decided = await st.reconfigure(proposal, force=force, timeout_s=timeout_s)
            return current, proposal, decided, time.perf_counter() - t0, st.channel.rounds

    current, proposal, decided, took, rounds = runtime.run(go())
    if proposal is None:
        console.print(f"{current.describe()} is final  ({took * 1e3:.0f} ms, {rounds} rounds)")
        return
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
