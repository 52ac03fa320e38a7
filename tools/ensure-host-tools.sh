#!/usr/bin/env bash
# Make sure the tools the multi-host shop needs are on this machine: `ip` (iproute2) for the
# network namespaces that stand for hosts, and `socat` for the forwards between a namespace and
# the machine's loopback (services/cluster/network.py).
#
# Why: `make cluster` and the cluster tests in `make test` need both, and a fresh Debian machine
# may lack socat. What is missing is installed from Debian's packages with the system's apt (as
# root, or through `sudo -n`); the package index is refreshed only when a package is not found.
# Exits 0 when both are there, 1 otherwise with the reason on stderr.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

fail() {
    echo "ensure-host-tools: $*" >&2
    exit 1
}

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v socat >/dev/null 2>&1 || missing+=(socat)
[[ ${#missing[@]} -eq 0 ]] && exit 0

as_root=()
if [[ $EUID -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        fail "installing ${missing[*]} needs root (or sudo without a password)"
    fi
fi
command -v apt-get >/dev/null 2>&1 || fail "${missing[*]} not installed and there is no apt-get to install them"
echo "ensure-host-tools: installing Debian's ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
install=(apt-get install -y -q --no-install-recommends "${missing[@]}")
if ! "${as_root[@]}" "${install[@]}" >&2; then
    "${as_root[@]}" apt-get update -q >&2 || fail "apt-get update failed"
    "${as_root[@]}" "${install[@]}" >&2 || fail "apt-get install ${missing[*]} failed"
fi
