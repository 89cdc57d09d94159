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
from typing import Any

import numpy as np

from flowkit.components import KernelMaps
from flowkit.model import FLOW_DTYPE, RECORD_DTYPE, FlowArray, FlowBatch
from flowkit.native import NativeError, check, ffi, lib

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
    "auto": lib.FK_DRAIN_AUTO,
    "lookup_and_delete_batch": lib.FK_DRAIN_LOOKUP_AND_DELETE_BATCH,
    "lookup_batch_then_delete": lib.FK_DRAIN_LOOKUP_BATCH_THEN_DELETE,
    "iterate": lib.FK_DRAIN_ITERATE,
}
"""How a :class:`KernelDrainer` empties a map. ``auto`` starts with the single-syscall batch
operation and falls back (for good) when the kernel rejects it."""

_FLOW_SIZE = FLOW_DTYPE.itemsize
_MAX_POOLED_BUFFERS = 8
# Output buffers are overwritten completely before use: skip cffi's zero-filling.
_alloc_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


def boot_offset_ns() -> int:
    """Nanoseconds to add to CLOCK_MONOTONIC (``bpf_ktime_get_ns``) to get unix time."""
    return time.time_ns() - time.monotonic_ns()


def _records_pointer(records: FlowArray) -> Any:
    if records.dtype != RECORD_DTYPE:
        raise TypeError(f"records must have RECORD_DTYPE, got {records.dtype}")
    return ffi.from_buffer("struct fk_flow_record[]", np.ascontiguousarray(records))


class FlowBufferPool:
    """Reusable C arrays of ``struct fk_flow_out`` behind FlowBatches.

    A batch keeps its buffer until released; then the buffer returns here, so that steady-state
    evictions allocate nothing and no eviction overwrites a batch an exporter still reads.
    Buffers a released-late batch never returns are simply garbage-collected.
    """

    def __init__(self, minimum: int) -> None:
        self._minimum = max(1, minimum)
        self._free: list[tuple[int, Any]] = []
        self._lock = threading.Lock()
        self.allocated = 0

    def acquire(self, capacity: int) -> tuple[int, Any]:
        """A buffer of at least ``capacity`` flows, as ``(capacity, cdata)``."""
        with self._lock:
            best = None
            for i, (cap, _buf) in enumerate(self._free):
                if cap >= capacity and (best is None or cap < self._free[best][0]):
                    best = i
            if best is not None:
                return self._free.pop(best)
        size = max(capacity, self._minimum)
        self.allocated += 1
        return size, _alloc_uncleared("struct fk_flow_out[]", size)

    def give_back(self, capacity: int, buffer: Any) -> None:
        """Return a buffer (keeps at most a few, preferring the largest)."""
        with self._lock:
            self._free.append((capacity, buffer))
            if len(self._free) > _MAX_POOLED_BUFFERS:
                self._free.sort(key=lambda item: item[0])
                self._free.pop(0)

    def clear(self) -> None:
        """Forget every pooled buffer."""
        with self._lock:
            self._free.clear()


class FlowOutput:
    """Flows being written into one pooled buffer by successive C calls."""

    __slots__ = ("boot_offset_ns", "buffer", "capacity", "length", "pool")

    def __init__(self, pool: FlowBufferPool, capacity: int, boot_offset_ns: int) -> None:
        self.pool = pool
        self.boot_offset_ns = boot_offset_ns
        self.capacity, self.buffer = pool.acquire(capacity)
        self.length = ffi.new("uint64_t *", 0)

    @property
    def count(self) -> int:
        return int(self.length[0])

    def batch(self) -> FlowBatch:
        """Wrap the written flows (without copying); releasing the batch recycles the buffer."""
        count = self.count
        if count == 0:
            self.discard()
            return FlowBatch.empty()
        array = np.frombuffer(ffi.buffer(self.buffer, count * _FLOW_SIZE), dtype=FLOW_DTYPE)
        capacity, buffer, pool = self.capacity, self.buffer, self.pool
        return FlowBatch(array, release=lambda: pool.give_back(capacity, buffer))

    def discard(self) -> None:
        """Nothing to hand out: recycle the buffer now."""
        self.pool.give_back(self.capacity, self.buffer)


