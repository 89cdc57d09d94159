"""The native accounter: C flow table semantics, buffers, and equivalence with the reference.

The property tests feed the same random record streams to ``native`` and to the pure-Python
``python`` accounter and require identical flows at every batch boundary.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowkit.accounting import KERNEL_COUNTERS, FlowTable
from flowkit.components import Interface, KernelMaps
from flowkit.model import (
    EVENT_DTYPE,
    EXTRA_DTYPE,
    FLOW_DTYPE,
    KEY_DTYPE,
    RECORD_DTYPE,
    VALUE_DTYPE,
    FlowArray,
    FlowBatch,
)
from flowkit.native._lib import ffi
from flowkit_plugins import native_accounter
from flowkit_plugins.native_accounter import NativeAccounter
from flowkit_plugins.python_accounter import PythonAccounter

REPO = Path(__file__).resolve().parents[2]
OFFSET = 1_700_000_000_000_000_000


class ScriptedTracer:
    """A tracer that returns prepared arrays, one per call, and nothing afterwards."""

    def __init__(self, events: Iterable[FlowArray] = (), aggregates: Iterable[FlowArray] = ()):
        self.events = list(events)
        self.aggregates = list(aggregates)

    def start(self) -> None:
        pass

    def attach(self, interface: Interface) -> None:
        pass

    def detach(self, interface: Interface) -> None:
        pass

    @property
    def kernel_maps(self) -> KernelMaps | None:
        return None

    def read_events(self, timeout: float) -> FlowArray:
        return self.events.pop(0) if self.events else np.zeros(0, dtype=RECORD_DTYPE)

    def read_aggregates(self) -> FlowArray:
        return self.aggregates.pop(0) if self.aggregates else np.zeros(0, dtype=RECORD_DTYPE)

    def close(self) -> None:
        pass


def make_records(rows: list[tuple[Any, ...]]) -> FlowArray:
    """Records from (flow id, packets, bytes, first_ns, last_ns, flags, dscp, sampling[, mac,
    feature data]); feature data is (features, first_ns, last_ns, drop packets, drop_ns, drop
    cause, rtt_ns, dns_ns, dns_id, name byte)."""
    records = np.zeros(len(rows), dtype=RECORD_DTYPE)
    for i, row in enumerate(rows):
        (flow, packets, nbytes, first, last, flags, dscp, sampling) = row[:8]
        if len(row) > 8:
            mac, extra = row[8], row[9]
            value = records[i]["value"]
            value["src_mac"] = [mac] * 6
            value["dst_mac"] = [mac, 0, 0, 0, 0, 1]
            x = records[i]["extra"]
            (features, x["first_ns"], x["last_ns"], drop_packets, x["drop_ns"], x["drop_cause"],
             x["rtt_ns"], x["dns_ns"], x["dns_id"], name) = extra
            x["features"] = features
            x["drop_packets"] = drop_packets
            x["drop_bytes"] = drop_packets * 60
            x["drop_state"] = drop_packets & 7
            x["dns_flags"] = 0x8180 | (name & 0xF)
            x["dns_latency_ns"] = name * 1000
            x["dns_name"] = [3, name, name, name] + [0] * 28
        key = records[i]["key"]
        key["if_index"] = 7
        key["eth_protocol"] = 0x0800
        key["proto"] = 17
        key["direction"] = flow & 1
        key["src_port"] = 1000 + flow
        key["dst_port"] = 53
        key["src_ip"] = np.frombuffer(bytes(10) + b"\xff\xff" + bytes([198, 18, 0, flow]), "u1")
        value = records[i]["value"]
        (value["packets"], value["bytes"], value["first_ns"], value["last_ns"],
         value["flags"], value["dscp"], value["sampling"]) = (
            packets, nbytes, first, last, flags, dscp, sampling)
    return records


def as_multiset(batch: FlowBatch | None) -> list[bytes]:
    """A batch as the sorted list of its rows' bytes (order inside a batch is not specified)."""
    if batch is None:
        return []
    return sorted(row.tobytes() for row in batch.array)


def one(flow: int, packets: int = 1, nbytes: int = 100, first: int = 10, last: int = 10,
        flags: int = 0, dscp: int = 0, sampling: int = 0) -> FlowArray:
    return make_records([(flow, packets, nbytes, first, last, flags, dscp, sampling)])


