#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers at 127.0.0.1:5672 (RABBITMQ_HOST / RABBITMQ_PORT).
#
# Why: the order service's outbox relay and the event consumers need a real broker, and a
# fresh Debian machine may have none. In order:
#   1. a broker already answers: do nothing (this machine's usual case);
#   2. rabbitmq-server is not installed: install Debian's package, non-interactively, with the
#      system's own apt (as root, or through `sudo -n`); the package index is refreshed only when
#      the package is not found, and nothing else on the system is changed;
#   3. start it with `rabbitmq-server -detached` and wait (polling the port, at most
#      RABBITMQ_WAIT_SECONDS, 90 by default) until it answers.
# Exits 0 when a broker answers, 1 otherwise (with the reason on stderr). `.ci/run` fails on
# that; `make run` only reports it and starts the shop anyway (events wait in the outbox).
set -euo pipefail

HOST="${RABBITMQ_HOST:-127.0.0.1}"
PORT="${RABBITMQ_PORT:-5672}"
WAIT_SECONDS="${RABBITMQ_WAIT_SECONDS:-90}"
export PATH="$PATH:/usr/sbin:/sbin"

answers() {
    # A TCP connect is enough to know a broker listens; bash's /dev/tcp needs no extra tool.
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$PORT" 2>/dev/null
}

fail() {
    echo "ensure-rabbitmq: $*" >&2
    exit 1
}

if answers; then
    echo "ensure-rabbitmq: RabbitMQ answers at $HOST:$PORT"
    exit 0
fi
case "$HOST" in
    127.0.0.1 | localhost) ;;
    *) fail "nothing answers at $HOST:$PORT and it is not this machine: start that broker" ;;
esac

as_root=()
if [[ $EUID -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        fail "nothing answers at $HOST:$PORT and installing/starting rabbitmq-server needs root (or sudo without a password)"
    fi
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || fail "rabbitmq-server is not installed and there is no apt-get to install it"
    echo "ensure-rabbitmq: installing Debian's rabbitmq-server" >&2
    export DEBIAN_FRONTEND=noninteractive
    install=(apt-get install -y -q --no-install-recommends rabbitmq-server)
    if ! "${as_root[@]}" "${install[@]}" >&2; then
        # Most likely an empty or stale package index (a fresh container): refresh it once.
        "${as_root[@]}" apt-get update -q >&2 || fail "apt-get update failed"
        "${as_root[@]}" "${install[@]}" >&2 || fail "apt-get install rabbitmq-server failed"
    fi
fi

# The package's own start-up (when the system runs services) may already have started it.
if ! answers; then
    echo "ensure-rabbitmq: starting rabbitmq-server (detached)" >&2
    "${as_root[@]}" rabbitmq-server -detached >&2 || fail "rabbitmq-server -detached failed"
fi

deadline=$((SECONDS + WAIT_SECONDS))
until answers; do
    if ((SECONDS >= deadline)); then
        fail "RabbitMQ did not answer at $HOST:$PORT within ${WAIT_SECONDS}s (see /var/log/rabbitmq/)"
    fi
    sleep 1
done
echo "ensure-rabbitmq: RabbitMQ answers at $HOST:$PORT"
