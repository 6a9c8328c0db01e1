"""``ares mount MOUNTPOINT`` and ``ares umount MOUNTPOINT``: the files of a group as a POSIX file
system (FUSE; docs/mount.md).

``ares mount`` runs in the background by default: it starts ``ares mount --foreground`` as a
process of its own session (its log in ``--log-file``), waits until the mount point is mounted
and returns; ``--foreground`` serves in this process until unmounted or SIGTERM/SIGINT.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from .. import runtime
from ..config import DEFAULT_GROUP
from ..errors import AresError
from .common import _connect, cluster_option, err_console, main

READY_TIMEOUT_S = 30.0
MAX_CACHE_TIMEOUT_S = 3600.0
"""(aresdsm.mount.fs.MAX_CACHE_TIMEOUT_S: the mount module imports pyfuse3, an optional
dependency, so the CLI does not import it for its options.)"""


class MountError(AresError):
    """The file system could not be mounted or unmounted."""


def _default_log(cluster_path: str, mountpoint: Path) -> Path:
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(mountpoint).strip("/")) or "root"
    return Path(cluster_path).resolve().with_name(f"mount.{tag}.log")


@main.command("mount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--group", default=DEFAULT_GROUP, show_default=True, help="The group mounted.")
@click.option("--foreground", "-f", is_flag=True, help="Serve in this process (no background).")
@click.option(
    "--attr-timeout-s",
    type=click.FloatRange(min=0, max=MAX_CACHE_TIMEOUT_S),
    default=1.0,
    show_default=True,
    help="Attribute cache timeout (kernel and mount).",
)
@click.option(
    "--dir-timeout-s",
    type=click.FloatRange(min=0, max=MAX_CACHE_TIMEOUT_S),
    default=None,
    help="Name and directory listing cache timeout (kernel and mount)  [default: --attr-timeout-s]",
)
@click.option(
    "--publish-wait-s",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="How long an open waits for another mount's publication of the file to end.",
)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Local copies of open files.")
@click.option("--allow-other", is_flag=True, help="Let other users use the mount (FUSE).")
@click.option("--log-file", type=click.Path(dir_okay=False), help="The background mount's log.")
@cluster_option
def mount_cmd(
    mountpoint: str,
    group: str,
    foreground: bool,
    attr_timeout_s: float,
    dir_timeout_s: float | None,
    publish_wait_s: float,
    cache_dir: str | None,
    allow_other: bool,
    log_file: str | None,
    cluster_path: str,
) -> None:
    """Mount the files of GROUP at MOUNTPOINT (background; --foreground to stay)."""
    mp = Path(mountpoint)
    try:
        os.stat(mp)
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise MountError(
                f"{mountpoint} is a mount whose process is gone: ares umount --lazy {mountpoint}"
            ) from None
    if not mp.is_dir():
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mp):
        raise MountError(f"{mountpoint} is already a mount point")
    if not Path(cluster_path).exists():
        raise MountError(f"no cluster file {cluster_path}")
    try:
        import pyfuse3  # noqa: F401
    except ImportError:
        raise MountError("ares mount needs pyfuse3: pip install 'aresdsm[fuse]'") from None
    if not foreground:
        log = Path(log_file) if log_file else _default_log(cluster_path, mp.resolve())
        args = [sys.executable, "-m", "aresdsm", "mount", str(mp.resolve()), "--foreground"]
        args += ["--group", group, "--cluster", str(Path(cluster_path).resolve())]
        args += ["--attr-timeout-s", str(attr_timeout_s), "--publish-wait-s", str(publish_wait_s)]
        if dir_timeout_s is not None:
            args += ["--dir-timeout-s", str(dir_timeout_s)]
        if cache_dir:
            args += ["--cache-dir", cache_dir]
        if allow_other:
            args.append("--allow-other")
        try:
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
                )
        except OSError as e:
            raise MountError(f"cannot write the log {log}: {e.strerror} (--log-file)") from None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not os.path.ismount(mp):
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise MountError(f"mounting {mountpoint} failed: {' | '.join(tail)} (log {log})")
            time.sleep(0.05)
        err_console.print(f"mounted group {group!r} at {mountpoint} (pid {proc.pid}, log {log})")
        return

    from ..mount import serve
    from ..mount.fs import MountOptions

    opts = MountOptions(
        group=group,
        attr_timeout_s=attr_timeout_s,
        dir_timeout_s=dir_timeout_s,
        publish_wait_s=publish_wait_s,
        cache_dir=cache_dir,
    )

    async def go() -> None:
        async with _connect(cluster_path) as store:
            await serve(store, str(mp), opts, allow_other=allow_other)

    runtime.run(go())


@main.command("umount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--lazy", "-z", is_flag=True, help="Detach now, clean up when no longer busy.")
def umount_cmd(mountpoint: str, lazy: bool) -> None:
    """Unmount an `ares mount` (fusermount3 -u): open files are published when closed."""
    exe = shutil.which("fusermount3")
    if exe is None:
        raise MountError("fusermount3 not found (Debian package fuse3)")
    r = subprocess.run(
        [exe, "-u", *(["-z"] if lazy else []), mountpoint],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise MountError(f"unmounting {mountpoint} failed: {r.stderr.strip() or r.returncode}")
