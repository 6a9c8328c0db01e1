#!/usr/bin/env bash
# Debian packages the tests need, installed once by both README.md's test command and .ci/run:
#   fuse3 + libfuse3-dev + pkg-config  `ares mount` (pyfuse3 builds against libfuse3)
#   rclone, awscli                     the S3 gateway is tested with the real clients
#   etcd-server                        `ares bench --peer etcd` (a yardstick; never a dependency)
#   rsync                              tests/mount: an `rsync -a` round trip through `ares mount`
# Skips what is already installed; needs root (or sudo) only when something is missing.
set -euo pipefail
packages=(fuse3 libfuse3-dev pkg-config rclone awscli etcd-server rsync)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install-system-deps: apt-get not found; install ${missing[*]} by hand" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-system-deps: installed ${missing[*]}"
