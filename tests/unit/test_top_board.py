"""``flowkit-agent top``'s board: an interface is its index within its network namespace."""

from __future__ import annotations

import dataclasses
import time

from flowkit.model import Flow, FlowBatch
from flowkit.synthetic import synthetic_flow_key
from flowkit.top import FlowBoard


def test_equal_indexes_in_two_namespaces_are_two_rows_with_their_own_names() -> None:
    """The same packet seen entering interface 7 of namespace 1 and interface 7 of namespace 2
    (a router namespace, then the destination's): two rows, each named as stdout names it."""
    now = time.time_ns()
    base = Flow(**synthetic_flow_key(0), packets=3, bytes=300, start_ns=now, end_ns=now,
                dscp=0, sampling=0)
    base = dataclasses.replace(base, if_index=7, direction=0)
    flows = [dataclasses.replace(base, netns=1, interface="fkR/r-in"),
             dataclasses.replace(base, netns=2, interface="fkB/b0"),
             dataclasses.replace(base, netns=0, interface="eth7")]
    batch = FlowBatch.from_flows(flows)
    assert [flow.interface for flow in batch] == ["fkR/r-in", "fkB/b0", "eth7"]

    board = FlowBoard(period=1.0)
    board.add(batch)
    rows, matching = board.top("bytes", [], 10)
    assert matching == 3
    assert sorted(row.interface for row in rows) == ["eth7", "fkB/b0", "fkR/r-in"]
    assert all(row.packets == 3 for row in rows)
