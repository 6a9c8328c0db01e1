"""``ares s3 key new`` and the key options: keys files written 0600 and read back, and clear
one-line errors for bad keys."""

from __future__ import annotations

import stat
from pathlib import Path

from click.testing import CliRunner

from aresdsm.cli import main
from aresdsm.s3.sigv4 import KeyRing


def test_key_new_appends_to_a_private_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    runner = CliRunner()
    for role in ("admin", "read"):
        r = runner.invoke(main, ["s3", "key", "new", "--role", role, "--keys", str(keys)])
        assert r.exit_code == 0, r.output
        assert "AWS_ACCESS_KEY_ID=AK" in r.output and "AWS_SECRET_ACCESS_KEY=" in r.output
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    ring = KeyRing.load(keys)
    assert len(ring) == 2


def test_bad_keys_are_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.toml"
    bad.write_text('[[keys]]\naccess_key = "AK1"\nsecret_key = "short"\nrole = "admin"\n')
    cases = [
        (["--keys", str(bad)], "secret of 8..256"),
        (["--key", "AKX:secretsecret:root"], "role must be one of"),
        (["--key", "nocolons"], "ACCESS_KEY:SECRET_KEY:ROLE"),
        ([], "no access keys"),
        (["--keys", str(tmp_path / "missing.toml")], "cannot read keys file"),
    ]
    for args, want in cases:
        r = runner.invoke(main, ["s3", "serve", "--cluster", str(tmp_path / "none.toml"), *args])
        assert r.exit_code == 1 and want in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1
