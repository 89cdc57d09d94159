"""Typed calls into the C flow accounting parts (csrc/native/accounter.c, kernel_drain.c).

- :class:`Table`: ``struct fk_table``, the flow table records are merged into;
- :class:`Drainer`: ``struct fk_drainer``, which flips and drains the eBPF flow maps;
- :class:`RingbufReader`: ``struct fk_ringbuf_reader`` over the ``flow_events`` ring buffer;
- :class:`FlowBuffer`: a C ``struct fk_flow_out[]`` that evictions append to;
- :func:`counter_sum`: one eBPF counter summed over CPUs.

Records are numpy arrays of ``RECORD_DTYPE`` (``struct fk_flow_record``), evicted flows rows of
``FLOW_DTYPE`` (``struct fk_flow_out``). Every call releases the GIL (cffi API mode).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from flowkit.native._lib import (
    CData,
    OwnedPointer,
    array_pointer,
    check,
    ffi,
    lib,
    new_or_raise,
)

if TYPE_CHECKING:
    from flowkit._native import struct_fk_drainer_stats, struct_fk_ringbuf_stats

__all__ = [
    "DRAIN_AUTO",
    "DRAIN_ITERATE",
    "DRAIN_LOOKUP_AND_DELETE_BATCH",
    "DRAIN_LOOKUP_BATCH_THEN_DELETE",
    "Drainer",
    "DrainerCounters",
    "FlowBuffer",
    "RingbufReader",
    "Table",
    "counter_sum",
    "map_create",
    "possible_cpus",
]

Records = npt.NDArray[Any]
"""A contiguous numpy array of ``RECORD_DTYPE`` (``struct fk_flow_record``)."""

DRAIN_AUTO: int = lib.FK_DRAIN_AUTO
DRAIN_LOOKUP_AND_DELETE_BATCH: int = lib.FK_DRAIN_LOOKUP_AND_DELETE_BATCH
DRAIN_LOOKUP_BATCH_THEN_DELETE: int = lib.FK_DRAIN_LOOKUP_BATCH_THEN_DELETE
DRAIN_ITERATE: int = lib.FK_DRAIN_ITERATE

_FLOW_OUT_SIZE = ffi.sizeof("struct fk_flow_out")
# Evictions overwrite the buffer before anyone reads it: skip cffi's zero-filling.
_alloc_uncleared = ffi.new_allocator(should_clear_after_alloc=False)


def _records(records: Records, *, writable: bool = False) -> CData:
    return array_pointer("struct fk_flow_record[]", records, writable=writable)


class FlowBuffer:
    """A C ``struct fk_flow_out[capacity]`` (not zeroed) and the count of flows written to it.

    C calls append at :attr:`length` and advance it; :meth:`rows` views the written flows.
    """

    __slots__ = ("_array", "_length", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._array = _alloc_uncleared("struct fk_flow_out[]", capacity)
        self._length = ffi.new("uint64_t *", 0)

    @property
    def length(self) -> int:
        """Flows written so far."""
        return int(self._length[0])

    @length.setter
    def length(self, value: int) -> None:
        self._length[0] = value

    def rows(self, count: int, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        """The first ``count`` flows as a numpy view of ``dtype`` (no copy)."""
        # numpy's stubs do not list cffi buffers among the buffer types they accept.
        view: Any = ffi.buffer(self._array, count * _FLOW_OUT_SIZE)
        rows: npt.NDArray[Any] = np.frombuffer(view, dtype=dtype)
        return rows


class Table:
    """``struct fk_table``: merges records by flow key, evicts flows. Not thread-safe."""

    __slots__ = ("_owned",)

    def __init__(self, expected_flows: int) -> None:
        pointer = lib.fk_table_new(expected_flows)
        if pointer == ffi.NULL:
            raise MemoryError("fk_table_new: cannot allocate the flow table")
        self._owned = OwnedPointer(pointer, lib.fk_table_free, "FlowTable")

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._owned.closed

    def __len__(self) -> int:
        return 0 if self._owned.closed else lib.fk_table_len(self._owned.pointer)

    def add_records(self, records: Records, limit: int) -> int:
        """Merge records in order (stop when the table holds ``limit`` flows, 0: no limit);
        returns how many were merged."""
        return check(
            lib.fk_table_add_records(self._owned.pointer, _records(records), len(records), limit),
            "fk_table_add_records",
        )

    def add_records_evicting(
        self, records: Records, limit: int, out: FlowBuffer, boot_offset_ns: int
    ) -> int:
        """Merge records, evicting the table into ``out`` whenever it holds ``limit`` flows;
        returns the number of evictions."""
        return check(
            lib.fk_table_add_records_evicting(
                self._owned.pointer, _records(records), len(records), limit, out._array,
                out.capacity, boot_offset_ns, out._length,
            ),
            "fk_table_add_records_evicting",
        )

    def absorb(self, source: Table, limit: int, out: FlowBuffer, boot_offset_ns: int) -> int:
        """Like :meth:`add_records_evicting` with the flows of ``source`` (emptied)."""
        return check(
            lib.fk_table_absorb(
                self._owned.pointer, source._owned.pointer, limit, out._array, out.capacity,
                boot_offset_ns, out._length,
            ),
            "fk_table_absorb",
        )

    def evict(self, out: FlowBuffer, boot_offset_ns: int) -> int:
        """Append every flow (unix times) to ``out`` and empty the table; returns the count."""
        start = out.length
        written = check(
            lib.fk_table_evict(self._owned.pointer, out._array + start, out.capacity - start,
                               boot_offset_ns),
            "fk_table_evict",
        )
        out.length = start + written
        return written

    def take_records(self, out: Records) -> int:
        """Move flows into ``out`` (monotonic times) and empty the table; returns the count."""
        return check(
            lib.fk_table_take_records(self._owned.pointer, _records(out, writable=True),
                                      len(out)),
            "fk_table_take_records",
        )

    def clear(self) -> None:
        """Forget every flow."""
        lib.fk_table_clear(self._owned.pointer)

    def close(self) -> None:
        """Free the C table. Idempotent."""
        self._owned.close()


class DrainerCounters(NamedTuple):
    """``struct fk_drainer_stats`` (cumulative)."""

    drains: int
    keys: int
    empty_values: int
    syscalls: int
    fallbacks: int
    mode: int
    active_map: int


class Drainer:
    """``struct fk_drainer``: flips a selector between two (per-CPU) hash maps and drains the
    one the kernel left. The maps' file descriptors stay owned by the caller."""

    __slots__ = ("_owned",)

    def __init__(
        self, selector_fd: int, map0_fd: int, map1_fd: int, ncpus: int, chunk: int, *,
        kind: Literal["flows", "extras", "cache"] = "flows",
    ) -> None:
        """``kind``: what the maps hold: ``flows`` (``struct fk_flow_value`` per flow key),
        ``extras`` (the feature maps: ``struct fk_flow_extra``) or ``cache`` (the program's
        per-CPU flow caches: arrays of ``struct fk_flow_event``; ``ncpus`` and ``chunk`` are
        not used)."""
        if kind == "extras":
            pointer = new_or_raise(
                "fk_extra_drainer_new", lib.fk_extra_drainer_new,
                selector_fd, map0_fd, map1_fd, ncpus, chunk,
                detail="the feature maps must be (per-CPU) hash maps of struct fk_flow_key -> "
                "struct fk_flow_extra and their selector an array of maps",
            )
        elif kind == "cache":
            pointer = new_or_raise(
                "fk_cache_drainer_new", lib.fk_cache_drainer_new,
                selector_fd, map0_fd, map1_fd,
                detail="the flow caches must be per-CPU arrays of struct fk_flow_event, of one "
                "size, and their selector an array of maps",
            )
        else:
            pointer = new_or_raise(
                "fk_drainer_new", lib.fk_drainer_new,
                selector_fd, map0_fd, map1_fd, ncpus, chunk,
                detail="the flow maps must be (per-CPU) hash maps of struct fk_flow_key -> "
                "struct fk_flow_value and the selector an array of maps",
            )
        self._owned = OwnedPointer(pointer, lib.fk_drainer_free, "KernelDrainer")

    def set_mode(self, mode: int) -> None:
        """Force a drain strategy (``DRAIN_*``)."""
        check(lib.fk_drainer_set_mode(self._owned.pointer, mode), "fk_drainer_set_mode")

    def drain(self, table: Table) -> int:
        """Flip maps, drain the old one into ``table``; returns the keys read."""
        return check(lib.fk_drainer_drain(self._owned.pointer, table._owned.pointer),
                     "fk_drainer_drain")

    def drain_map(self, index: int, table: Table) -> int:
        """Drain map ``index`` (0 or 1) into ``table`` without flipping; returns the keys read."""
        return check(
            lib.fk_drainer_drain_map(self._owned.pointer, index, table._owned.pointer),
            "fk_drainer_drain_map",
        )

    def active(self) -> int:
        """Index of the map the selector points at."""
        return check(lib.fk_drainer_active(self._owned.pointer), "fk_drainer_active",
                     "the selector points at neither flow map")

    def stats(self) -> DrainerCounters:
        """Cumulative counters."""
        raw = cast("struct_fk_drainer_stats", ffi.new("struct fk_drainer_stats *"))
        lib.fk_drainer_get_stats(self._owned.pointer, cast(CData, raw))
        return DrainerCounters(
            int(raw.drains), int(raw.keys), int(raw.empty_values), int(raw.syscalls),
            int(raw.fallbacks), int(raw.mode), int(raw.active_map),
        )

    def close(self) -> None:
        """Free the C drainer (not the maps). Idempotent."""
        self._owned.close()


