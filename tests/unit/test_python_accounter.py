"""The reference accounter: how records merge, when the cache is evicted, time conversion."""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import numpy as np
from fk_doubles import ScriptedTracer, synthetic_records
from hypothesis import given
from hypothesis import strategies as st

from flowkit.model import (
    EXTRA_DTYPE,
    FEATURE_DNS,
    FEATURE_DROPS,
    FEATURE_RTT,
    FlowArray,
    FlowBatch,
)
from flowkit_plugins.python_accounter import (
    PythonAccounter,
    concat_batches,
    merge_extra,
    merge_value,
)

OFFSET = 1_700_000_000_000_000_000


def record(flow: int, *, packets: int = 1, nbytes: int = 100, first: int = 1_000,
           last: int = 2_000, flags: int | None = None, dscp: int = 0,
           sampling: int = 0) -> FlowArray:
    records = synthetic_records([flow], packet_bytes=nbytes, first_ns=first, last_ns=last)
    value = records["value"]
    value["packets"] = packets
    value["dscp"] = dscp
    value["sampling"] = sampling
    if flags is not None:
        value["flags"] = flags
    return records


def accounter(max_flows: int = 100, tracer: ScriptedTracer | None = None) -> PythonAccounter:
    return PythonAccounter(tracer, max_flows, boot_offset_ns=OFFSET)


# -- the merge rule ----------------------------------------------------------------------------


def v(packets: int, nbytes: int, first: int, last: int, flags: int, dscp: int, sampling: int,
      mac: int = 0) -> list[Any]:
    """A value row as numpy's tolist() gives it (VALUE_DTYPE order), MACs all ``mac``."""
    return [packets, nbytes, first, last, flags, dscp, 0, sampling, [mac] * 6, [mac] * 6, 0]


def x(**fields: Any) -> list[Any]:
    """An extra row (EXTRA_DTYPE order) with the given fields, the rest zero."""
    row = np.zeros(1, dtype=EXTRA_DTYPE)
    for name, value in fields.items():
        row[name] = value
    return list(row.tolist()[0])


def test_merging_sums_counters_and_widens_the_time_range() -> None:
    merged = merge_value(None, v(2, 200, 50, 60, 0x02, 0, 0))
    merged = merge_value(merged, v(3, 300, 40, 55, 0x10, 0, 0))
    assert merged[:5] == [5, 500, 40, 60, 0x12]


def test_a_zero_first_seen_does_not_count_as_earliest() -> None:
    merged = merge_value(None, v(1, 1, 0, 10, 0, 0, 0))
    merged = merge_value(merged, v(1, 1, 7, 9, 0, 0, 0))
    merged = merge_value(merged, v(1, 1, 0, 8, 0, 0, 0))
    assert merged[2] == 7


def test_dscp_comes_from_the_newest_record_and_the_incoming_one_on_ties() -> None:
    merged = merge_value(None, v(1, 1, 1, 10, 0, 8, 0))
    assert merge_value(list(merged), v(1, 1, 1, 5, 0, 16, 0))[5] == 8
    assert merge_value(list(merged), v(1, 1, 1, 10, 0, 16, 0))[5] == 16
    assert merge_value(list(merged), v(1, 1, 1, 11, 0, 24, 0))[5] == 24


def test_sampling_is_the_largest_seen() -> None:
    merged = merge_value(None, v(1, 1, 1, 1, 0, 0, 10))
    assert merge_value(merged, v(1, 1, 1, 1, 0, 0, 5))[7] == 10


def test_macs_come_from_the_earliest_record_and_the_existing_one_on_ties() -> None:
    merged = merge_value(None, v(1, 1, 50, 60, 0, 0, 0, mac=1))
    assert merge_value(list(merged), v(1, 1, 40, 70, 0, 0, 0, mac=2))[8] == [2] * 6
    assert merge_value(list(merged), v(1, 1, 50, 70, 0, 0, 0, mac=3))[8] == [1] * 6
    assert merge_value(list(merged), v(1, 1, 0, 70, 0, 0, 0, mac=4))[8] == [1] * 6


def test_drops_sum_and_the_latest_drop_names_the_cause() -> None:
    merged = merge_extra(None, x(features=FEATURE_DROPS, drop_bytes=100, drop_packets=1,
                                 drop_ns=50, drop_cause=7, drop_flags=2, drop_state=1))
    merged = merge_extra(merged, x(features=FEATURE_DROPS, drop_bytes=60, drop_packets=2,
                                   drop_ns=40, drop_cause=9, drop_flags=16, drop_state=2))
    assert merged[2:8] == [160, 3, 50, 7, 2, 1]
    merged = merge_extra(merged, x(features=FEATURE_DROPS, drop_bytes=1, drop_packets=1,
                                   drop_ns=50, drop_cause=11, drop_flags=4, drop_state=7))
    assert merged[2:8] == [161, 4, 50, 11, 4, 7]
    # A record without drops leaves the latest drop alone even when it is newer.
    merged = merge_extra(merged, x(features=FEATURE_RTT, rtt_ns=5, last_ns=90))
    assert merged[4:8] == [50, 11, 4, 7]
    assert merged[8] == FEATURE_DROPS | FEATURE_RTT


def test_rtt_is_the_largest_seen() -> None:
    merged = merge_extra(None, x(features=FEATURE_RTT, rtt_ns=300))
    merged = merge_extra(merged, x(features=FEATURE_RTT, rtt_ns=200))
    assert merged[9] == 300


