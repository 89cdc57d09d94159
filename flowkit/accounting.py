"""The C building blocks of flow accounting (``csrc/native``), wrapped for Python.

- :class:`FlowTable`, the C flow table (merges records, evicts them as :class:`FlowBatch`);
- :class:`KernelDrainer`, which flips the eBPF program's ``flow_selector`` between its two
  per-CPU flow maps and drains the map the kernel no longer writes to (lossless);
- :class:`RingBufferReader`, which consumes the ``flow_events`` ring buffer in C;
- :class:`FlowBufferPool` and :class:`FlowOutput`, the pooled C buffers evicted flows are
  written into and handed out from as :class:`FlowBatch` views.

The ``native`` accounter component (``flowkit_plugins/native_accounter.py``) combines them; the
``ebpf`` tracer uses the drainer and the reader for its ``read_aggregates`` / ``read_events``.

Every C call releases the GIL (cffi API mode), and the hot loops (per-packet callbacks, per-CPU
merges, time conversion) never call back into Python.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from flowkit.components import KernelMaps
from flowkit.model import FLOW_DTYPE, RECORD_DTYPE, FlowArray, FlowBatch
from flowkit.native import flows as native

__all__ = [
    "DRAIN_MODES",
    "KERNEL_COUNTERS",
    "DrainerStats",
    "FlowBufferPool",
    "FlowOutput",
    "FlowTable",
    "KernelDrainer",
    "RingBufferReader",
    "boot_offset_ns",
    "read_kernel_counters",
]

# Indices of the eBPF ``counters`` map: ``enum fk_counter`` in csrc/flow.h (a unit test checks
# that they agree).
KERNEL_COUNTERS: dict[str, int] = {
    "ringbuf_records": 0,
    "ringbuf_lost": 1,
    "sampled_out": 2,
    "runt": 3,
    "no_map": 4,
    "update_failed": 5,
    "filtered": 6,
    "extra_lost": 7,
    "dns_untracked": 8,
}

DRAIN_MODES: dict[str, int] = {
    "auto": native.DRAIN_AUTO,
    "lookup_and_delete_batch": native.DRAIN_LOOKUP_AND_DELETE_BATCH,
    "lookup_batch_then_delete": native.DRAIN_LOOKUP_BATCH_THEN_DELETE,
    "iterate": native.DRAIN_ITERATE,
}
"""How a :class:`KernelDrainer` empties a map. ``auto`` starts with the single-syscall batch
operation and falls back (for good) when the kernel rejects it."""

_MAX_POOLED_BUFFERS = 8


def boot_offset_ns() -> int:
    """Nanoseconds to add to CLOCK_MONOTONIC (``bpf_ktime_get_ns``) to get unix time."""
    return time.time_ns() - time.monotonic_ns()


def _contiguous_records(records: FlowArray) -> FlowArray:
    if records.dtype != RECORD_DTYPE:
        raise TypeError(f"records must have RECORD_DTYPE, got {records.dtype}")
    return np.ascontiguousarray(records)


class FlowBufferPool:
    """Reusable C arrays of ``struct fk_flow_out`` behind FlowBatches.

    A batch keeps its buffer until released; then the buffer returns here, so that steady-state
    evictions allocate nothing and no eviction overwrites a batch an exporter still reads.
    Buffers a released-late batch never returns are simply garbage-collected.
    """

    def __init__(self, minimum: int) -> None:
        self._minimum = max(1, minimum)
        self._free: list[native.FlowBuffer] = []
        self._lock = threading.Lock()
        self.allocated = 0

    def acquire(self, capacity: int) -> native.FlowBuffer:
        """An empty buffer of at least ``capacity`` flows."""
        with self._lock:
            best = None
            for i, buf in enumerate(self._free):
                if buf.capacity >= capacity and (
                    best is None or buf.capacity < self._free[best].capacity
                ):
                    best = i
            if best is not None:
                buffer = self._free.pop(best)
                buffer.length = 0
                return buffer
        self.allocated += 1
        return native.FlowBuffer(max(capacity, self._minimum))

    def give_back(self, buffer: native.FlowBuffer) -> None:
        """Return a buffer (keeps at most a few, preferring the largest)."""
        with self._lock:
            self._free.append(buffer)
            if len(self._free) > _MAX_POOLED_BUFFERS:
                self._free.sort(key=lambda item: item.capacity)
                self._free.pop(0)

    def clear(self) -> None:
        """Forget every pooled buffer."""
        with self._lock:
            self._free.clear()


class FlowOutput:
    """Flows being written into one pooled buffer by successive C calls."""

    __slots__ = ("boot_offset_ns", "buffer", "pool")

    def __init__(self, pool: FlowBufferPool, capacity: int, boot_offset_ns: int) -> None:
        self.pool = pool
        self.boot_offset_ns = boot_offset_ns
        self.buffer = pool.acquire(capacity)

    @property
    def capacity(self) -> int:
        """Flows the buffer holds."""
        return self.buffer.capacity

    @property
    def count(self) -> int:
        """Flows written so far."""
        return self.buffer.length

    def batch(self) -> FlowBatch:
        """Wrap the written flows (without copying); releasing the batch recycles the buffer."""
        count = self.count
        if count == 0:
            self.discard()
            return FlowBatch.empty()
        array = self.buffer.rows(count, FLOW_DTYPE)
        buffer, pool = self.buffer, self.pool
        return FlowBatch(array, release=lambda: pool.give_back(buffer))

    def discard(self) -> None:
        """Nothing to hand out: recycle the buffer now."""
        self.pool.give_back(self.buffer)


class FlowTable:
    """The C flow table: merge records in, take flows out.

    Not thread-safe on its own (:class:`NativeAccounter` serialises access).
    """

    def __init__(self, expected_flows: int = 1024) -> None:
        self.native = native.Table(max(1, min(expected_flows, 1 << 30)))
        """The C table (:class:`flowkit.native.flows.Table`)."""

    def __len__(self) -> int:
        return len(self.native)

    def add_records(self, records: FlowArray, limit: int = 0) -> int:
        """Merge records in order; with ``limit``, stop right after the merge that makes the
        table hold ``limit`` flows. Returns how many records were merged."""
        if len(records) == 0:
            return 0
        return self.native.add_records(_contiguous_records(records), limit)

    def add_records_evicting(self, records: FlowArray, limit: int, output: FlowOutput) -> int:
        """Merge records in order, evicting the whole table into ``output`` each time it holds
        ``limit`` flows. ``output`` must have room for ``len(self) + len(records)`` more flows.
        Returns the number of evictions."""
        if len(records) == 0:
            return 0
        return self.native.add_records_evicting(
            _contiguous_records(records), limit, output.buffer, output.boot_offset_ns
        )

    def absorb(self, source: FlowTable, limit: int, output: FlowOutput) -> int:
        """Like :meth:`add_records_evicting` with the flows of ``source`` (which is emptied)."""
        return self.native.absorb(source.native, limit, output.buffer, output.boot_offset_ns)

    def evict_into(self, output: FlowOutput) -> int:
        """Append every flow (unix times) to ``output`` and empty the table; returns the count."""
        return self.native.evict(output.buffer, output.boot_offset_ns)

    def take_records(self) -> FlowArray:
        """All flows as :data:`RECORD_DTYPE` records (monotonic times); empties the table."""
        out = np.empty(len(self), dtype=RECORD_DTYPE)
        if len(out):
            out = out[:self.native.take_records(out)]
        return out

    def clear(self) -> None:
        """Forget every flow."""
        self.native.clear()

    def close(self) -> None:
        """Free the C table. Idempotent."""
        self.native.close()


@dataclass(frozen=True)
class DrainerStats:
    """Counters of a :class:`KernelDrainer` (cumulative)."""

    drains: int
    keys: int
    empty_values: int
    syscalls: int
    fallbacks: int
    mode: str
    active_map: int


class KernelDrainer:
    """Takes the flows the eBPF program aggregated, without losing concurrent packets.

    :meth:`drain` points ``flow_selector`` at the other flow map (the kernel waits until no
    program still writes the old one), then reads and deletes every entry of the old map with
    batch syscalls and merges the per-CPU values (CPUs that saw no packet are skipped). The
    feature maps and the program's flow caches (when ``kernel_maps`` names them) are flipped and
    read the same way, into the same flows. The file descriptors stay owned by the caller.
    """

    def __init__(self, kernel_maps: KernelMaps, chunk: int = 4096, mode: str = "auto") -> None:
        self.kernel_maps = kernel_maps
        map0, map1 = kernel_maps.flow_map_fds
        self.native = native.Drainer(kernel_maps.selector_fd, map0, map1, kernel_maps.ncpus,
                                     chunk)
        """The C drainer of the flow maps (:class:`flowkit.native.flows.Drainer`)."""
        self._extra_drainer: native.Drainer | None = None
        if kernel_maps.extra_selector_fd >= 0:
            extra0, extra1 = kernel_maps.extra_map_fds
            self._extra_drainer = native.Drainer(kernel_maps.extra_selector_fd, extra0, extra1,
                                                 kernel_maps.ncpus, chunk, kind="extras")
        self._cache_drainer: native.Drainer | None = None
        if kernel_maps.cache_selector_fd >= 0:
            cache0, cache1 = kernel_maps.cache_map_fds
            self._cache_drainer = native.Drainer(kernel_maps.cache_selector_fd, cache0, cache1,
                                                 kernel_maps.ncpus, chunk, kind="cache")
        self._stage = FlowTable(kernel_maps.max_entries)
        self._lock = threading.Lock()
        if mode != "auto":
            self.set_mode(mode)

    def set_mode(self, mode: str) -> None:
        """Force a drain strategy (one of :data:`DRAIN_MODES`) on every map kind; mostly for
        tests. The flow caches know two: batches (any mode but ``iterate``), or slot by slot
        (``iterate``, what kernels without batch operations on arrays get)."""
        if mode not in DRAIN_MODES:
            raise ValueError(f"unknown drain mode {mode!r}; use one of {sorted(DRAIN_MODES)}")
        with self._lock:
            for drainer in (self.native, self._extra_drainer, self._cache_drainer):
                if drainer is not None:
                    drainer.set_mode(DRAIN_MODES[mode])

    def _drain_locked(self, table: native.Table) -> int:
        keys = self.native.drain(table)
        if self._extra_drainer is not None:
            # Feature data of the same period: merged into the same flows (or new ones, for a
            # flow known only from its drops).
            keys += self._extra_drainer.drain(table)
        if self._cache_drainer is not None:
            # Packets the program's flow caches held: flipped after the flow maps, so that a
            # slot flushed meanwhile went to a flow map that is drained now or next time.
            keys += self._cache_drainer.drain(table)
        return keys

    def drain_into(self, table: FlowTable) -> int:
        """Flip maps, drain the old one and merge its flows into ``table``; returns the number
        of keys read (flow and feature maps)."""
        with self._lock:
            return self._drain_locked(table.native)

    def drain(self) -> FlowArray:
        """Flip maps, drain the old one and return its flows (one record per flow key,
        :data:`RECORD_DTYPE`, monotonic times)."""
        with self._lock:
            self._drain_locked(self._stage.native)
            return self._stage.take_records()

    def active_map(self) -> int:
        """Index (0 or 1) of the flow map the kernel writes into now (read from the selector)."""
        with self._lock:
            return self.native.active()

    def stats(self) -> DrainerStats:
        """Cumulative drain counters."""
        with self._lock:
            raw = self.native.stats()
        modes = {v: k for k, v in DRAIN_MODES.items()}
        return DrainerStats(
            drains=raw.drains,
            keys=raw.keys,
            empty_values=raw.empty_values,
            syscalls=raw.syscalls,
            fallbacks=raw.fallbacks,
            mode=modes.get(raw.mode, str(raw.mode)),
            active_map=raw.active_map,
        )

    def close(self) -> None:
        """Free the C drainer (not the maps). Idempotent."""
        with self._lock:
            self.native.close()
            if self._extra_drainer is not None:
                self._extra_drainer.close()
            if self._cache_drainer is not None:
                self._cache_drainer.close()
            self._stage.close()


class RingBufferReader:
    """Consumes the ``flow_events`` ring buffer (one record per packet) in C."""

    def __init__(self, ringbuf_fd: int, capacity: int = 16384) -> None:
        self.native = native.RingbufReader(ringbuf_fd)
        """The C reader (:class:`flowkit.native.flows.RingbufReader`)."""
        self.capacity = max(1, capacity)
        self._buffer = np.empty(self.capacity, dtype=RECORD_DTYPE)
        self._lock = threading.Lock()

    def read(self, timeout: float) -> FlowArray:
        """Wait up to ``timeout`` seconds for records; return at most ``capacity`` of them
        (the rest stay in the ring buffer for the next call)."""
        with self._lock:
            n = self.native.read_records(self._buffer, _timeout_ms(timeout))
            return self._buffer[:n].copy()

    def poll_into(self, table: FlowTable, limit: int, output: FlowOutput, timeout: float) -> int:
        """Merge records into ``table``, evicting into ``output`` whenever it holds ``limit``
        flows; returns the records consumed. The caller serialises calls."""
        with self._lock:
            return self.native.poll_into_table(table.native, limit, output.buffer,
                                               output.boot_offset_ns, _timeout_ms(timeout))

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until a record is there (True) or :meth:`wake` is
        called; consumes nothing and takes no lock, so that the caller may hold none either."""
        return self.native.wait(_timeout_ms(timeout))

    def wake(self) -> None:
        """End a wait of :meth:`wait`, :meth:`read` or :meth:`poll_into` at once (from another
        thread; the next wait ends at once if none is in progress)."""
        self.native.wake()

    def records(self) -> int:
        """Records consumed so far."""
        with self._lock:
            return self.native.records()

    def close(self) -> None:
        """Free the C reader (not the map). Idempotent."""
        with self._lock:
            self.native.close()


def _timeout_ms(timeout: float) -> int:
    if timeout <= 0:
        return 0
    return max(1, min(int(timeout * 1000), 2**31 - 1))


def read_kernel_counters(kernel_maps: KernelMaps) -> dict[str, int]:
    """The eBPF program's counters (summed over CPUs), by name (see :data:`KERNEL_COUNTERS`)."""
    out: dict[str, int] = {}
    for name, index in KERNEL_COUNTERS.items():
        out[name] = native.counter_sum(kernel_maps.counters_fd, index, kernel_maps.ncpus)
    return out
