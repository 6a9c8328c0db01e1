"""The S3 gateway against the real aws CLI (Debian's ``/usr/bin/aws``: ``s3 cp/ls/sync/rm``) and
rclone (``copy``, ``check``), byte-exact, multipart included (5 MiB parts), on the live gateway of
tests/s3/conftest.py. Both come from scripts/install-system-deps.sh (CI runs it); without them
these tests fail rather than skip."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from .conftest import Gateway

pytestmark = pytest.mark.slow
AWS = "/usr/bin/aws"
MIB = 1024 * 1024


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def make_tree(root: Path) -> dict[str, bytes]:
    rnd = random.Random(7)
    files = {
        "a.txt": b"hello\n",
        "empty": b"",
        "sub/b.bin": rnd.randbytes(200_000),
        "sub/deeper/c d.bin": rnd.randbytes(3000),
        "big.bin": rnd.randbytes(6 * MIB + 1234),  # multipart with 5 MiB parts
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def aws(gw: Gateway, *args: str, role: str = "admin", check: bool = True) -> str:
    quiet = (
        ["--only-show-errors"] if args[:2] in (("s3", "cp"), ("s3", "sync"), ("s3", "rm")) else []
    )
    r = subprocess.run(
        [AWS, "--endpoint-url", gw.endpoint, *args, *quiet],
        env=gw.env(role), capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    if check and r.returncode != 0:
        raise AssertionError(f"aws {' '.join(args)} failed: {r.stderr.decode()[-2000:]}")
    return (r.stdout + r.stderr).decode()


def test_aws_cli_cp_ls_sync_rm(gateway: Gateway, tmp_path: Path) -> None:
    """Five aws CLI runs (each costs ~1 s of start-up; wrong signatures are tested with boto3):
    cp (multipart), sync up (the copied file is skipped: same size, newer), ls, sync down
    (byte-exact), rm."""
    src = tmp_path / "src"
    files = make_tree(src)
    gateway.client().create_bucket(Bucket="cli")
    aws(gateway, "s3", "cp", str(src / "big.bin"), "s3://cli/tree/big.bin")
    aws(gateway, "s3", "sync", str(src), "s3://cli/tree/")
    listing = " ".join(aws(gateway, "s3", "ls", "--recursive", "s3://cli/tree/").split())
    for name, data in files.items():
        assert f"{len(data)} tree/{name}" in listing
    down = tmp_path / "down"
    aws(gateway, "s3", "sync", "s3://cli/tree/", str(down))
    assert tree(down) == files
    aws(gateway, "s3", "rm", "--recursive", "s3://cli/")
    assert "Contents" not in gateway.client().list_objects_v2(Bucket="cli")


def test_rclone_copy_and_check(gateway: Gateway, tmp_path: Path) -> None:
    from .conftest import KEYS

    ak, sk = KEYS["write"]
    conf = tmp_path / "rclone.conf"
    conf.write_text(
        "[ares]\ntype = s3\nprovider = Other\n"
        f"access_key_id = {ak}\nsecret_access_key = {sk}\n"
        f"endpoint = {gateway.endpoint}\nregion = us-east-1\nforce_path_style = true\n"
    )
    gateway.client().create_bucket(Bucket="rcl")
    src = tmp_path / "src"
    files = make_tree(src)
    env = gateway.env("write")
    env["RCLONE_CONFIG"] = str(conf)

    def rclone(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["rclone", "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", "--retries", "1",
             "--low-level-retries", "1", *args],
            env=env, capture_output=True, timeout=120, check=False,
        )  # fmt: skip

    r = rclone("copy", str(src), "ares:rcl/t")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    r = rclone("check", str(src), "ares:rcl/t")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    back = tmp_path / "back"
    r = rclone("copy", "ares:rcl/t", str(back))
    assert r.returncode == 0 and tree(back) == files
    (src / "sub" / "b.bin").write_bytes(b"different")  # check is not vacuous
    r = rclone("check", str(src), "ares:rcl/t")
    assert r.returncode != 0 and b"1 differences found" in r.stderr


def test_objects_survive_a_server_crash(gateway: Gateway) -> None:
    """A server of the three is killed: PUT (inline, to a data file, multipart) and GET go on
    through the other two (a quorum), and what was written before is read back whole."""
    s3 = gateway.client()
    s3.create_bucket(Bucket="crash")
    before = random.Random(1).randbytes(300_000)
    s3.put_object(Bucket="crash", Key="before", Body=before)
    gateway.lc.kill("s1")
    try:
        after = random.Random(2).randbytes(200_000)
        s3.put_object(Bucket="crash", Key="after", Body=after)
        s3.put_object(Bucket="crash", Key="small", Body=b"tiny")
        up = s3.create_multipart_upload(Bucket="crash", Key="mp")["UploadId"]
        etag = s3.upload_part(Bucket="crash", Key="mp", UploadId=up, PartNumber=1, Body=after)
        s3.complete_multipart_upload(
            Bucket="crash", Key="mp", UploadId=up,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag["ETag"]}]},
        )  # fmt: skip
        assert s3.get_object(Bucket="crash", Key="before")["Body"].read() == before
        assert s3.get_object(Bucket="crash", Key="after")["Body"].read() == after
        assert s3.get_object(Bucket="crash", Key="mp")["Body"].read() == after
        assert s3.get_object(Bucket="crash", Key="small")["Body"].read() == b"tiny"
    finally:
        gateway.lc.restart("s1")
