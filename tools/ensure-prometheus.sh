#!/usr/bin/env bash
# Make sure Prometheus and promtool are on this machine: Debian's `prometheus` package (2.42 on
# bookworm), which the Prometheus tests run for real (tests/integration/prometheus) and
# docs/prometheus.md runs against the shop.
#
# Why Debian's package: it is what users of this machine's Debian get, and the configs are
# tested against exactly that build (it lacks consul_sd_configs; deploy/prometheus/prometheus.yml
# uses http_sd_configs, which it has). Installed with the system's apt (as root, or through
# `sudo -n`); the package index is refreshed only when the package is not found.
#
# The package would start a system Prometheus on :9090 when installed. It must not: during the
# install a policy-rc.d answering 101 ("action forbidden") is in place, so invoke-rc.d and
# deb-systemd-invoke start nothing (an existing policy-rc.d that already forbids is left as is;
# any other is put back afterwards). Then, only when this script installed the package, its
# service is disabled (and stopped, in case something started it anyway), so a reboot does not
# start it either. Idempotent: exits 0 at once when both binaries are there.
# Exits 0 when both are there, 1 otherwise with the reason on stderr; prints promtool's version.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

fail() {
    echo "ensure-prometheus: $*" >&2
    exit 1
}

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

as_root=()
if [[ $EUID -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        fail "installing Debian's prometheus needs root (or sudo without a password)"
    fi
fi
command -v apt-get >/dev/null 2>&1 || fail "prometheus not installed and there is no apt-get to install it"

was_installed=0
dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q "ok installed" && was_installed=1

# No service may start while the package installs.
policy=/usr/sbin/policy-rc.d
backup=""
placed=0
restore_policy() {
    if [[ $placed -eq 1 ]]; then
        if [[ -n "$backup" ]]; then
            "${as_root[@]}" mv -f "$backup" "$policy"
        else
            "${as_root[@]}" rm -f "$policy"
        fi
    fi
}
trap restore_policy EXIT
forbids=0
if [[ -x "$policy" ]]; then
    "$policy" prometheus start >/dev/null 2>&1 || [[ $? -ne 101 ]] || forbids=1
fi
if [[ $forbids -eq 0 ]]; then
    if [[ -e "$policy" ]]; then
        backup="$("${as_root[@]}" mktemp /usr/sbin/policy-rc.d.ensure-prometheus.XXXXXX)"
        "${as_root[@]}" cp -p "$policy" "$backup"
    fi
    printf '#!/bin/sh\n# tools/ensure-prometheus.sh: no service starts while it installs\nexit 101\n' \
        | "${as_root[@]}" tee "$policy.partial" >/dev/null
    "${as_root[@]}" chmod 0755 "$policy.partial"
    placed=1
    "${as_root[@]}" mv -f "$policy.partial" "$policy"
fi

echo "ensure-prometheus: installing Debian's prometheus (its service is not started)" >&2
export DEBIAN_FRONTEND=noninteractive
# Another apt run (another tool's install) holds the lock for a while: wait for it, not fail.
lock=(-o DPkg::Lock::Timeout=600)
install=(apt-get "${lock[@]}" install -y -q --no-install-recommends prometheus)
if ! "${as_root[@]}" "${install[@]}" >&2; then
    "${as_root[@]}" apt-get "${lock[@]}" update -q >&2 || fail "apt-get update failed"
    "${as_root[@]}" "${install[@]}" >&2 || fail "apt-get install prometheus failed"
fi
restore_policy
placed=0

if [[ $was_installed -eq 0 ]]; then
    # Ours: keep its system service from running now or at boot.
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        "${as_root[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/prometheus ]]; then
        if "${as_root[@]}" /etc/init.d/prometheus status >/dev/null 2>&1; then
            "${as_root[@]}" /etc/init.d/prometheus stop >&2 || true
        fi
        command -v update-rc.d >/dev/null 2>&1 && "${as_root[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
fi

command -v prometheus >/dev/null 2>&1 || fail "prometheus is still not on PATH"
command -v promtool >/dev/null 2>&1 || fail "promtool is still not on PATH"
promtool --version 2>&1 | head -n 1 >&2
