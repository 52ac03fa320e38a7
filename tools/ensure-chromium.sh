#!/usr/bin/env bash
# Make sure Debian's chromium is on this machine: the dashboard's browser test
# (tests/integration/dashboard/) drives it headless through Playwright for Python, with
# `executable_path=/usr/bin/chromium`; Playwright's own browser download is never used.
#
# Why: `make test` runs that test, and a fresh Debian machine has no browser. What is missing
# is installed from Debian's packages with the system's apt (as root, or through `sudo -n`);
# the package index is refreshed only when the package is not found. Prints the browser's
# path; exits 0 when it is there, 1 otherwise with the reason on stderr.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

fail() {
    echo "ensure-chromium: $*" >&2
    exit 1
}

found() {
    command -v chromium 2>/dev/null || { [[ -x /usr/bin/chromium ]] && echo /usr/bin/chromium; }
}

if browser=$(found); then
    echo "$browser"
    exit 0
fi

as_root=()
if [[ $EUID -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        fail "installing chromium needs root (or sudo without a password)"
    fi
fi
command -v apt-get >/dev/null 2>&1 || fail "chromium not installed and there is no apt-get to install it"
echo "ensure-chromium: installing Debian's chromium" >&2
export DEBIAN_FRONTEND=noninteractive
install=(apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core)
if ! "${as_root[@]}" "${install[@]}" >&2; then
    "${as_root[@]}" apt-get update -q >&2 || fail "apt-get update failed"
    "${as_root[@]}" "${install[@]}" >&2 || fail "apt-get install chromium failed"
fi
browser=$(found) || fail "chromium was installed but no chromium binary is on PATH"
echo "$browser"
