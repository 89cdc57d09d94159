"""The ``python`` accounter: the pure-Python reference implementation.

It defines the accounting semantics every accounter must reproduce (the native one is tested
against it):

- records are merged by flow key: packets and bytes summed, ``first_ns`` the smallest non-zero,
  ``last_ns`` the largest, TCP flags OR-ed, DSCP taken from the record with the newest
  ``last_ns`` (the incoming one on ties), sampling the largest;
- :meth:`poll` merges single-packet records from the tracer and, as soon as the cache holds
  CACHE_MAX_FLOWS flows, evicts all of them into the batch it returns;
- :meth:`evict` merges the tracer's aggregates and evicts everything.
"""

from __future__ import annotations

import time

import numpy as np

from flowkit import hookimpl
from flowkit.components import AccounterSpec, ComponentContext, Tracer
from flowkit.model import RECORD_DTYPE, FlowArray, FlowBatch, records_to_flows

# value tuple layout: [packets, bytes, first_ns, last_ns, flags, dscp, sampling]
_Value = list[int]


def merge_value(current: _Value | None, packets: int, nbytes: int, first: int, last: int,
                flags: int, dscp: int, sampling: int) -> _Value:
    """Merge one record into an aggregate (the reference rule, see the module docstring)."""
    if current is None:
        return [packets, nbytes, first, last, flags, dscp, sampling]
    current[0] += packets
    current[1] += nbytes
    if first and (not current[2] or first < current[2]):
        current[2] = first
    if last >= current[3]:
        current[3] = last
        current[5] = dscp
    current[4] |= flags
    current[6] = max(current[6], sampling)
    return current


class PythonAccounter:
    """Reference accounter. ``boot_offset_ns`` converts monotonic to unix time."""

    def __init__(
        self,
        tracer: Tracer | None,
        max_flows: int,
        boot_offset_ns: int | None = None,
    ) -> None:
        self._tracer = tracer
        self._max_flows = max_flows
        self.boot_offset_ns = (
            time.time_ns() - time.monotonic_ns() if boot_offset_ns is None else boot_offset_ns
        )
        self._cache: dict[bytes, _Value] = {}
        self._pending: list[FlowBatch] = []

    def add_records(self, records: FlowArray) -> FlowBatch | None:
        """Merge records (:data:`RECORD_DTYPE`) in order; when the cache reaches
        CACHE_MAX_FLOWS flows it is evicted, and the evicted flows are returned as one batch
        (``None`` when nothing was evicted). Same contract as the native accounter's."""
        evicted: list[FlowBatch] = []
        keys = records["key"]
        for i, value in enumerate(records["value"].tolist()):
            key = keys[i].tobytes()
            packets, nbytes, first, last, flags, dscp, _pad, sampling = value
            self._cache[key] = merge_value(
                self._cache.get(key), packets, nbytes, first, last, flags, dscp, sampling
            )
            if len(self._cache) >= self._max_flows:
                evicted.append(self._take())
        return concat_batches(evicted) if evicted else None

    def _take(self) -> FlowBatch:
        records = np.zeros(len(self._cache), dtype=RECORD_DTYPE)
        for i, (key, v) in enumerate(self._cache.items()):
            records[i]["key"] = np.frombuffer(key, dtype=RECORD_DTYPE["key"])[0]
            value = records[i]["value"]
            (value["packets"], value["bytes"], value["first_ns"], value["last_ns"],
             value["flags"], value["dscp"], value["sampling"]) = v
        self._cache.clear()
        return records_to_flows(records, self.boot_offset_ns)

    def poll(self, timeout: float) -> FlowBatch | None:
        if self._tracer is None:
            return None
        return self.add_records(self._tracer.read_events(timeout))

    def evict(self) -> FlowBatch:
        early = None if self._tracer is None else self.add_records(self._tracer.read_aggregates())
        rest = self._take()
        return rest if early is None else concat_batches([early, rest])

    def close(self) -> None:
        self._cache.clear()


def concat_batches(batches: list[FlowBatch]) -> FlowBatch:
    """One batch holding the flows of several (which are released)."""
    if len(batches) == 1:
        return batches[0]
    array = np.concatenate([b.array for b in batches])
    for b in batches:
        b.release()
    return FlowBatch(array)


def _make(context: ComponentContext) -> PythonAccounter:
    return PythonAccounter(context.tracer, context.config.cache_max_flows,
                           boot_offset_ns=getattr(context.tracer, "boot_offset_ns", None))


@hookimpl
def flowkit_accounters() -> list[AccounterSpec]:
    return [
        AccounterSpec(
            name="python",
            factory=_make,
            description="Pure-Python reference accounter (slow; the oracle for the native one)",
        )
    ]
