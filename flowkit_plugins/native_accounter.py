"""The ``native`` accounter (the default ACCOUNTER): flow aggregation in C.

Same results as the ``python`` reference accounter, at a fraction of the cost: records are
merged in a C hash table, the kernel flow maps are drained with batch syscalls (flipping between
two maps so no packet is lost) and the ring buffer is consumed by a C callback. The C building
blocks are in :mod:`flowkit.accounting`; see ``docs/accounter.md``.

It has exactly the semantics of the pure-Python reference accounter
(``flowkit_plugins/python_accounter.py``): records are merged by key (packets and bytes summed,
``first_ns`` the smallest non-zero, ``last_ns`` the largest, flags OR-ed, DSCP from the newest
record, sampling the largest); ``poll`` evicts whenever the cache reaches CACHE_MAX_FLOWS flows;
``evict`` takes everything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from flowkit import hookimpl
from flowkit.accounting import (
    KERNEL_COUNTERS,
    DrainerStats,
    FlowBufferPool,
    FlowOutput,
    FlowTable,
    KernelDrainer,
    RingBufferReader,
    boot_offset_ns,
    read_kernel_counters,
)
from flowkit.components import AccounterSpec, ComponentContext, KernelMaps, Tracer
from flowkit.metrics import Metrics
from flowkit.model import RECORD_DTYPE, FlowArray, FlowBatch
from flowkit.native import NativeError
from flowkit.native.flows import counter_sum as native_counter_sum
from flowkit.ratelimit import DEFAULT_INTERVAL

log = logging.getLogger(__name__)

LOSS_LOG_INTERVAL = DEFAULT_INTERVAL
"""Seconds between two log lines about packets the kernel lost (each says how many since the
previous one; the ``kernel_ringbuf_lost_packets`` metric is always current)."""

_KERNEL_COUNTER_METRICS: tuple[tuple[str, str, str], ...] = (
    ("kernel_map_full_packets",
     "Packets sent to the ring buffer because the kernel flow map was full", "ringbuf_records"),
    ("kernel_ringbuf_lost_packets",
     "Packets lost because both the kernel flow map and the ring buffer were full",
     "ringbuf_lost"),
    ("kernel_filtered_packets",
     "Packets not kept because of FLOW_FILTER_RULES (rejected, or matched no rule)", "filtered"),
    ("kernel_feature_events_lost",
     "Drop, RTT or DNS events lost because the kernel feature map was full", "extra_lost"),
    ("kernel_dns_untracked_queries",
     "DNS queries whose response latency cannot be measured (query map update failed)",
     "dns_untracked"),
)
"""The eBPF program's counters served as gauges: (metric, help, counter name)."""


def _make(context: ComponentContext) -> NativeAccounter:
    # A tracer whose times are already unix ns (replay) says so with boot_offset_ns = 0.
    return NativeAccounter(
        context.tracer, context.config.cache_max_flows, metrics=context.metrics,
        boot_offset_ns=getattr(context.tracer, "boot_offset_ns", None),
    )


@hookimpl
def flowkit_accounters() -> list[AccounterSpec]:
    """The ``native`` accounter."""
    return [
        AccounterSpec(
            name="native",
            factory=_make,
            description="C accounter: kernel map drains, ring buffer and merging in C (default)",
        )
    ]


