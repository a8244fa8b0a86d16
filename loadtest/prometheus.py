"""The one reader of the Prometheus text format that Triton's and the gateway's /metrics serve:
the load test's breakdowns, the benchmarks and the tests all read samples through it."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

logger = logging.getLogger(__name__)


def samples(text: str) -> list[Sample]:
    """Every sample of a /metrics page, counters under their ``_total`` names."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def read(url: str, timeout: float = 5.0) -> list[Sample]:
    """The samples a /metrics endpoint serves now (OSError when it cannot be read)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return samples(response.read().decode())


def scrape(url: str, timeout: float = 5.0) -> list[Sample] | None:
    """As :func:`read`, or None (logged) when the endpoint cannot be read: the load test goes on
    without the breakdown."""
    try:
        return read(url, timeout)
    except OSError as e:
        logger.warning("cannot scrape metrics at %s (%s); the report will have no breakdown from it", url, e)
        return None


def total(found: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of the ``name`` samples whose labels include ``labels`` (0 when none)."""
    return sum(s.value for s in found if s.name == name and labels.items() <= s.labels.items())
