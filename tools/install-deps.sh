#!/usr/bin/env bash
# Install everything nodepool and its test suite need on a Debian machine
# (bookworm, Python 3.11): system packages, then a virtualenv in .venv with
# nodepool and its test dependencies. Safe to run again; skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# zookeeper: the real server the tests and the quickstart run.
# openssh-server: real sshd hosts for the static driver's tests.
# openssl, qemu-utils: image formats and TLS material for the builder.
PACKAGES="zookeeper openssh-server openssl qemu-utils procps"
# The optional real diskimage-builder test (NODEPOOL_TEST_REAL_DIB=1) builds
# a Debian image: DIB's own tools for that.
if [ -n "${NODEPOOL_TEST_REAL_DIB:-}" ]; then
    PACKAGES="$PACKAGES debootstrap kpartx parted dosfstools e2fsprogs squashfs-tools \
gdisk sudo util-linux xz-utils"
fi
missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $pkg"
done
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    missing="$missing python3-venv"
fi
if [ -n "$missing" ]; then
    echo "Installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Re-install only when the declared dependencies changed.
stamp=".venv/.nodepool-installed"
wanted="$(cat setup.cfg requirements.txt test-requirements.txt constraints.txt \
    | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    # Exactly the versions the suite passed on (constraints.txt).
    .venv/bin/python -m pip install -q -c constraints.txt -e '.[test]' \
        > .venv/pip-install.log 2>&1 \
        || { cat .venv/pip-install.log; exit 1; }
    echo "$wanted" > "$stamp"
fi
.venv/bin/python -c 'import nodepool.zk.client, kazoo, voluptuous, openstack, paramiko, kubernetes, boto3, moto.server, googleapiclient.discovery, google.auth, ibm_vpc, ibm_cloud_sdk_core, ibm_platform_services'
echo "Dependencies installed; nodepool is in .venv"
