"""One instance's ``/metrics``, fetched and parsed into plain numbers the collector can subtract.

Why a flat mapping and not prometheus_client's families: the collector only ever asks "what
is this series now, and what was it at the last scrape", and a ``(sample name, labels)`` key
answers that directly for counters, gauges and histogram buckets alike. Parsing is
prometheus_client's own (:func:`text_string_to_metric_families`), so whatever a process
exposes in the text format is read the way Prometheus reads it.

``_created`` samples are kept apart: they say when a counter started, so a counter that
started again (the process restarted under the same instance id) is recognised as reset even
when its new value is not below the old one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: hashable, one order
Key = tuple[str, Labels]  # (sample name, labels)
_GROWING = frozenset({"counter", "histogram"})


def labels_of(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


@dataclass(frozen=True)
class Scrape:
    """Every sample of one scrape: values, counter start times, and the families present."""

    values: Mapping[Key, float] = field(default_factory=dict)
    created: Mapping[Key, float] = field(default_factory=dict)  # by (family name, labels without le)
    families: frozenset[str] = frozenset()  # family names, also those without a sample yet
    monotonic: frozenset[Key] = frozenset()  # counter and histogram samples: they only grow

    def series(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        """Every sample called ``name``, with its labels as a dict."""
        for (sample, labels), value in self.values.items():
            if sample == name:
                yield dict(labels), value

    def get(self, name: str, labels: Labels) -> float | None:
        return self.values.get((name, labels))

    def created_at(self, name: str, labels: Labels) -> float | None:
        """When the counter (or histogram) behind sample ``name`` started, if it says."""
        return self.created.get((family_of(name), tuple(p for p in labels if p[0] != "le")))


def family_of(sample: str) -> str:
    """``x_total`` -> ``x``; a histogram's ``x_bucket``/``x_count``/``x_sum`` -> ``x``."""
    for suffix in ("_total", "_bucket", "_count", "_sum"):
        if sample.endswith(suffix):
            return sample.removesuffix(suffix)
    return sample


def parse(text: str) -> Scrape:
    """Parse the Prometheus text format; raises ValueError for text that is not."""
    values: dict[Key, float] = {}
    created: dict[Key, float] = {}
    families: set[str] = set()
    monotonic: set[Key] = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        growing = family.type in _GROWING
        for sample in family.samples:
            key = (sample.name, labels_of(sample.labels))
            if sample.name.endswith("_created"):
                created[(sample.name.removesuffix("_created"), key[1])] = sample.value
                continue
            values[key] = sample.value
            if growing or (family.type == "unknown" and sample.name.endswith("_total")):
                monotonic.add(key)  # an untyped ``_total`` is a counter by convention
    return Scrape(values, created, frozenset(families), frozenset(monotonic))


async def fetch(session: aiohttp.ClientSession, url: str, limit: float) -> Scrape:
    """GET ``url`` within ``limit`` seconds and parse it; raises OSError, aiohttp.ClientError, TimeoutError or ValueError."""
    async with asyncio.timeout(limit):
        async with session.get(url) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            text = await response.text()
    return parse(text)