def test_dns_fields_come_from_the_newest_dns_record() -> None:
    older = x(features=FEATURE_DNS, dns_ns=10, dns_id=1, dns_flags=0x8180, dns_latency_ns=5,
              dns_name=list(b"\x01a" + bytes(30)))
    newer = x(features=FEATURE_DNS, dns_ns=20, dns_id=2, dns_flags=0x8183, dns_latency_ns=9,
              dns_errno=2, dns_name=list(b"\x01b" + bytes(30)))
    for first, second in ((older, newer), (newer, older)):
        merged = merge_extra(merge_extra(None, first), second)
        assert merged == newer


def test_a_drop_only_record_gives_the_flow_its_times() -> None:
    records = record(1, packets=0, nbytes=0, first=0, last=0)
    records["extra"]["features"] = FEATURE_DROPS
    records["extra"]["first_ns"] = 5_000
    records["extra"]["last_ns"] = 7_000
    records["extra"]["drop_packets"] = 3
    acc = accounter()
    acc.add_records(records)
    (flow,) = acc.evict()
    assert (flow.packets, flow.drop_packets) == (0, 3)
    assert (flow.start_ns, flow.end_ns) == (OFFSET + 5_000, OFFSET + 7_000)


# -- the cache ---------------------------------------------------------------------------------


def test_records_of_one_flow_become_one_flow() -> None:
    acc = accounter()
    acc.add_records(np.concatenate([
        record(0, packets=1, nbytes=100, first=5_000, last=6_000, flags=0x02),
        record(0, packets=2, nbytes=300, first=1_000, last=9_000, flags=0x10, dscp=46),
        record(1),
    ]))
    flows = {f.src_ip.packed[-1]: f for f in acc.evict()}
    assert len(flows) == 2
    merged = flows[1]
    assert (merged.packets, merged.bytes, merged.flags, merged.dscp) == (3, 400, 0x12, 46)
    assert (merged.start_ns, merged.end_ns) == (OFFSET + 1_000, OFFSET + 9_000)


def test_evict_empties_the_cache() -> None:
    acc = accounter()
    acc.add_records(synthetic_records(range(3)))
    assert len(acc.evict()) == 3
    assert len(acc.evict()) == 0


def test_reaching_the_flow_limit_evicts_everything_at_once() -> None:
    acc = accounter(max_flows=4)
    evicted = acc.add_records(synthetic_records([0, 1, 0, 2, 3, 4, 5]))
    assert evicted is not None
    assert len(evicted) == 4
    assert int(evicted.array["packets"].sum()) == 5
    assert len(acc.evict()) == 2  # flows 4 and 5 stay in the cache until then


def test_poll_returns_a_batch_only_when_the_cache_filled_up() -> None:
    tracer = ScriptedTracer()
    acc = accounter(max_flows=3, tracer=tracer)
    tracer.feed(synthetic_records([0, 1]))
    assert acc.poll(1.0) is None
    tracer.feed(synthetic_records([2, 3, 4, 5, 6, 7]))
    batch = acc.poll(1.0)
    assert batch is not None
    assert len(batch) == 6  # two evictions of 3 flows, handed over as one batch
    assert acc.poll(0) is None  # nothing new
    assert len(acc.evict()) == 2


def test_poll_without_a_tracer_returns_nothing() -> None:
    assert accounter().poll(0) is None


def test_evict_includes_what_the_tracer_aggregated() -> None:
    class AggregatingTracer(ScriptedTracer):
        def read_aggregates(self) -> FlowArray:
            return record(5, packets=7)

    acc = accounter(tracer=AggregatingTracer())
    acc.add_records(record(5, packets=1))
    (flow,) = list(acc.evict())
    assert flow.packets == 8


def test_close_drops_the_cache() -> None:
    acc = accounter()
    acc.add_records(synthetic_records([0]))
    acc.close()
    assert len(acc.evict()) == 0


def test_the_default_boot_offset_maps_monotonic_to_unix_time() -> None:
    import time

    before = time.time_ns()
    acc = PythonAccounter(None, 10)
    now_monotonic = time.monotonic_ns()
    acc.add_records(synthetic_records([0], first_ns=now_monotonic, last_ns=now_monotonic))
    (flow,) = list(acc.evict())
    assert before - 1_000_000_000 < flow.start_ns < time.time_ns() + 1_000_000_000


def test_concat_batches_releases_its_inputs() -> None:
    released: list[int] = []
    parts = []
    for i in range(2):
        source = accounter()
        source.add_records(synthetic_records(range(i + 1)))
        evicted = source.evict()
        parts.append(FlowBatch(evicted.array, release=functools.partial(released.append, i)))
    joined = concat_batches(parts)
    assert len(joined) == 3
    assert released == [0, 1]


# -- against a plain-Python oracle -------------------------------------------------------------


@given(
    st.lists(st.tuples(st.integers(0, 9), st.integers(1, 5), st.integers(1, 1500)),
             min_size=1, max_size=200),
    st.integers(1, 12),
)
def test_no_packet_is_lost_or_counted_twice(
    stream: list[tuple[int, int, int]], max_flows: int
) -> None:
    acc = accounter(max_flows=max_flows)
    records = np.concatenate([record(f, packets=p, nbytes=b) for f, p, b in stream])
    early = acc.add_records(records)
    batches = [acc.evict()] if early is None else [early, acc.evict()]

    got: Counter[tuple[int, str]] = Counter()
    assert len(batches[-1]) <= max_flows  # what stayed in the cache
    for batch in batches:
        for flow in batch:
            got[(flow.src_ip.packed[-1], "packets")] += flow.packets
            got[(flow.src_ip.packed[-1], "bytes")] += flow.bytes
    expected: Counter[tuple[int, str]] = Counter()
    for f, p, b in stream:
        expected[(f + 1, "packets")] += p
        expected[(f + 1, "bytes")] += b
    assert got == expected
