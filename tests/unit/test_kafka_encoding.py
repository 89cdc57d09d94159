"""What goes into a Kafka message: the address-pair key and the json/protobuf values."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

import orjson
import pytest

from flowkit.model import ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, Flow, FlowBatch, ip_to_16
from flowkit_plugins.kafka_exporter import (
    _RateLimitedLog,
    encode_json,
    encode_protobuf,
    message_keys,
)


def flow(src: str, dst: str, **extra: object) -> Flow:
    v6 = ":" in src
    values: dict[str, object] = {
        "if_index": 3,
        "interface": "fkD-x",
        "direction": 1,
        "eth_protocol": ETH_P_IPV6 if v6 else ETH_P_IP,
        "src_mac": b"\x02\x00\x00\x00\x00\x01",
        "dst_mac": b"\x02\x00\x00\x00\x00\x02",
        "src_ip": ipaddress.ip_address(src),
        "dst_ip": ipaddress.ip_address(dst),
        "src_port": 1234,
        "dst_port": 80,
        "proto": IPPROTO_TCP,
        "icmp_type": 0,
        "icmp_code": 0,
        "packets": 2,
        "bytes": 140,
        "start_ns": 1_700_000_000_000_000_000,
        "end_ns": 1_700_000_001_500_000_000,
        "flags": 0x18,
        "dscp": 10,
        "sampling": 0,
    }
    values.update(extra)
    return Flow(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("198.18.0.1", "198.18.0.2"),
        ("198.19.255.255", "198.18.0.0"),
        ("fd00::1", "fd00::2"),
        ("fd00::1:0:0:0:1", "fd00::2"),  # differ in the first 8 bytes only
        ("fd00::5", "fd00::5"),
        ("fd00::", "198.18.0.1"),
    ],
)
def test_key_is_the_sorted_address_pair_for_both_directions(a, b):
    batch = FlowBatch.from_flows([flow(a, b), flow(b, a)])
    expected = min(ip_to_16(a), ip_to_16(b)) + max(ip_to_16(a), ip_to_16(b))

    assert message_keys(batch) == [expected, expected]


def test_no_keys_for_an_empty_batch():
    assert message_keys(FlowBatch.empty()) == []


def test_json_value_is_the_netobserv_object():
    f = flow("198.18.0.1", "198.18.0.2")
    (value,) = encode_json(FlowBatch.from_flows([f], agent_ip="198.18.0.9"))

    decoded = orjson.loads(value)
    assert decoded == {
        "Etype": 0x0800,
        "FlowDirection": 1,
        "SrcMac": "02:00:00:00:00:01",
        "DstMac": "02:00:00:00:00:02",
        "SrcAddr": "198.18.0.1",
        "DstAddr": "198.18.0.2",
        "SrcPort": 1234,
        "DstPort": 80,
        "Proto": 6,
        "Bytes": 140,
        "Packets": 2,
        "Interface": "fkD-x",
        "TimeFlowStart": 1_700_000_000,
        "TimeFlowEnd": 1_700_000_001,
        "TimeFlowStartMs": 1_700_000_000_000,
        "TimeFlowEndMs": 1_700_000_001_500,
        "Flags": 0x18,
        "IcmpType": 0,
        "IcmpCode": 0,
        "Dscp": 10,
        "Sampling": 0,
        "AgentIP": "198.18.0.9",
    }


def test_protobuf_value_is_one_record_per_flow():
    convert = pytest.importorskip("flowkit.pbflow.convert")
    flows = [flow("198.18.0.1", "198.18.0.2"), flow("fd00::1", "fd00::2", dscp=0)]
    values = encode_protobuf(FlowBatch.from_flows(flows))

    decoded = [convert.record_to_flow(convert.Record.FromString(v)) for v in values]
    # Everything round-trips except the interface index, which is not on the wire.
    expected = [dataclasses.replace(f, if_index=0) for f in flows]
    assert decoded == expected


def test_rate_limited_log_holds_back_repeats_and_reports_them(caplog):
    logger = logging.getLogger("fkD.test")
    limited = _RateLimitedLog(logger, interval=3600)
    with caplog.at_level(logging.WARNING, logger="fkD.test"):
        for i in range(5):
            limited.emit("down", logging.WARNING, "broker down %d", i)
        limited.emit("other", logging.WARNING, "something else")

    assert [r.getMessage() for r in caplog.records] == ["broker down 0", "something else"]


def test_rate_limited_log_counts_suppressed_lines_in_the_next_one(caplog):
    logger = logging.getLogger("fkD.test2")
    limited = _RateLimitedLog(logger, interval=0)
    limited._interval = 3600
    with caplog.at_level(logging.WARNING, logger="fkD.test2"):
        limited.emit("k", logging.WARNING, "first")
        limited.emit("k", logging.WARNING, "second")
        limited._interval = 0
        limited.emit("k", logging.WARNING, "third")

    assert [r.getMessage() for r in caplog.records] == [
        "first",
        "third (1 similar messages suppressed)",
    ]


def test_librdkafka_errors_go_to_debug_only(caplog):
    logger = logging.getLogger("fkD.test3")
    limited = _RateLimitedLog(logger)
    with caplog.at_level(logging.DEBUG, logger="fkD.test3"):
        limited.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "refused")

    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "FAIL [rdkafka#producer-1] refused")
    ]