class FlowTable:
    """The C flow table: merge records in, take flows out.

    Not thread-safe on its own (:class:`NativeAccounter` serialises access).
    """

    def __init__(self, expected_flows: int = 1024) -> None:
        table = lib.fk_table_new(max(1, min(expected_flows, 1 << 30)))
        if table == ffi.NULL:
            raise MemoryError("fk_table_new: cannot allocate the flow table")
        self._table: Any = ffi.gc(table, lib.fk_table_free)

    @property
    def cdata(self) -> Any:
        """The ``struct fk_table *`` (raises after :meth:`close`)."""
        if self._table is None:
            raise ValueError("this FlowTable is closed")
        return self._table

    def __len__(self) -> int:
        return 0 if self._table is None else int(lib.fk_table_len(self._table))

    def add_records(self, records: FlowArray, limit: int = 0) -> int:
        """Merge records in order; with ``limit``, stop right after the merge that makes the
        table hold ``limit`` flows. Returns how many records were merged."""
        if len(records) == 0:
            return 0
        consumed = lib.fk_table_add_records(
            self.cdata, _records_pointer(records), len(records), limit
        )
        return check(consumed, "fk_table_add_records")

    def add_records_evicting(self, records: FlowArray, limit: int, output: FlowOutput) -> int:
        """Merge records in order, evicting the whole table into ``output`` each time it holds
        ``limit`` flows. ``output`` must have room for ``len(self) + len(records)`` more flows.
        Returns the number of evictions."""
        if len(records) == 0:
            return 0
        evictions = lib.fk_table_add_records_evicting(
            self.cdata, _records_pointer(records), len(records), limit, output.buffer,
            output.capacity, output.boot_offset_ns, output.length,
        )
        return check(evictions, "fk_table_add_records_evicting")

    def absorb(self, source: FlowTable, limit: int, output: FlowOutput) -> int:
        """Like :meth:`add_records_evicting` with the flows of ``source`` (which is emptied)."""
        evictions = lib.fk_table_absorb(
            self.cdata, source.cdata, limit, output.buffer, output.capacity,
            output.boot_offset_ns, output.length,
        )
        return check(evictions, "fk_table_absorb")

    def evict_into(self, output: FlowOutput) -> int:
        """Append every flow (unix times) to ``output`` and empty the table; returns the count."""
        start = output.count
        written = check(
            lib.fk_table_evict(self.cdata, output.buffer + start, output.capacity - start,
                               output.boot_offset_ns),
            "fk_table_evict",
        )
        output.length[0] = start + written
        return written

    def take_records(self) -> FlowArray:
        """All flows as :data:`RECORD_DTYPE` records (monotonic times); empties the table."""
        out = np.empty(len(self), dtype=RECORD_DTYPE)
        if len(out):
            pointer = ffi.from_buffer("struct fk_flow_record[]", out)
            written = check(lib.fk_table_take_records(self.cdata, pointer, len(out)),
                            "fk_table_take_records")
            out = out[:written]
        return out

    def clear(self) -> None:
        """Forget every flow."""
        lib.fk_table_clear(self.cdata)

    def close(self) -> None:
        """Free the C table. Idempotent."""
        table, self._table = self._table, None
        if table is not None:
            ffi.release(table)


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
        err = ffi.new("int *")
        selector = kernel_maps.selector_fd
        map0, map1 = kernel_maps.flow_map_fds
        drainer = lib.fk_drainer_new(selector, map0, map1, kernel_maps.ncpus, chunk, err)
        if drainer == ffi.NULL:
            raise NativeError(
                "fk_drainer_new", -err[0],
                "the flow maps must be (per-CPU) hash maps of struct fk_flow_key -> "
                "struct fk_flow_value and the selector an array of maps",
            )
        self._drainer: Any = ffi.gc(drainer, lib.fk_drainer_free)
        self._extra_drainer: Any = None
        if kernel_maps.extra_selector_fd >= 0:
            extra0, extra1 = kernel_maps.extra_map_fds
            extra = lib.fk_extra_drainer_new(kernel_maps.extra_selector_fd, extra0, extra1,
                                             kernel_maps.ncpus, chunk, err)
            if extra == ffi.NULL:
                raise NativeError(
                    "fk_extra_drainer_new", -err[0],
                    "the feature maps must be (per-CPU) hash maps of struct fk_flow_key -> "
                    "struct fk_flow_extra and their selector an array of maps",
                )
            self._extra_drainer = ffi.gc(extra, lib.fk_drainer_free)
        self._cache_drainer: Any = None
        if kernel_maps.cache_selector_fd >= 0:
            cache0, cache1 = kernel_maps.cache_map_fds
            cache = lib.fk_cache_drainer_new(kernel_maps.cache_selector_fd, cache0, cache1, err)
            if cache == ffi.NULL:
                raise NativeError(
                    "fk_cache_drainer_new", -err[0],
                    "the flow caches must be per-CPU arrays of struct fk_flow_event, of one "
                    "size, and their selector an array of maps",
                )
            self._cache_drainer = ffi.gc(cache, lib.fk_drainer_free)
        self._stage = FlowTable(kernel_maps.max_entries)
        self._lock = threading.Lock()
        if mode != "auto":
            self.set_mode(mode)

    @property
    def cdata(self) -> Any:
        """The ``struct fk_drainer *`` (raises after :meth:`close`)."""
        if self._drainer is None:
            raise ValueError("this KernelDrainer is closed")
        return self._drainer

    def set_mode(self, mode: str) -> None:
        """Force a drain strategy (one of :data:`DRAIN_MODES`); mostly for tests."""
        if mode not in DRAIN_MODES:
            raise ValueError(f"unknown drain mode {mode!r}; use one of {sorted(DRAIN_MODES)}")
        with self._lock:
            rc = lib.fk_drainer_set_mode(self.cdata, DRAIN_MODES[mode])
        check(rc, "fk_drainer_set_mode")

    def _drain_locked(self, table: Any) -> int:
        keys = check(lib.fk_drainer_drain(self.cdata, table), "fk_drainer_drain")
        if self._extra_drainer is not None:
            # Feature data of the same period: merged into the same flows (or new ones, for a
            # flow known only from its drops).
            keys += check(lib.fk_drainer_drain(self._extra_drainer, table), "fk_drainer_drain")
        if self._cache_drainer is not None:
            # Packets the program's flow caches held: flipped after the flow maps, so that a
            # slot flushed meanwhile went to a flow map that is drained now or next time.
            keys += check(lib.fk_drainer_drain(self._cache_drainer, table), "fk_drainer_drain")
        return keys

    def drain_into(self, table: FlowTable) -> int:
        """Flip maps, drain the old one and merge its flows into ``table``; returns the number
        of keys read (flow and feature maps)."""
        with self._lock:
            return self._drain_locked(table.cdata)

    def drain(self) -> FlowArray:
        """Flip maps, drain the old one and return its flows (one record per flow key,
        :data:`RECORD_DTYPE`, monotonic times)."""
        with self._lock:
            self._drain_locked(self._stage.cdata)
            return self._stage.take_records()

    def active_map(self) -> int:
        """Index (0 or 1) of the flow map the kernel writes into now (read from the selector)."""
        with self._lock:
            active = lib.fk_drainer_active(self.cdata)
        return check(active, "fk_drainer_active", "the selector points at neither flow map")

    def stats(self) -> DrainerStats:
        """Cumulative drain counters."""
        raw = ffi.new("struct fk_drainer_stats *")
        with self._lock:
            lib.fk_drainer_get_stats(self.cdata, raw)
        modes = {v: k for k, v in DRAIN_MODES.items()}
        return DrainerStats(
            drains=int(raw.drains),
            keys=int(raw.keys),
            empty_values=int(raw.empty_values),
            syscalls=int(raw.syscalls),
            fallbacks=int(raw.fallbacks),
            mode=modes.get(int(raw.mode), str(raw.mode)),
            active_map=int(raw.active_map),
        )

    def close(self) -> None:
        """Free the C drainer (not the maps). Idempotent."""
        with self._lock:
            drainer, self._drainer = self._drainer, None
            if drainer is not None:
                ffi.release(drainer)
            extra, self._extra_drainer = self._extra_drainer, None
            if extra is not None:
                ffi.release(extra)
            cache, self._cache_drainer = self._cache_drainer, None
            if cache is not None:
                ffi.release(cache)
            self._stage.close()


