"""The server fuzz target (fuzz_server.py) in the test suite: the seed corpus is replayed on every
run, and atheris fuzzes for a bounded time (``ARES_FUZZ_SECONDS``, default 30, at most 60) in a
subprocess. A crash is a failing test that names the input (base64) and keeps it as an artifact.

Where atheris has no wheel (it is a Linux x86-64 test dependency), the same target is driven by
seeded random mutations of the corpus for the same time: not coverage-guided, but never skipped.
"""

from __future__ import annotations

import base64
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fuzz_server import one_input

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"


def _seconds() -> int:
    return max(1, min(60, int(os.environ.get("ARES_FUZZ_SECONDS", "30"))))


def test_seed_corpus_replays_cleanly() -> None:
    seeds = sorted(CORPUS.iterdir())
    assert len(seeds) >= 20
    for path in seeds:
        one_input(path.read_bytes())


def _mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos:pos] = bytes([rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))])
        elif op == 2 and b:
            del b[pos : pos + rng.randint(1, 8)]
        elif op == 3:
            other = rng.choice(seeds)
            start = rng.randrange(len(other) + 1)
            b[pos:pos] = other[start : start + rng.randint(1, 64)]
        else:
            b[pos : pos + 4] = rng.choice((b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x7f\xff\xff\xff"))
    return bytes(b)


@pytest.mark.slow
def test_fuzz_the_server_for_a_bounded_time(tmp_path: Path) -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        _mutation_fuzz(_seconds())
        return
    new = tmp_path / "new"
    new.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "fuzz_server.py"),
            f"-max_total_time={_seconds()}",
            "-timeout=20",
            "-rss_limit_mb=1536",
            "-max_len=8192",
            f"-artifact_prefix={tmp_path}/",
            str(new),
            str(CORPUS),
        ],
        capture_output=True,
        text=True,
        timeout=_seconds() + 120,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    crashes = sorted(tmp_path.glob("crash-*")) + sorted(tmp_path.glob("timeout-*"))
    detail = "".join(
        f"\n{p.name}: {base64.b64encode(p.read_bytes()).decode()}" for p in crashes[:3]
    )
    assert proc.returncode == 0 and not crashes, (
        f"the fuzzer found a failing input (rc {proc.returncode}); replay it with "
        f"fuzz_server.one_input(base64.b64decode(...)):{detail}\n{proc.stderr[-3000:]}"
    )
    assert "Done" in proc.stderr and "runs in" in proc.stderr, proc.stderr[-2000:]


def _mutation_fuzz(seconds: int) -> None:
    seeds = [p.read_bytes() for p in sorted(CORPUS.iterdir())]
    rng = random.Random(13)
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        data = _mutate(rng, rng.choice(seeds), seeds)
        try:
            one_input(data)
        except Exception as e:
            raise AssertionError(
                f"failing input after {runs} runs: {base64.b64encode(data).decode()}"
            ) from e
        runs += 1
    assert runs > 0