class NativeAccounter:
    """The ``native`` accounter: the reference semantics, computed in C.

    With a tracer that exposes :attr:`~flowkit.components.Tracer.kernel_maps`, the kernel is
    drained directly in C (:class:`KernelDrainer`) and the ring buffer consumed in C
    (:class:`RingBufferReader`); otherwise the tracer's ``read_events`` / ``read_aggregates``
    arrays are merged in C.

    Batches returned by :meth:`poll` and :meth:`evict` are views over pooled C buffers: release
    them (the agent does once every exporter is done) so that the buffers are reused.

    ``boot_offset_ns`` fixes the monotonic-to-unix offset; by default it is measured at every
    eviction, so that wall-clock adjustments are followed.
    """

    RINGBUF_BATCHES_PER_POLL = 4
    """How many full caches one :meth:`poll` may evict from ring-buffer records."""

    def __init__(
        self,
        tracer: Tracer | None,
        max_flows: int,
        boot_offset_ns: int | None = None,
        metrics: Metrics | None = None,
        use_kernel_maps: bool = True,
    ) -> None:
        if max_flows <= 0:
            raise ValueError("max_flows (CACHE_MAX_FLOWS) must be positive")
        self._tracer = tracer
        self._max_flows = max_flows
        self._fixed_offset = boot_offset_ns
        self._use_kernel_maps = use_kernel_maps
        self._table = FlowTable(max_flows)
        self._pool = FlowBufferPool(max_flows)
        self._drainer: KernelDrainer | None = None
        self._reader: RingBufferReader | None = None
        self._stage: FlowTable | None = None
        self._kernel_maps: KernelMaps | None = None
        self._lock = threading.Lock()
        self._woken = threading.Event()  # poll()'s wait without a ring buffer; set by wake()
        self._closed = False
        self.evicted_flows = 0
        """Flows handed out in batches so far."""
        self.evictions = 0
        """Batches handed out so far (including early evictions)."""
        self._last_kernel_counters: dict[str, int] = dict.fromkeys(KERNEL_COUNTERS, 0)
        self._lost_reported = 0
        self._loss_logged_at: float | None = None
        self._attach_kernel()
        if metrics is not None:
            self._register_metrics(metrics)

    # -- kernel objects ---------------------------------------------------------------------
    def _attach_kernel(self) -> KernelMaps | None:
        """Build the drainer and reader once the tracer has kernel maps (it may load late)."""
        if self._kernel_maps is not None or not self._use_kernel_maps or self._tracer is None:
            return self._kernel_maps
        maps = self._tracer.kernel_maps
        if maps is None:
            return None
        self._drainer = KernelDrainer(maps)
        # A negative fd means "no ring buffer" (hand-made maps in tests and benchmarks).
        self._reader = RingBufferReader(maps.ringbuf_fd) if maps.ringbuf_fd >= 0 else None
        self._stage = FlowTable(maps.max_entries)
        self._kernel_maps = maps
        return maps

    @property
    def uses_kernel_maps(self) -> bool:
        """Whether this accounter drains the kernel itself."""
        return self._attach_kernel() is not None

    def _offset(self) -> int:
        return boot_offset_ns() if self._fixed_offset is None else self._fixed_offset

    def _output(self, capacity: int) -> FlowOutput:
        return FlowOutput(self._pool, capacity, self._offset())

    def _finish(self, output: FlowOutput) -> FlowBatch:
        self.evicted_flows += output.count
        self.evictions += 1
        return output.batch()

    # -- Accounter protocol -----------------------------------------------------------------
    def add_records(self, records: FlowArray) -> FlowBatch | None:
        """Merge records (:data:`RECORD_DTYPE`) in order; when the cache reaches
        CACHE_MAX_FLOWS flows it is evicted, and the evicted flows are returned as one batch
        (``None`` when nothing was evicted)."""
        with self._lock:
            return self._add_records(records)

    def _add_records(self, records: FlowArray) -> FlowBatch | None:
        table, limit = self._live_table(), self._max_flows
        consumed = table.add_records(records, limit)
        if len(table) < limit:
            return None
        # Full: evict, then merge the rest (which may fill the cache again, maybe repeatedly).
        rest = records[consumed:]
        output = self._output(len(table) + len(rest))
        table.evict_into(output)
        table.add_records_evicting(rest, limit, output)
        return self._finish(output)

    def poll(self, timeout: float) -> FlowBatch | None:
        """Wait up to ``timeout`` seconds for single-packet records and merge them; returns the
        evicted flows if the cache filled up, else ``None``."""
        if self._tracer is None:
            return None
        if self._attach_kernel() is None:
            records = self._tracer.read_events(timeout)
            return self.add_records(records) if len(records) else None
        if self._reader is None:
            self._woken.wait(timeout)
            self._woken.clear()
            return None
        # Wait without the lock (the wait may last until the next eviction), then consume.
        if timeout > 0 and not self._reader.wait(timeout):
            return None
        with self._lock:
            reader, table = self._reader, self._live_table()
            if reader is None:  # closed meanwhile
                return None
            output = self._output(self._max_flows * self.RINGBUF_BATCHES_PER_POLL)
            reader.poll_into(table, self._max_flows, output, 0)
            if output.count == 0:
                output.discard()
                return None
            return self._finish(output)

    @property
    def wakeable(self) -> bool:
        """True when :meth:`wake` ends a :meth:`poll` at once (the kernel is drained directly),
        so that the caller can wait in one :meth:`poll` until the next eviction is due."""
        return self._attach_kernel() is not None

    def wake(self) -> None:
        """End the current :meth:`poll`'s wait (or the next one's) at once; for another thread
        (the agent, when it stops). Without :attr:`wakeable`, a poll ends at its timeout."""
        reader = self._reader
        if reader is not None:
            try:
                reader.wake()
            except ValueError:  # closed meanwhile: no poll to end
                pass
        self._woken.set()

    def evict(self) -> FlowBatch:
        """Merge everything the tracer aggregated and evict all flows as one batch."""
        self._report_losses()
        if self._attach_kernel() is None:
            aggregates = (
                self._tracer.read_aggregates()
                if self._tracer is not None
                else np.zeros(0, dtype=RECORD_DTYPE)
            )
            with self._lock:
                table = self._live_table()
                output = self._output(len(table) + len(aggregates))
                table.add_records_evicting(aggregates, self._max_flows, output)
                table.evict_into(output)
                return self._finish(output)
        with self._lock:
            drainer, stage, table = self._drainer, self._stage, self._live_table()
            if drainer is None or stage is None:  # pragma: no cover - set with kernel maps
                raise RuntimeError("native accounter: kernel drainer missing")
            drainer.drain_into(stage)
            output = self._output(len(table) + len(stage))
            if len(table) == 0:
                # Nothing to merge with (the usual case). The drained keys are distinct, so
                # early evictions would only split the same flows: evict them directly.
                stage.evict_into(output)
            else:
                table.absorb(stage, self._max_flows, output)
                table.evict_into(output)
            return self._finish(output)

    def close(self) -> None:
        """Free the C objects and the buffer pool. Batches already handed out stay valid."""
        if not self._closed:
            self._report_losses(final=True)  # what the rate limit held back is logged now
        with self._lock:
            self._closed = True
            for closable in (self._reader, self._drainer, self._stage, self._table):
                if closable is not None:
                    closable.close()
            self._pool.clear()

    def _live_table(self) -> FlowTable:
        if self._closed:
            raise ValueError("this NativeAccounter is closed")
        return self._table

    # -- metrics ----------------------------------------------------------------------------
    def __len__(self) -> int:
        """Flows currently cached."""
        return len(self._table)

    def drainer_stats(self) -> DrainerStats | None:
        """Kernel drain counters, or ``None`` without kernel maps (or once closed)."""
        drainer = self._drainer
        if drainer is None:
            return None
        try:
            return drainer.stats()
        except ValueError:  # closed meanwhile
            return None

    def ringbuf_records(self) -> int:
        """Ring-buffer records consumed so far (0 without kernel maps or once closed)."""
        reader = self._reader
        if reader is None:
            return 0
        try:
            return reader.records()
        except ValueError:  # closed meanwhile
            return 0

    def _report_losses(self, final: bool = False) -> None:
        """Log packets the kernel could not keep (the flow map and the ring buffer were both
        full): at the first eviction that sees some, then at most every
        :data:`LOSS_LOG_INTERVAL` seconds with what was lost since the previous line, and once
        more when the accounter closes if some were not logged yet (``final``)."""
        if self._kernel_maps is None:
            return
        lost = self.kernel_counter("ringbuf_lost")
        new = lost - self._lost_reported
        if new <= 0:
            return
        now = time.monotonic()
        logged_at = self._loss_logged_at
        if not final and logged_at is not None and now - logged_at < LOSS_LOG_INTERVAL:
            return  # counted in the metric now, in the log with the next line
        self._loss_logged_at = now
        self._lost_reported = lost
        log.warning(
            "kernel: %d packets lost %s (%d in all): the flow map (CACHE_MAX_FLOWS=%d) and the "
            "ring buffer were both full; raise CACHE_MAX_FLOWS or EBPF_RINGBUF_SIZE, or shorten "
            "CACHE_ACTIVE_TIMEOUT",
            new, "since the start" if logged_at is None else
            f"in the last {now - logged_at:.0f} s", lost, self._max_flows,
        )

    def kernel_counters(self) -> dict[str, int]:
        """The eBPF program's counters (last known values once the maps are gone)."""
        maps = self._kernel_maps
        if maps is not None and maps.counters_fd >= 0 and not self._closed:
            try:
                self._last_kernel_counters = read_kernel_counters(maps)
            except (NativeError, OSError):
                pass
        return dict(self._last_kernel_counters)

    def kernel_counter(self, name: str) -> int:
        """One counter of the eBPF program (its last known value once the maps are gone): one
        read of the ``counters`` map instead of all of them."""
        maps = self._kernel_maps
        if maps is not None and maps.counters_fd >= 0 and not self._closed:
            try:
                self._last_kernel_counters[name] = native_counter_sum(
                    maps.counters_fd, KERNEL_COUNTERS[name], maps.ncpus)
            except (NativeError, OSError):
                pass
        return self._last_kernel_counters[name]

    def _register_metrics(self, metrics: Metrics) -> None:
        def drains() -> float:
            stats = self.drainer_stats()
            return 0.0 if stats is None else float(stats.drains)

        metrics.gauge_callback(
            "accounter_flows_evicted", "Flows evicted by the native accounter",
            lambda: float(self.evicted_flows),
        )
        metrics.gauge_callback("accounter_drains", "Kernel flow map drains", drains)
        metrics.gauge_callback(
            "accounter_ringbuf_records", "Ring-buffer records consumed by the native accounter",
            lambda: float(self.ringbuf_records()),
        )
        def kernel(counter: str) -> Callable[[], float]:
            return lambda: float(self.kernel_counter(counter))

        for metric, help_text, counter in _KERNEL_COUNTER_METRICS:
            metrics.gauge_callback(metric, help_text, kernel(counter))
