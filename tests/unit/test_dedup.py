"""DEDUPER=firstCome: one record per conversation, listing every interface that saw it."""

from __future__ import annotations

import time

import numpy as np

from flowkit.dedup import MAX_INTERFACES, FirstComeDeduper
from flowkit.model import FLOW_DTYPE, FlowArray, ip_to_16


def flows(*rows: tuple[int, int, int, int, int, int]) -> FlowArray:
    """Rows of (if_index, netns, direction, src_port, start ms from now, packets)."""
    now = time.time_ns()
    out = np.zeros(len(rows), dtype=FLOW_DTYPE)
    for i, (if_index, netns, direction, sport, start_ms, packets) in enumerate(rows):
        key = out[i]["key"]
        key["if_index"] = if_index
        key["netns"] = netns
        key["direction"] = direction
        key["src_port"] = sport
        key["dst_port"] = 53
        key["proto"] = 17
        key["eth_protocol"] = 0x0800
        key["src_ip"] = np.frombuffer(ip_to_16("198.18.0.1"), dtype="u1")
        key["dst_ip"] = np.frombuffer(ip_to_16("198.18.0.2"), dtype="u1")
        out[i]["packets"] = packets
        out[i]["bytes"] = packets * 100
        out[i]["start_ns"] = now + start_ms * 1_000_000
        out[i]["end_ns"] = now + (start_ms + 5) * 1_000_000
    return out


def listed(row: np.void) -> list[tuple[int, int, int]]:
    n = int(row["dup_count"])
    return [(int(row["dup_if_index"][j]), int(row["dup_netns"][j]),
             int(row["dup_direction"][j])) for j in range(n)]


def test_a_flow_seen_on_a_veth_and_a_bridge_is_kept_once_from_the_first_interface() -> None:
    dedup = FirstComeDeduper(expiry_s=10)
    out = dedup.apply(flows((12, 0, 1, 4000, 3, 10), (7, 3, 0, 4000, 1, 10)))
    assert len(out) == 1
    assert int(out[0]["key"]["if_index"]) == 7  # started first
    assert int(out[0]["packets"]) == 10  # the first interface's counts, not a sum
    assert listed(out[0]) == [(7, 3, 0), (12, 0, 1)]
    assert dedup.folded == 1


def test_different_conversations_are_not_merged() -> None:
    out = FirstComeDeduper(expiry_s=10).apply(flows((7, 0, 0, 4000, 0, 1), (7, 0, 0, 4001, 0, 1)))
    assert len(out) == 2
    assert [listed(r) for r in out] == [[(7, 0, 0)], [(7, 0, 0)]]


def test_the_first_interface_is_remembered_across_batches() -> None:
    dedup = FirstComeDeduper(expiry_s=10)
    dedup.apply(flows((7, 0, 0, 4000, 0, 1)))
    # Next period the bridge's flow happens to start earlier in the batch: the veth still wins.
    out = dedup.apply(flows((12, 0, 1, 4000, 1, 4), (7, 0, 0, 4000, 2, 4)))
    assert len(out) == 1
    assert int(out[0]["key"]["if_index"]) == 7
    assert listed(out[0]) == [(7, 0, 0), (12, 0, 1)]


def test_without_the_first_interface_in_a_batch_the_others_are_still_duplicates() -> None:
    dedup = FirstComeDeduper(expiry_s=10)
    dedup.apply(flows((7, 0, 0, 4000, 0, 1)))
    out = dedup.apply(flows((12, 0, 1, 4000, 1, 4), (13, 0, 1, 4000, 2, 4)))
    assert len(out) == 0
    assert dedup.folded == 2


def test_once_the_first_interface_is_forgotten_the_next_one_takes_over() -> None:
    dedup = FirstComeDeduper(expiry_s=1)
    dedup.apply(flows((7, 0, 0, 4000, -5_000, 1)))  # its last packet: 5 s ago
    out = dedup.apply(flows((12, 0, 1, 4000, 1, 4), (13, 0, 1, 4000, 2, 4)))
    assert len(out) == 1
    assert int(out[0]["key"]["if_index"]) == 12
    assert listed(out[0]) == [(12, 0, 1), (13, 0, 1)]


def test_forgotten_after_the_expiry() -> None:
    dedup = FirstComeDeduper(expiry_s=0)
    dedup.apply(flows((7, 0, 0, 4000, -10_000, 1)))
    assert len(dedup) == 0


def test_the_memory_is_bounded() -> None:
    dedup = FirstComeDeduper(expiry_s=3600, max_remembered=10)
    dedup.apply(flows(*[(7, 0, 0, 1000 + i, 0, 1) for i in range(50)]))
    assert len(dedup) == 10


def test_at_most_six_interfaces_are_listed() -> None:
    out = FirstComeDeduper(expiry_s=10).apply(
        flows(*[(i + 1, 0, 0, 4000, i, 1) for i in range(9)]))
    assert len(out) == 1
    assert int(out[0]["dup_count"]) == MAX_INTERFACES == 6
    assert [e[0] for e in listed(out[0])] == [1, 2, 3, 4, 5, 6]


def test_same_index_in_two_namespaces_are_two_interfaces() -> None:
    out = FirstComeDeduper(expiry_s=10).apply(flows((2, 5, 1, 4000, 0, 3), (2, 6, 0, 4000, 1, 3)))
    assert len(out) == 1
    assert listed(out[0]) == [(2, 5, 1), (2, 6, 0)]


def test_the_input_array_is_not_changed() -> None:
    batch = flows((12, 0, 1, 4000, 3, 10), (7, 0, 0, 4000, 1, 10))
    before = batch.copy()
    FirstComeDeduper(expiry_s=10).apply(batch)
    assert batch.tobytes() == before.tobytes()
