"""A plain grpcio client that finds its servers through xDS, recording every call it makes.

Run as ``python -m tests.support.xds_client --target xds:///echo --out FILE`` with
``GRPC_XDS_BOOTSTRAP`` naming a bootstrap file (``mesh xds --bootstrap-out``). It imports
nothing of tsunagu, on purpose: it stands for any gRPC client of another team, which gets
balancing, retries, ejection and mTLS from the control plane alone.

``--workers`` threads call the raw-bytes method ``--method`` in a closed loop, each call with
``--timeout``, for at most ``--calls`` calls or ``--seconds`` seconds, or until the file
``--stop`` exists. Each call is one JSON line in ``--out``: its start and end (``time.time()``),
and either the answer (the echo server's label before ``|``) or the status code name. With
``--plaintext`` the channel uses insecure credentials instead of xDS credentials (mTLS from
the clusters' transport sockets, falling back to plaintext where a cluster has none).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.experimental


def _credentials(plaintext: bool) -> grpc.ChannelCredentials:
    insecure = grpc.experimental.insecure_channel_credentials()
    return insecure if plaintext else grpc.xds_channel_credentials(fallback_credentials=insecure)


def run(options: argparse.Namespace) -> int:
    """Make the calls; return how many failed."""
    out = open(options.out, "a", buffering=1)  # noqa: SIM115 - one line per call, flushed as written
    lock = threading.Lock()
    budget = {"left": options.calls}
    failures = [0]
    deadline = time.monotonic() + options.seconds
    stop = Path(options.stop) if options.stop else None
    channel = grpc.secure_channel(options.target, _credentials(options.plaintext))
    call = channel.unary_unary(options.method)

    def more() -> bool:
        if time.monotonic() >= deadline or (stop is not None and stop.exists()):
            return False
        with lock:
            if budget["left"] <= 0:
                return False
            budget["left"] -= 1
            return True

    def worker(number: int) -> None:
        sequence = 0
        while more():
            sequence += 1
            started = time.time()
            record: dict[str, Any] = {"start": started, "worker": number}
            try:
                answer: bytes = call(f"{number}-{sequence}".encode(), timeout=options.timeout)
                record["label"] = answer.split(b"|", 1)[0].decode()
            except grpc.RpcError as error:
                record["code"] = error.code().name if error.code() is not None else "UNKNOWN"
                record["details"] = (error.details() or "")[:200]
                with lock:
                    failures[0] += 1
            record["end"] = time.time()
            with lock:
                out.write(json.dumps(record) + "\n")
            if options.pause:
                time.sleep(options.pause)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(options.workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    channel.close()
    out.close()
    return failures[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", default="/tsunagu.test.Echo/Echo")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--pause", type=float, default=0.0, help="seconds each worker waits between calls")
    parser.add_argument("--stop", help="stop once this file exists")
    parser.add_argument("--plaintext", action="store_true")
    failed = run(parser.parse_args())
    print(json.dumps({"failed": failed}), flush=True)


if __name__ == "__main__":
    main()
