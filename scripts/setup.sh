#!/bin/sh
# Install what strata's demo and tests need, when it is missing: Debian packages for the
# peer tools and kernel helpers, and a Python virtualenv with strata and its dev tools.
set -eu
cd "$(dirname "$0")/.."

PACKAGES="skopeo umoci buildah podman runc docker.io docker-registry debootstrap busybox-static fuse3 uidmap attr libcap2-bin zstd curl python3-venv libseccomp2 iproute2 iptables"
missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages:$missing (run as root to install them)" >&2
        exit 1
    fi
    echo "setup: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.strata-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/pip install -q -e '.[dev]'
    touch "$stamp"
fi
