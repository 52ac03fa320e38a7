"""``mesh top``: the mesh's golden signals in a terminal, refreshed, like ``linkerd viz top/stat``.

Why a terminal view next to the dashboard: on a server (or over SSH) there is no browser,
and an operator asks the same questions there: which service is failing, which caller sees
it, is a breaker open, are sagas stuck. Each frame is one :meth:`MeshObserver.sample`; rates
are over the observer's window, so the first frame has none and ``--json``/``--once`` wait
one interval before the sample they print.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import TextIO

from mesh.observe.collector import MeshObserver
from mesh.observe.model import Golden, MeshView, ResilienceView, as_json

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen


def _rate(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}ms" if value < 1000 else f"{value / 1000:.2f}s"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _golden(golden: Golden) -> str:
    return (
        f"{_rate(golden.requests_per_second):>8}  {_share(golden.success_rate):>8}  "
        f"{_ms(golden.p50_ms):>9}  {_ms(golden.p99_ms):>9}"
    )


def _resilience(row: ResilienceView) -> str | None:
    """One line for a caller -> target whose resilience state is not quiet (None when it is)."""
    parts = []
    if row.open_breakers:
        parts.append("open " + ", ".join(e or "(service)" for e in row.open_breakers))
    if row.half_open_breakers:
        parts.append("half-open " + ", ".join(e or "(service)" for e in row.half_open_breakers))
    if row.ejected_endpoints:
        parts.append(f"ejected {row.ejected_endpoints}")
    for label, value in (
        ("ejections", row.ejections_per_second),
        ("retries", row.retries_per_second),
        ("budget exhausted", row.budget_exhausted_per_second),
        ("fail-fast", row.fail_fast_per_second),
    ):
        if value > 0:
            parts.append(f"{label} {value:.2f}/s")
    return f"  {row.source} -> {row.target}: " + "; ".join(parts) if parts else None


def render(view: MeshView, consul: str = "") -> str:
    """One frame of ``mesh top`` as text."""
    clock = time.strftime("%H:%M:%S", time.localtime(view.at))
    window = f"{view.window_seconds:.1f}s" if view.window_seconds else "- (first sample: no rates yet)"
    lines = [f"mesh top  {consul}  at {clock}  window {window}"]
    if view.consul_error:
        lines.append(f"CONSUL UNREACHABLE (showing the last view): {view.consul_error}")
    header = f"{'RPS':>8}  {'SUCCESS':>8}  {'P50':>9}  {'P99':>9}"
    lines += ["", f"{'SERVICE':<22}{'PASSING':>9}  {header}"]
    for service in view.services:
        passing = sum(1 for i in service.instances if i.health == "passing")
        lines.append(
            f"{service.name:<22}{f'{passing}/{len(service.instances)}':>9}  {_golden(service.inbound)}"
        )
    if view.edges:
        lines += ["", f"{'EDGE (per attempt)':<31}  {header}"]
        for edge in view.edges:
            lines.append(f"{f'{edge.source} -> {edge.target}':<31}  {_golden(edge.golden)}")
    noisy = [line for line in map(_resilience, view.resilience) if line]
    if noisy:
        lines += ["", "RESILIENCE", *noisy]
    if view.sagas is not None:
        sagas = view.sagas
        states = ", ".join(f"{state} {count}" for state, count in sagas.in_flight_by_state.items() if count)
        oldest = "" if sagas.oldest_age_seconds is None else f"; oldest {sagas.oldest_age_seconds:.1f}s"
        lines += [
            "",
            f"SAGAS not terminal: {states or 'none'}{oldest}; "
            f"compensations {sagas.compensations_per_second:.2f}/s",
        ]
    trouble = [
        f"  {i.service:<14} {i.address}:{i.port}  {i.health:<8} node {i.node or '?'}"
        + ("" if i.scraped else f"  metrics: {i.error}")
        for s in view.services
        for i in s.instances
        if i.health != "passing" or not i.scraped
    ]
    if trouble:
        lines += ["", "INSTANCES not passing or not scraped", *trouble]
    return "\n".join(lines)


async def _one(observer: MeshObserver, interval: float) -> MeshView:
    """A sample with rates: a first sample, one interval, and the sample printed."""
    await observer.sample()
    await asyncio.sleep(interval)
    return await observer.sample()


async def _loop(observer: MeshObserver, interval: float, out: TextIO) -> None:
    clear = CLEAR if out.isatty() else "\n"
    while True:
        began = time.monotonic()
        view = await observer.sample()
        out.write(clear + render(view, observer.consul_address) + "\n")
        out.flush()
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))


async def _run(consul: str, token: str, interval: float, window: float, mode: str, out: TextIO) -> int:
    observer = MeshObserver(consul, token, window_seconds=window)
    try:
        if mode == "live":
            await _loop(observer, interval, out)
            return 0
        view = await _one(observer, interval)
        if mode == "json":
            out.write(json.dumps(as_json(view), indent=2) + "\n")
        else:
            out.write(render(view, consul) + "\n")
        if view.consul_error:
            print(f"mesh top: consul: {view.consul_error}", file=sys.stderr)
            return 2
        return 0
    finally:
        await observer.close()


def run_top(
    consul: str,
    *,
    token: str = "",
    interval: float = 2.0,
    window: float = 10.0,
    as_json_output: bool = False,
    once: bool = False,
    out: TextIO | None = None,
) -> int:
    """The ``mesh top`` command body: 0, or 2 when Consul did not answer a one-shot sample."""
    mode = "json" if as_json_output else "once" if once else "live"
    try:
        return asyncio.run(_run(consul, token, interval, window, mode, out or sys.stdout))
    except KeyboardInterrupt:
        return 0
