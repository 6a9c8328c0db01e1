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
    """Read object KEY and print its value (raw bytes) or save it with -o.

    Exit code 2 (and a message on stderr) if KEY does not exist: never written, or deleted."""

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            return await store.read_tagged(key, group=group, timeout_s=timeout_s)

    tag, data = runtime.run(go())
    if show_tag:
        err_console.print(f"tag {tag}")
    if data is None:
        why = "deleted" if tag.deleted else "never written"
        err_console.print(f"[bold red]not found:[/] no object {escape(repr(key))} ({why})")
        sys.exit(2)
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
@click.argument("keys", nargs=-1, required=True)
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@timeout_option
@cluster_option
def rm(keys: tuple[str, ...], group: str, timeout_s: float | None, cluster_path: str) -> None:
    """Delete objects KEYS (each atomically: a tombstone write; later reads find nothing)."""

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            return [await store.delete(k, group=group, timeout_s=timeout_s) for k in keys]

    for k, tag in zip(keys, runtime.run(go()), strict=True):
        console.print(f"deleted {k!r} (tag {tag.z})")


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
    ever = {sid for e in chain for sid in e.config.server_ids}
    gone = [s.id for s in servers_known if s.id in ever and not last.has_member(s.id)]
    servers = Table(
        "server",
        "address",
        "state",
        "in last config",
        "objects",
        "stored bytes",
        "requests",
        "damaged",
    )
    damaged: list[str] = []
    for col in servers.columns:  # addresses and numbers whole, folded if narrow
        col.overflow = "fold"
    reasons: list[str] = []
    for s, st in zip(servers_known, stats, strict=True):
        if s.id in gone:  # left every configuration still in use: not part of the cluster
            continue
        member = "yes" if last.has_member(s.id) else ""
        if isinstance(st, str) and "unauthorized" in st:  # up, but stats are for admins (§13)
            servers.add_row(s.id, s.address, "[yellow]unauthorized[/]", member, "", "", "", "")
        elif isinstance(st, str):
            state = "refused" if "refused the connection" in st else "down"
            servers.add_row(s.id, s.address, f"[red]{state}[/]", member, "", "", "", "")
            if state == "refused":
                damaged.append(f"{s.id}: {st}")
            else:
                reasons.append(f"{s.id} ({s.address}): {st}")
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
                f"[red]{st.damaged_count}[/]" if st.damaged_count else "0",
            )
            damaged += [f"{s.id}: damaged on disk, not answered for: {d}" for d in st.damaged]
    console.print(servers)
    if any(isinstance(st, str) and "unauthorized" in st for st in stats):
        console.print("[yellow]unauthorized:[/] server statistics need the admin role")
    for line in damaged:
        console.print(f"[yellow]{escape(line)}[/]")
    for r in reasons:  # whole, one line each, whatever the terminal's width
        console.print(f"[red]down:[/] {escape(r)}", soft_wrap=True)
    if gone:
        console.print(
            f"[dim]not shown: {', '.join(gone)} (left the cluster: in no configuration since "
            f"{last.id})[/]",
            soft_wrap=True,
        )
    if show_storage:
        _storage_table(ares.CLUSTER_CHAIN, [e.config.id for e in chain], servers_known, stats)
    live = sum(
        1
        for s, st in zip(servers_known, stats, strict=True)
        if last.has_member(s.id) and (not isinstance(st, str) or "unauthorized" in st)
    )
    if live < last.quorum_size:
        err_console.print(
            f"[bold red]no live quorum:[/] {live} of the {last.n} servers of the last "
            f"configuration {last.id} answer; a quorum needs {last.quorum_size}",
            soft_wrap=True,
        )
        sys.exit(1)


@main.command()
@click.argument("prefix", default="")
@click.option("--group", default=DEFAULT_GROUP, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Print at most this many keys.")
@timeout_option
@cluster_option
def ls(
    prefix: str, group: str, limit: int | None, timeout_s: float | None, cluster_path: str
) -> None:
    """List the keys of a group that start with PREFIX, one per line, in order. Not a snapshot:
    each key's presence is linearizable on its own (docs/operations.md, "Deleting and listing")."""

    async def collect() -> list[str]:
        async with _connect(cluster_path) as store:
            return list(await store.list(prefix, group=group, limit=limit, timeout_s=timeout_s))

    for key in runtime.run(collect()):
        console.print(escape(key), soft_wrap=True)


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


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--group", "groups", multiple=True, help="Back up only this group (repeatable).")
@cluster_option
def backup(file: str, groups: tuple[str, ...], cluster_path: str) -> None:
    """Back up every object of a running cluster into FILE (one tar archive with a manifest and
    checksums). Each object is read linearizably while clients keep working; the backup is not
    a snapshot of one instant (docs/operations.md, "Backup and restore")."""
    from ..backup import backup as run_backup

    cf = load_cluster_file(cluster_path)

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            with _Progress("backing up") as advance:
                return await run_backup(
                    store,
                    file,
                    cluster_name=cf.name,
                    groups=list(groups) if groups else None,
                    progress=advance,
                )

    r = runtime.run(go())
    console.print(
        f"backed up {r.objects} objects ({r.bytes} bytes) of {len(r.groups)} groups to {file} "
        f"in {r.seconds:.1f} s"
        + (f"; {r.absent} listed keys were deleted meanwhile" if r.absent else "")
    )


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write every archived object, replacing what the cluster holds (default: keep objects "
    "that already exist and skip them).",
)
@click.option("--verify-only", is_flag=True, help="Only check the archive's checksums.")
@cluster_option
def restore(file: str, overwrite: bool, verify_only: bool, cluster_path: str) -> None:
    """Load a backup FILE into a cluster (new or existing). The whole archive is checked first;
    nothing is written if it is damaged. Objects of the cluster that are not in FILE are kept."""
    from ..backup import restore as run_restore
    from ..backup import verify

    if verify_only:
        manifest, entries = verify(file)
        console.print(
            f"{file}: intact; {len(entries)} objects, {manifest.get('bytes')} bytes, "
            f"created {manifest.get('created')} from cluster {manifest.get('cluster')!r}"
        )
        return

    async def go() -> Any:
        async with _connect(cluster_path) as store:
            with _Progress("restoring") as advance:
                return await run_restore(store, file, overwrite=overwrite, progress=advance)

    r = runtime.run(go())
    console.print(
        f"restored {r.written} of {r.objects} objects ({r.bytes} bytes) in {r.seconds:.1f} s"
        + (
            f"; {r.skipped} already existed and were kept (--overwrite replaces them)"
            if r.skipped
            else ""
        )
    )


class _Progress:
    """A rich progress bar on a terminal (objects and bytes so far); nothing otherwise."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.bar: Any = None

    def __enter__(self) -> Any:
        if not err_console.is_terminal:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("objects, {task.fields[size]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        )
        self.bar.start()
        task = self.bar.add_task(self.what, total=None, size="0 B")

        def advance(objects: int, nbytes: int, total: int) -> None:
            self.bar.update(task, completed=objects, total=total, size=_human(nbytes))

        return advance

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