class RingBufferReader:
    """Consumes the ``flow_events`` ring buffer (one record per packet) in C."""

    def __init__(self, ringbuf_fd: int, capacity: int = 16384) -> None:
        err = ffi.new("int *")
        reader = lib.fk_ringbuf_reader_new(ringbuf_fd, err)
        if reader == ffi.NULL:
            raise NativeError("ring_buffer__new", -err[0], f"ring buffer fd {ringbuf_fd}")
        self._reader: Any = ffi.gc(reader, lib.fk_ringbuf_reader_free)
        self.capacity = max(1, capacity)
        self._buffer = np.empty(self.capacity, dtype=RECORD_DTYPE)
        self._lock = threading.Lock()

    @property
    def cdata(self) -> Any:
        """The ``struct fk_ringbuf_reader *`` (raises after :meth:`close`)."""
        if self._reader is None:
            raise ValueError("this RingBufferReader is closed")
        return self._reader

    def read(self, timeout: float) -> FlowArray:
        """Wait up to ``timeout`` seconds for records; return at most ``capacity`` of them
        (the rest stay in the ring buffer for the next call)."""
        with self._lock:
            pointer = ffi.from_buffer("struct fk_flow_record[]", self._buffer)
            n = check(
                lib.fk_ringbuf_read_records(self.cdata, pointer, self.capacity,
                                            _timeout_ms(timeout)),
                "ring_buffer__poll",
            )
            return self._buffer[:n].copy()

    def poll_into(self, table: FlowTable, limit: int, output: FlowOutput, timeout: float) -> int:
        """Merge records into ``table``, evicting into ``output`` whenever it holds ``limit``
        flows; returns the records consumed. The caller serialises calls."""
        with self._lock:
            return check(
                lib.fk_ringbuf_poll_into_table(
                    self.cdata, table.cdata, limit, output.buffer, output.capacity,
                    output.boot_offset_ns, output.length, _timeout_ms(timeout),
                ),
                "ring_buffer__poll",
            )

    def records(self) -> int:
        """Records consumed so far."""
        raw = ffi.new("struct fk_ringbuf_stats *")
        with self._lock:
            lib.fk_ringbuf_get_stats(self.cdata, raw)
        return int(raw.records)

    def close(self) -> None:
        """Free the C reader (not the map). Idempotent."""
        with self._lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                ffi.release(reader)


def _timeout_ms(timeout: float) -> int:
    if timeout <= 0:
        return 0
    return max(1, min(int(timeout * 1000), 2**31 - 1))


def read_kernel_counters(kernel_maps: KernelMaps) -> dict[str, int]:
    """The eBPF program's counters (summed over CPUs), by name (see :data:`KERNEL_COUNTERS`)."""
    out: dict[str, int] = {}
    for name, index in KERNEL_COUNTERS.items():
        value = lib.fk_counter_sum(kernel_maps.counters_fd, index, kernel_maps.ncpus)
        out[name] = check(value, "bpf_map_lookup_elem", f"counters[{index}]")
    return out
