"""Hand-written Prometheus expositions for the collector's tests, in the contract's names.

Written as prometheus_client writes them (``# TYPE x_total counter``, ``x_created`` samples),
so the parser sees what it sees from a real process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

BOUNDS = ("0.005", "0.01", "0.025", "0.05", "0.1", "+Inf")


def rpc(
    side: str,
    proto: str,
    method: str = "Get",
    codes: Mapping[str, int] | None = None,
    buckets: Sequence[int] = (),
    created: float = 1.0,
) -> str:
    """``grpc_<side>_*`` of one method: handled by code, and cumulative bucket counts over BOUNDS."""
    labels = f'grpc_service="{proto}",grpc_method="{method}",grpc_type="unary"'
    codes = codes or {}
    lines = [f"# TYPE grpc_{side}_started_total counter"]
    lines.append(f"grpc_{side}_started_total{{{labels}}} {sum(codes.values())}")
    lines.append(f"# TYPE grpc_{side}_started_created gauge")
    lines.append(f"grpc_{side}_started_created{{{labels}}} {created}")
    lines.append(f"# TYPE grpc_{side}_handled_total counter")
    for code, count in codes.items():
        lines.append(f'grpc_{side}_handled_total{{{labels},grpc_code="{code}"}} {count}')
    lines.append(f"# TYPE grpc_{side}_handled_created gauge")
    for code in codes:
        lines.append(f'grpc_{side}_handled_created{{{labels},grpc_code="{code}"}} {created}')
    if buckets:
        lines.append(f"# TYPE grpc_{side}_handling_seconds histogram")
        for bound, count in zip(BOUNDS, buckets, strict=True):
            lines.append(f'grpc_{side}_handling_seconds_bucket{{{labels},le="{bound}"}} {count}')
        lines.append(f"grpc_{side}_handling_seconds_count{{{labels}}} {buckets[-1]}")
        lines.append(f"grpc_{side}_handling_seconds_sum{{{labels}}} 0.1")
    return "\n".join(lines) + "\n"


def counter(name: str, value: float, **labels: str) -> str:
    pairs = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"# TYPE {name}_total counter\n{name}_total{{{pairs}}} {value}\n"


def gauge(name: str, value: float, **labels: str) -> str:
    pairs = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"# TYPE {name} gauge\n{name}{{{pairs}}} {value}\n"
