#!/usr/bin/env bash
# Install Consul into the project-local tools directory (.tools/bin/consul).
#
# Why this way: Debian bookworm ships no consul package, but bullseye's `consul` (1.8.7) is a
# real Consul reachable through the Debian mirror this machine already uses. We read the mirror
# URIs from the system's sources, point apt at a *separate* sources list, lists directory and
# cache (all under a temporary directory), download the .deb and unpack it with `dpkg -x`. The
# system's apt state (/etc/apt, /var/lib/apt/lists, /var/cache/apt) is never written.
#
# Idempotent: when `consul` is already on PATH or in .tools/bin, it only prints that path.
# Prints the path of the consul binary as its last line.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${CONSUL_INSTALL_DIR:-$ROOT/.tools/bin}"
TARGET="$BIN_DIR/consul"
SUITE="${CONSUL_DEBIAN_SUITE:-bullseye}"

if [[ -x "$TARGET" ]]; then
    echo "$TARGET"
    exit 0
fi
if existing="$(command -v consul 2>/dev/null)"; then
    echo "$existing"
    exit 0
fi

# Collect the Debian archive URIs the system apt is configured with (deb822 or one-line format),
# skipping the security archive: bullseye's consul lives in the main archive.
uris=()
for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    while read -r uri; do uris+=("$uri"); done < <(
        awk 'tolower($1)=="uris:" { for (i=2;i<=NF;i++) print $i }' "$f")
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    while read -r uri; do uris+=("$uri"); done < <(
        awk '$1=="deb" { for (i=2;i<=NF;i++) if ($i !~ /^\[/ && $i !~ /\]$/ && $i ~ /:\/\//) { print $i; break } }' "$f")
done
main_uris=()
for uri in "${uris[@]}"; do
    case "$uri" in
        *security*) ;;
        */debian|*/debian/) main_uris+=("${uri%/}") ;;
    esac
done
if [[ ${#main_uris[@]} -eq 0 ]]; then
    echo "install-consul: no Debian archive URI found in the system's apt sources" >&2
    exit 1
fi
# De-duplicate while keeping order.
mapfile -t main_uris < <(printf '%s\n' "${main_uris[@]}" | awk '!seen[$0]++')

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/download" "$work/root"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
{
    echo "Types: deb"
    echo "URIs: ${main_uris[*]}"
    echo "Suites: $SUITE"
    echo "Components: main"
    [[ -f "$keyring" ]] && echo "Signed-By: $keyring"
} > "$work/consul.sources"

apt_opts=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$work/sourceparts"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
    -o "APT::Get::List-Cleanup=0"
    -o "Debug::NoLocking=1"
)
# apt drops privileges to _apt for downloads; our private temp dirs are not its to write.
[[ $EUID -eq 0 ]] && apt_opts+=(-o "APT::Sandbox::User=root")
mkdir -p "$work/sourceparts"
mv "$work/consul.sources" "$work/sourceparts/consul.sources"

echo "install-consul: fetching the $SUITE index from ${main_uris[*]}" >&2
apt-get "${apt_opts[@]}" -q update >&2
(cd "$work/download" && apt-get "${apt_opts[@]}" -q download consul >&2)

deb="$(ls "$work"/download/consul_*.deb)"
dpkg -x "$deb" "$work/root"
mkdir -p "$BIN_DIR"
# Copy then rename, so a concurrent run (e.g. two test workers) never sees a half-written binary.
install -m 0755 "$work/root/usr/bin/consul" "$TARGET.partial.$$"
mv -f "$TARGET.partial.$$" "$TARGET"
"$TARGET" version >&2
echo "$TARGET"