class RingbufReader:
    """``struct fk_ringbuf_reader``: consumes a ring buffer of ``struct fk_flow_event``."""

    __slots__ = ("_owned",)

    def __init__(self, ringbuf_fd: int) -> None:
        pointer = new_or_raise("ring_buffer__new", lib.fk_ringbuf_reader_new, ringbuf_fd,
                               detail=f"ring buffer fd {ringbuf_fd}")
        self._owned = OwnedPointer(pointer, lib.fk_ringbuf_reader_free, "RingBufferReader")

    def read_records(self, out: Records, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` for events; copy at most ``len(out)`` into ``out`` as
        records; returns the count (``-EINTR`` counts as zero)."""
        return check(
            lib.fk_ringbuf_read_records(self._owned.pointer, _records(out, writable=True),
                                        len(out), timeout_ms),
            "ring_buffer__poll",
        )

    def poll_into_table(
        self, table: Table, limit: int, out: FlowBuffer, boot_offset_ns: int, timeout_ms: int
    ) -> int:
        """Merge events into ``table``, evicting into ``out`` whenever it holds ``limit``
        flows; returns the events consumed."""
        return check(
            lib.fk_ringbuf_poll_into_table(
                self._owned.pointer, table._owned.pointer, limit, out._array, out.capacity,
                boot_offset_ns, out._length, timeout_ms,
            ),
            "ring_buffer__poll",
        )

    def wait(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` until an event is there (True) or :meth:`wake` is called,
        without consuming anything (False when woken or timed out)."""
        return bool(check(lib.fk_ringbuf_wait(self._owned.pointer, timeout_ms),
                          "fk_ringbuf_wait"))

    def wake(self) -> None:
        """End the current (or the next) wait of :meth:`poll_into_table` or
        :meth:`read_records` at once; callable from any thread while the reader is open."""
        if not self._owned.closed:
            check(lib.fk_ringbuf_wake(self._owned.pointer), "fk_ringbuf_wake")

    def records(self) -> int:
        """Events consumed so far."""
        raw = cast("struct_fk_ringbuf_stats", ffi.new("struct fk_ringbuf_stats *"))
        lib.fk_ringbuf_get_stats(self._owned.pointer, cast(CData, raw))
        return int(raw.records)

    def close(self) -> None:
        """Free the C reader (not the map). Idempotent."""
        self._owned.close()


def counter_sum(counters_fd: int, index: int, ncpus: int) -> int:
    """Entry ``index`` of a per-CPU ``u64`` array map, summed over ``ncpus`` CPUs."""
    return check(lib.fk_counter_sum(counters_fd, index, ncpus), "bpf_map_lookup_elem",
                 f"counters[{index}]")


def possible_cpus() -> int:
    """CPUs a per-CPU map has values for."""
    return check(lib.fk_possible_cpus(), "fk_possible_cpus")


def map_create(
    map_type: int, key_size: int, value_size: int, max_entries: int, inner_map_fd: int = -1
) -> int:
    """A new BPF map's fd (the caller closes it); ``inner_map_fd`` for maps of maps."""
    return check(lib.fk_map_create(map_type, key_size, value_size, max_entries, inner_map_fd),
                 "bpf_map_create")