# -- layout --------------------------------------------------------------------------------------

def test_c_structs_have_the_numpy_layouts() -> None:
    assert ffi.sizeof("struct fk_flow_key") == KEY_DTYPE.itemsize
    assert ffi.sizeof("struct fk_flow_value") == VALUE_DTYPE.itemsize
    assert ffi.sizeof("struct fk_flow_record") == RECORD_DTYPE.itemsize
    assert ffi.sizeof("struct fk_flow_extra") == EXTRA_DTYPE.itemsize
    assert ffi.sizeof("struct fk_flow_event") == EVENT_DTYPE.itemsize
    for ctype, dtype in (("struct fk_flow_out", FLOW_DTYPE), ("struct fk_flow_extra", EXTRA_DTYPE),
                         ("struct fk_flow_key", KEY_DTYPE), ("struct fk_flow_value", VALUE_DTYPE)):
        assert dtype.fields is not None
        for name, (_dt, offset, *_title) in dtype.fields.items():
            assert ffi.offsetof(ctype, name) == offset, (ctype, name)
    assert ffi.sizeof("struct fk_flow_out") == FLOW_DTYPE.itemsize
    assert FLOW_DTYPE.fields is not None
    assert RECORD_DTYPE.fields is not None
    assert ffi.offsetof("struct fk_flow_out", "start_ns") == FLOW_DTYPE.fields["start_ns"][1]
    assert ffi.offsetof("struct fk_flow_record", "value") == RECORD_DTYPE.fields["value"][1]


def test_kernel_counter_indices_match_flow_h() -> None:
    text = (REPO / "csrc" / "flow.h").read_text()
    declared = {m[0].lower(): int(m[1]) for m in re.findall(r"FK_COUNTER_(\w+)\s*=\s*(\d+)", text)}
    for name, index in KERNEL_COUNTERS.items():
        assert declared[name] == index


# -- merge rules ---------------------------------------------------------------------------------

def evict_one(accounter: NativeAccounter) -> Any:
    batch = accounter.evict()
    assert len(batch) == 1
    return batch.array[0]


def test_packets_and_bytes_are_summed() -> None:
    accounter = NativeAccounter(None, 100, boot_offset_ns=0)
    accounter.add_records(make_records([(1, 2, 200, 5, 5, 0, 0, 0), (1, 3, 50, 6, 6, 0, 0, 0)]))
    flow = evict_one(accounter)
    assert (flow["packets"], flow["bytes"]) == (5, 250)


def test_first_seen_ignores_zero_and_last_seen_is_the_maximum() -> None:
    accounter = NativeAccounter(None, 100, boot_offset_ns=0)
    accounter.add_records(make_records([(1, 1, 1, 0, 9, 0, 0, 0), (1, 1, 1, 7, 8, 0, 0, 0),
                                        (1, 1, 1, 4, 4, 0, 0, 0)]))
    flow = evict_one(accounter)
    assert (flow["start_ns"], flow["end_ns"]) == (4, 9)


def test_dscp_comes_from_the_newest_record_and_the_incoming_one_wins_ties() -> None:
    accounter = NativeAccounter(None, 100, boot_offset_ns=0)
    accounter.add_records(make_records([(1, 1, 1, 5, 20, 0, 10, 0), (1, 1, 1, 5, 15, 0, 11, 0),
                                        (1, 1, 1, 5, 20, 0, 12, 0)]))
    assert evict_one(accounter)["dscp"] == 12


def test_flags_are_ored_and_sampling_is_the_maximum() -> None:
    accounter = NativeAccounter(None, 100, boot_offset_ns=0)
    accounter.add_records(make_records([(1, 1, 1, 5, 5, 0x02, 0, 4), (1, 1, 1, 5, 5, 0x10, 0, 2)]))
    flow = evict_one(accounter)
    assert (flow["flags"], flow["sampling"]) == (0x12, 4)


def test_times_are_converted_with_the_boot_offset() -> None:
    accounter = NativeAccounter(None, 100, boot_offset_ns=OFFSET)
    accounter.add_records(one(1, first=1_000, last=2_000))
    flow = evict_one(accounter)
    assert (flow["start_ns"], flow["end_ns"]) == (OFFSET + 1_000, OFFSET + 2_000)


