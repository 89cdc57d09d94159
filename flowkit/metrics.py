"""Agent metrics: Prometheus counters and gauges with NetObserv's names.

Components get a :class:`Metrics` through their context and create their instruments from it;
the prefix (METRICS_PREFIX, default ``ebpf_agent_``) is applied here. Tests and the CLI read
current values with :meth:`Metrics.value`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _CallbackCollector(Collector):
    """Reads values at scrape time (e.g. native counters), instead of keeping copies."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._name, self._doc, self._read = name, documentation, read

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._name, self._doc)
        family.add_metric([], float(self._read()))
        yield family


class Metrics:
    """A registry of the agent's instruments. Thread-safe (prometheus_client's own locking)."""

    def __init__(self, prefix: str = "ebpf_agent_") -> None:
        self.prefix = prefix
        self.registry = CollectorRegistry(auto_describe=True)
        self._instruments: dict[str, Any] = {}

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """Get or create the counter ``<prefix><name>`` (without the ``_total`` suffix)."""
        return self._get(Counter, name, documentation, labelnames)  # type: ignore[no-any-return]

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Get or create the gauge ``<prefix><name>``."""
        return self._get(Gauge, name, documentation, labelnames)  # type: ignore[no-any-return]

    def gauge_callback(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Expose ``read()`` as the gauge ``<prefix><name>``, evaluated at scrape time."""
        full = self.prefix + name
        if full not in self._instruments:
            collector = _CallbackCollector(full, documentation, read)
            self.registry.register(collector)
            self._instruments[full] = collector

    def _get(self, cls: type, name: str, documentation: str, labelnames: Sequence[str]) -> Any:
        full = self.prefix + name
        instrument = self._instruments.get(full)
        if instrument is None:
            instrument = cls(full, documentation, list(labelnames), registry=self.registry)
            self._instruments[full] = instrument
        return instrument

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (``name`` without prefix; counters need ``_total``)."""
        sample = self.registry.get_sample_value(self.prefix + name, labels or None)
        return 0.0 if sample is None else sample
