"""The ``python`` accounter: the pure-Python reference implementation.

It defines the accounting semantics every accounter must reproduce (the native one is tested
against it):

- records are merged by flow key: packets and bytes summed, ``first_ns`` the smallest non-zero,
  ``last_ns`` the largest, TCP flags OR-ed, DSCP taken from the record with the newest
  ``last_ns`` (the incoming one on ties), sampling the largest, MACs from the record with the
  smallest non-zero ``first_ns`` (the existing one on ties);
- feature data (``extra``): ``first_ns``/``last_ns`` as above, drop bytes and packets summed,
  the latest drop's cause, flags and state from the record with the newest ``drop_ns`` among
  those that carry drops (the incoming one on ties), the largest RTT, the DNS fields (id,
  flags, latency, errno, name) from the record with the newest ``dns_ns`` among those that
  carry DNS data (the incoming one on ties), feature bits OR-ed;
- :meth:`poll` merges single-packet records from the tracer and, as soon as the cache holds
  CACHE_MAX_FLOWS flows, evicts all of them into the batch it returns;
- :meth:`evict` merges the tracer's aggregates and evicts everything.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from flowkit import hookimpl
from flowkit.components import AccounterSpec, ComponentContext, Tracer
from flowkit.model import (
    FEATURE_DNS,
    FEATURE_DROPS,
    RECORD_DTYPE,
    FlowArray,
    FlowBatch,
    records_to_flows,
)

# A cached flow: [value fields..., extra fields...] as numpy's tolist() gives them (see
# VALUE_DTYPE and EXTRA_DTYPE); the indexes below name them.
_Row = list[Any]
_PACKETS, _BYTES, _FIRST, _LAST, _FLAGS, _DSCP, _VPAD, _SAMPLING, _SMAC, _DMAC, _VPAD2 = range(11)
(_X_FIRST, _X_LAST, _X_DROP_BYTES, _X_DROP_PACKETS, _X_DROP_NS, _X_DROP_CAUSE, _X_DROP_FLAGS,
 _X_DROP_STATE, _X_FEATURES, _X_RTT, _X_DNS_NS) = range(11)  # fmt: skip
_X_DNS_FIELDS = slice(10, 17)  # dns_ns, latency, id, flags, errno, pad, name
_X_DROP_LATEST = slice(4, 8)  # drop_ns, cause, flags, state


def merge_value(current: _Row | None, value: _Row) -> _Row:
    """Merge a record's value into an aggregate (the reference rule, see the module docstring)."""
    if current is None:
        return list(value)
    current[_PACKETS] += value[_PACKETS]
    current[_BYTES] += value[_BYTES]
    first = value[_FIRST]
    if first and (not current[_FIRST] or first < current[_FIRST]):
        current[_FIRST] = first
        current[_SMAC] = value[_SMAC]
        current[_DMAC] = value[_DMAC]
    if value[_LAST] >= current[_LAST]:
        current[_LAST] = value[_LAST]
        current[_DSCP] = value[_DSCP]
    current[_FLAGS] |= value[_FLAGS]
    current[_SAMPLING] = max(current[_SAMPLING], value[_SAMPLING])
    return current


def merge_extra(current: _Row | None, extra: _Row) -> _Row:
    """Merge a record's feature data into an aggregate (see the module docstring)."""
    if current is None:
        return list(extra)
    first = extra[_X_FIRST]
    if first and (not current[_X_FIRST] or first < current[_X_FIRST]):
        current[_X_FIRST] = first
    current[_X_LAST] = max(current[_X_LAST], extra[_X_LAST])
    current[_X_DROP_BYTES] += extra[_X_DROP_BYTES]
    current[_X_DROP_PACKETS] += extra[_X_DROP_PACKETS]
    features = extra[_X_FEATURES]
    if features & FEATURE_DROPS and extra[_X_DROP_NS] >= current[_X_DROP_NS]:
        current[_X_DROP_LATEST] = extra[_X_DROP_LATEST]
    current[_X_RTT] = max(current[_X_RTT], extra[_X_RTT])
    if features & FEATURE_DNS and extra[_X_DNS_NS] >= current[_X_DNS_NS]:
        current[_X_DNS_FIELDS] = extra[_X_DNS_FIELDS]
    current[_X_FEATURES] |= features
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
        self._cache: dict[bytes, tuple[_Row, _Row]] = {}
        self._pending: list[FlowBatch] = []

    def add_records(self, records: FlowArray) -> FlowBatch | None:
        """Merge records (:data:`RECORD_DTYPE`) in order; when the cache reaches
        CACHE_MAX_FLOWS flows it is evicted, and the evicted flows are returned as one batch
        (``None`` when nothing was evicted). Same contract as the native accounter's."""
        evicted: list[FlowBatch] = []
        keys = records["key"]
        extras = records["extra"].tolist()
        for i, value in enumerate(records["value"].tolist()):
            key = keys[i].tobytes()
            current = self._cache.get(key)
            if current is None:
                self._cache[key] = (list(value), list(extras[i]))
            else:
                merge_value(current[0], value)
                merge_extra(current[1], extras[i])
            if len(self._cache) >= self._max_flows:
                evicted.append(self._take())
        return concat_batches(evicted) if evicted else None

    def _take(self) -> FlowBatch:
        records = np.zeros(len(self._cache), dtype=RECORD_DTYPE)
        for i, (key, (value, extra)) in enumerate(self._cache.items()):
            records[i]["key"] = np.frombuffer(key, dtype=RECORD_DTYPE["key"])[0]
            records[i]["value"] = tuple(value)
            records[i]["extra"] = tuple(extra)
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