def test_keys_and_padding_are_copied_verbatim() -> None:
    records = make_records([(3, 1, 1, 1, 1, 0, 0, 0)])
    accounter = NativeAccounter(None, 100, boot_offset_ns=0)
    accounter.add_records(records)
    assert evict_one(accounter)["key"].tobytes() == records[0]["key"].tobytes()


# -- eviction ------------------------------------------------------------------------------------

def test_add_records_returns_nothing_until_the_cache_is_full() -> None:
    accounter = NativeAccounter(None, 3, boot_offset_ns=0)
    assert accounter.add_records(make_records([(1, 1, 1, 1, 1, 0, 0, 0)] * 5)) is None
    assert accounter.add_records(one(2)) is None
    assert len(accounter) == 2


def test_reaching_max_flows_evicts_everything_at_once() -> None:
    accounter = NativeAccounter(None, 3, boot_offset_ns=0)
    batch = accounter.add_records(make_records([(f, 1, 1, 1, 1, 0, 0, 0) for f in (1, 2, 1, 3)]))
    assert batch is not None
    assert sorted(batch.array["key"]["src_port"].tolist()) == [1001, 1002, 1003]
    assert len(accounter) == 0


def test_records_after_an_early_eviction_start_a_new_cache() -> None:
    accounter = NativeAccounter(None, 2, boot_offset_ns=0)
    batch = accounter.add_records(make_records([(f, 1, 1, 1, 1, 0, 0, 0) for f in (1, 2, 1, 3)]))
    assert batch is not None
    assert batch.array["key"]["src_port"].tolist() == [1001, 1002, 1001, 1003]
    assert len(accounter) == 0


def test_evict_takes_the_cache_and_the_tracer_aggregates() -> None:
    tracer = ScriptedTracer(aggregates=[make_records([(2, 5, 500, 1, 1, 0, 0, 0)])])
    accounter = NativeAccounter(tracer, 100, boot_offset_ns=0)
    accounter.add_records(one(1))
    batch = accounter.evict()
    assert sorted(batch.array["packets"].tolist()) == [1, 5]
    assert len(accounter.evict()) == 0


def test_poll_merges_tracer_events() -> None:
    tracer = ScriptedTracer(events=[make_records([(1, 1, 1, 1, 1, 0, 0, 0)] * 4)])
    accounter = NativeAccounter(tracer, 100, boot_offset_ns=0)
    assert accounter.poll(0.0) is None
    assert evict_one(accounter)["packets"] == 4


def test_poll_without_a_tracer_returns_none() -> None:
    assert NativeAccounter(None, 10).poll(0.0) is None


def test_the_table_grows_past_its_initial_size() -> None:
    table = FlowTable(expected_flows=4)
    records = np.zeros(100_000, dtype=RECORD_DTYPE)
    records["key"]["if_index"] = np.arange(100_000)
    records["value"]["packets"] = 1
    assert table.add_records(records) == 100_000
    assert table.add_records(records) == 100_000
    assert len(table) == 100_000
    taken = table.take_records()
    assert sorted(taken["key"]["if_index"].tolist()) == list(range(100_000))
    assert set(taken["value"]["packets"].tolist()) == {2}
    assert len(table) == 0


def test_a_cleared_table_forgets_its_flows() -> None:
    table = FlowTable(expected_flows=1000)
    table.add_records(make_records([(f, 1, 1, 1, 1, 0, 0, 0) for f in range(10)]))
    table.clear()
    table.add_records(one(1))
    assert table.take_records()["value"]["packets"].tolist() == [1]


# -- batch memory --------------------------------------------------------------------------------

def test_a_held_batch_is_not_overwritten_by_the_next_eviction() -> None:
    accounter = NativeAccounter(None, 100, boot_offset_ns=0)
    accounter.add_records(one(1, packets=11))
    first = accounter.evict()
    accounter.add_records(one(2, packets=22))
    second = accounter.evict()
    assert first.array["packets"].tolist() == [11]
    assert second.array["packets"].tolist() == [22]


