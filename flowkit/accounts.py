"""The books of every exporter: each evicted flow is delivered or dropped with a reason.

The agent keeps one :class:`ExporterAccount` per exporter. The rule it enforces is::

    evicted == exported + sum(dropped[reason])      for every exporter, shutdown included

An exporter that only returns from ``export`` once its sink has the flows needs to do nothing:
the agent counts a returned ``export`` as delivered and a raised one as ``dropped{reason=error}``.
An exporter that buffers and delivers later (gRPC, Kafka) sets the class attribute
``accounts_delivery = True`` and reports through ``context.account`` itself::

    self._account = context.account
    ...
    self._account.delivered(len(records))            # the sink confirmed them
    self._account.dropped(len(records), "rejected")  # they will never arrive

This account is the only drop counter an exporter needs: every built-in exporter reports
every loss here, its disk spool's included, and keeps no drop family of its own. The reasons
flowkit uses, with their meaning, are :data:`flowkit.delivery.DROP_REASONS` (the table in
docs/exporters.md and docs/plugins.md); a plugin may add its own short snake_case reasons.
With a disk spool the per-run rule gains two terms (``recovered`` and ``spooled``, see
:meth:`flowkit.agent.ExporterWorker.books`) that cancel out over the runs sharing the spool.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowkit.metrics import Metrics


class ExporterAccount:
    """Flows one exporter delivered, and flows it dropped by reason (thread-safe).

    Backed by the metrics ``exported_flows{exporter}`` and ``dropped_flows{exporter,reason}``;
    exact integer totals are kept here for the agent's final log line.
    """

    def __init__(self, exporter: str, metrics: Metrics | None = None) -> None:
        self.exporter = exporter
        self._lock = threading.Lock()
        self._exported = 0
        self._dropped: dict[str, int] = {}
        self._exported_metric = None
        self._dropped_metric = None
        if metrics is not None:
            self._exported_metric = metrics.counter(
                "exported_flows", "Flows an exporter delivered to its sink", ["exporter"]
            ).labels(exporter=exporter)
            self._dropped_metric = metrics.counter(
                "dropped_flows", "Flows an exporter will never deliver, by reason",
                ["exporter", "reason"],
            )
            # The reasons every exporter can see (the agent's queue, the stop deadline) are
            # served at 0 from the start, so a scrape or an alert finds them before a drop.
            for reason in ("queue_full", "shutdown"):
                self._dropped_metric.labels(exporter=exporter, reason=reason)

    def delivered(self, flows: int) -> None:
        """``flows`` reached the sink."""
        if flows <= 0:
            return
        with self._lock:
            self._exported += flows
        if self._exported_metric is not None:
            self._exported_metric.inc(flows)

    def dropped(self, flows: int, reason: str) -> None:
        """``flows`` will never reach the sink, because of ``reason`` (a short snake_case word)."""
        if flows <= 0:
            return
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + flows
        if self._dropped_metric is not None:
            self._dropped_metric.labels(exporter=self.exporter, reason=reason).inc(flows)

    @property
    def exported(self) -> int:
        """Flows delivered so far."""
        with self._lock:
            return self._exported

    def dropped_by_reason(self) -> dict[str, int]:
        """Flows dropped so far, by reason."""
        with self._lock:
            return dict(sorted(self._dropped.items()))

    @property
    def dropped_total(self) -> int:
        """Flows dropped so far, all reasons."""
        with self._lock:
            return sum(self._dropped.values())
