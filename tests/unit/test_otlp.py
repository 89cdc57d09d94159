"""OTLP encoding: the C log records equal the opentelemetry-proto reference; metric budgets keep
totals."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("opentelemetry.proto")

from flowkit import otlp
from flowkit.model import FLOW_DTYPE, FlowBatch, ip_to_16
from flowkit.testing import make_flow, synthetic_flows

I63, U32, U16, U8 = 2**63 - 1, 2**32 - 1, 2**16 - 1, 2**8 - 1
V4 = b"\x00" * 10 + b"\xff\xff"

ip16 = st.one_of(
    st.binary(min_size=4, max_size=4).map(lambda b: V4 + b),
    st.binary(min_size=16, max_size=16),
    st.sampled_from([ip_to_16(a) for a in ("::", "::1", "fd00::1", "198.18.0.1")]),
)


def _uint(top: int) -> st.SearchStrategy[int]:
    edges = [e for e in (0, 1, 127, 128, 255, 256, 16383, 16384, top - 1, top) if e <= top]
    return st.sampled_from(edges) | st.integers(0, top)


@st.composite
def rows(draw: st.DrawFn) -> tuple[Any, ...]:
    row = np.zeros((), dtype=FLOW_DTYPE)
    key = row["key"]
    key["if_index"] = draw(st.integers(0, 6) | st.just(U32))
    key["eth_protocol"] = draw(st.sampled_from([0x0800, 0x86DD]) | _uint(U16))
    key["direction"] = draw(st.sampled_from([0, 1]))
    key["proto"] = draw(st.sampled_from([1, 6, 17, 58, 132]) | _uint(U8))
    row["src_mac"] = list(draw(st.binary(min_size=6, max_size=6)))
    row["dst_mac"] = list(draw(st.binary(min_size=6, max_size=6)))
    key["src_ip"] = list(draw(ip16))
    key["dst_ip"] = list(draw(ip16))
    key["src_port"] = draw(_uint(U16))
    key["dst_port"] = draw(_uint(U16))
    key["icmp_type"] = draw(_uint(U8))
    key["icmp_code"] = draw(_uint(U8))
    key["netns"] = draw(st.sampled_from([0, 0, 1, U16]))
    for name, bound in (("packets", I63), ("bytes", I63), ("start_ns", I63), ("end_ns", I63),
                        ("flags", U16), ("dscp", U8), ("sampling", U32)):
        row[name] = draw(_uint(bound))
    return row.item()  # type: ignore[no-any-return]


names = st.text(max_size=20) | st.sampled_from(["", "eth0", "e" * 200])


@st.composite
def batches(draw: st.DrawFn) -> FlowBatch:
    array = np.array(draw(st.lists(rows(), max_size=20)), dtype=FLOW_DTYPE)
    keys = st.integers(0, 6) | st.just(U32) | st.builds(
        lambda netns, index: netns << 32 | index, st.sampled_from([1, U16]), st.integers(0, 6)
    )
    interfaces = draw(st.dictionaries(keys, names, max_size=5))
    return FlowBatch(array, interfaces, None)


RESOURCE = otlp.OtlpResource({"service.name": "flowkit-agent", "host.ip": ["198.18.0.1"]})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches())
def test_c_logs_request_equals_the_opentelemetry_proto_reference(batch: FlowBatch) -> None:
    framing = RESOURCE.framing(otlp.import_otlp_proto())
    assert otlp.encode_logs_request(batch, framing) == otlp.reference_logs_request(batch, RESOURCE)


def test_log_record_attributes_follow_semantic_conventions() -> None:
    proto = otlp.import_otlp_proto()
    flow = make_flow(src_ip="fd00::1", dst_ip="fd00::2", proto=17, src_port=5353, direction=0,
                     interface="veth0", if_index=7)
    data = otlp.encode_logs_request(FlowBatch.from_flows([flow]), RESOURCE.framing(proto))
    request = proto.logs_service.ExportLogsServiceRequest.FromString(data)
    (record,) = request.resource_logs[0].scope_logs[0].log_records
    attrs = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in record.attributes}
    assert record.time_unix_nano == flow.end_ns
    assert attrs["source.address"] == "fd00::1"
    assert attrs["source.port"] == 5353
    assert attrs["network.transport"] == "udp"
    assert attrs["network.type"] == "ipv6"
    assert attrs["network.io.direction"] == "receive"
    assert attrs["network.interface.name"] == "veth0"
    assert attrs["flowkit.flow.bytes"] == flow.bytes
    assert attrs["flowkit.interface.index"] == 7
    assert [a[0] for a in otlp.LOG_ATTRIBUTES] == [kv.key for kv in record.attributes]


def test_metrics_budget_keeps_the_largest_series_and_folds_the_rest_into_overflow() -> None:
    batch = synthetic_flows(n_flows=10, packets=2, packet_bytes=100)
    array = batch.array
    array["bytes"] = np.arange(1, 11) * 1000  # flow i has (i + 1) kB
    series = otlp.aggregate(batch, ["source.address"], max_series=3)
    assert len(series) == 4
    assert [s.bytes for s in series[:3]] == [10_000, 9_000, 8_000]
    assert series[3].attributes == ((otlp.OVERFLOW_ATTRIBUTE, True),)
    assert sum(s.bytes for s in series) == int(array["bytes"].sum())
    assert sum(s.packets for s in series) == int(array["packets"].sum())


def test_metrics_group_equal_attributes() -> None:
    flows = [make_flow(src_port=40000 + i % 3, bytes=10, packets=1) for i in range(9)]
    series = otlp.aggregate(FlowBatch.from_flows(flows), ["source.port", "network.transport"],
                            max_series=10)
    totals = collections.Counter({s.attributes: s.bytes for s in series})
    assert totals == {
        (("source.port", 40000), ("network.transport", "tcp")): 30,
        (("source.port", 40001), ("network.transport", "tcp")): 30,
        (("source.port", 40002), ("network.transport", "tcp")): 30,
    }


def test_metrics_request_decodes_to_delta_sums() -> None:
    proto = otlp.import_otlp_proto()
    series = otlp.aggregate(synthetic_flows(n_flows=4), [], max_series=1)
    request = proto.metrics_service.ExportMetricsServiceRequest.FromString(
        otlp.metrics_request(series, RESOURCE, 1, 2)
    )
    metrics = request.resource_metrics[0].scope_metrics[0].metrics
    assert [m.name for m in metrics] == ["flowkit.flow.bytes", "flowkit.flow.packets"]
    assert metrics[0].sum.aggregation_temporality == proto.metrics.AGGREGATION_TEMPORALITY_DELTA
    assert metrics[0].sum.is_monotonic
    assert metrics[0].sum.data_points[0].as_int == 400


@pytest.mark.parametrize("attributes", [[], ["source.address", "destination.port",
                                              "network.transport"],
                                         ["network.interface.name", "flowkit.dscp",
                                          "network.type", "network.io.direction"]])
@pytest.mark.parametrize("budget", [1, 3, 1000])
def test_metrics_request_equals_the_opentelemetry_proto_reference(
    attributes: list[str], budget: int
) -> None:
    batch = synthetic_flows(n_flows=20, packets=3)
    series = otlp.aggregate(batch, attributes, budget)
    for start, now in ((0, 0), (1, 2), (1_700_000_000_000_000_000, 1_700_000_005_000_000_000)):
        assert otlp.metrics_request(series, RESOURCE, start, now) == \
            otlp.reference_metrics_request(series, RESOURCE, start, now)