def test_a_released_batch_buffer_is_reused() -> None:
    accounter = NativeAccounter(None, 100, boot_offset_ns=0)
    accounter.add_records(one(1))
    first = accounter.evict()
    address = first.array.__array_interface__["data"][0]
    first.release()
    accounter.add_records(one(2))
    second = accounter.evict()
    assert second.array.__array_interface__["data"][0] == address


def test_batches_stay_readable_after_close() -> None:
    accounter = NativeAccounter(None, 100, boot_offset_ns=0)
    accounter.add_records(one(1, packets=3))
    batch = accounter.evict()
    accounter.close()
    assert batch.array["packets"].tolist() == [3]
    with pytest.raises(ValueError, match="closed"):
        accounter.add_records(one(1))


def test_records_must_have_the_record_dtype() -> None:
    with pytest.raises(TypeError, match="RECORD_DTYPE"):
        FlowTable().add_records(np.zeros(3, dtype=FLOW_DTYPE))


# -- plugin --------------------------------------------------------------------------------------

def test_the_plugin_provides_the_native_accounter() -> None:
    (spec,) = native_accounter.flowkit_accounters()
    assert spec.name == "native"


# -- equivalence with the reference accounter ----------------------------------------------------

_counts = st.integers(0, 2**32)
_times = st.sampled_from([0, 1, 2, 50, 100, 2**40])
_extra = st.tuples(
    st.integers(0, 7),  # feature bits
    _times, _times,
    st.integers(0, 5),  # drop packets
    _times,  # drop_ns
    st.integers(0, 140),  # drop cause
    _times,  # rtt_ns
    _times,  # dns_ns
    st.integers(0, 0xFFFF),  # dns id
    st.integers(0x61, 0x7A),  # name byte
)
_row = st.one_of(
    st.tuples(
        st.integers(0, 11),  # flow id: few keys, so that merges and ties are common
        _counts, _counts, _times, _times,
        st.integers(0, 0x1FF),  # TCP flags
        st.integers(0, 63),  # DSCP
        st.sampled_from([0, 1, 2, 100]),  # sampling
    ),
    st.tuples(
        st.integers(0, 11), _counts, _counts, _times, _times, st.integers(0, 0x1FF),
        st.integers(0, 63), st.sampled_from([0, 1, 2, 100]),
        st.integers(0, 3),  # MAC byte
        _extra,
    ),
)
_step = st.one_of(
    st.tuples(st.just("poll"), st.lists(_row, max_size=40)),
    st.tuples(st.just("evict"), st.lists(_row, max_size=40)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_step, min_size=1, max_size=12), max_flows=st.integers(1, 14))
def test_native_and_python_accounters_produce_the_same_flows(
    steps: list[tuple[str, list[tuple[Any, ...]]]], max_flows: int
) -> None:
    """Same input, same batch boundaries, same flows (as multisets per batch)."""
    polls = [make_records(rows) for kind, rows in steps if kind == "poll"]
    aggregates = [make_records(rows) for kind, rows in steps if kind == "evict"]
    reference = PythonAccounter(ScriptedTracer(polls, aggregates), max_flows, OFFSET)
    native = NativeAccounter(ScriptedTracer(polls, aggregates), max_flows, OFFSET)
    for kind, _rows in steps:
        if kind == "poll":
            expected, got = reference.poll(0.0), native.poll(0.0)
            assert (expected is None) == (got is None)
        else:
            expected, got = reference.evict(), native.evict()
        assert as_multiset(got) == as_multiset(expected)
        if got is not None:
            got.release()
    assert as_multiset(native.evict()) == as_multiset(reference.evict())
    native.close()


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(_row, min_size=1, max_size=300), max_flows=st.integers(1, 20))
def test_add_records_matches_the_reference_record_by_record(
    rows: list[tuple[Any, ...]], max_flows: int
) -> None:
    records = make_records(rows)
    reference = PythonAccounter(None, max_flows, OFFSET)
    native = NativeAccounter(None, max_flows, boot_offset_ns=OFFSET)
    expected = reference.add_records(records)
    got = native.add_records(records)
    assert as_multiset(got) == as_multiset(expected)
    assert as_multiset(native.evict()) == as_multiset(reference.evict())
