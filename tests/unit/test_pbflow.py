"""The pbflow schema and the flow <-> Record conversions (no network)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from flowkit.model import (
    EGRESS,
    ETH_P_IP,
    ETH_P_IPV6,
    INGRESS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    Flow,
    FlowBatch,
    flow_to_json_dict,
)
from flowkit.testing import make_flow

pytest.importorskip("google.protobuf")

from google.protobuf.descriptor import FieldDescriptor

from flowkit.pbflow import flow_pb2
from flowkit.pbflow.convert import (
    IP,
    Record,
    Records,
    batch_to_records,
    flow_to_record,
    ip_from_pb,
    ip_to_pb,
    record_to_flow,
    record_to_json_dict,
    records_messages,
)

T0 = 1_700_000_000_123_456_789

# (message, field) -> (number, type); the wire contract of DESIGN §5.
SCHEMA: dict[tuple[str, str], tuple[int, int]] = {
    ("Record", "eth_protocol"): (1, FieldDescriptor.TYPE_UINT32),
    ("Record", "direction"): (2, FieldDescriptor.TYPE_ENUM),
    ("Record", "time_flow_start"): (3, FieldDescriptor.TYPE_MESSAGE),
    ("Record", "time_flow_end"): (4, FieldDescriptor.TYPE_MESSAGE),
    ("Record", "data_link"): (5, FieldDescriptor.TYPE_MESSAGE),
    ("Record", "network"): (6, FieldDescriptor.TYPE_MESSAGE),
    ("Record", "transport"): (7, FieldDescriptor.TYPE_MESSAGE),
    ("Record", "bytes"): (8, FieldDescriptor.TYPE_UINT64),
    ("Record", "packets"): (9, FieldDescriptor.TYPE_UINT64),
    ("Record", "interface"): (10, FieldDescriptor.TYPE_STRING),
    ("Record", "agent_ip"): (12, FieldDescriptor.TYPE_MESSAGE),
    ("Record", "flags"): (13, FieldDescriptor.TYPE_UINT32),
    ("Record", "icmp_type"): (14, FieldDescriptor.TYPE_UINT32),
    ("Record", "icmp_code"): (15, FieldDescriptor.TYPE_UINT32),
    ("Record", "pkt_drop_bytes"): (16, FieldDescriptor.TYPE_UINT64),
    ("Record", "pkt_drop_packets"): (17, FieldDescriptor.TYPE_UINT64),
    ("Record", "pkt_drop_latest_flags"): (18, FieldDescriptor.TYPE_UINT32),
    ("Record", "pkt_drop_latest_state"): (19, FieldDescriptor.TYPE_UINT32),
    ("Record", "pkt_drop_latest_drop_cause"): (20, FieldDescriptor.TYPE_UINT32),
    ("Record", "dns_id"): (21, FieldDescriptor.TYPE_UINT32),
    ("Record", "dns_flags"): (22, FieldDescriptor.TYPE_UINT32),
    ("Record", "dns_latency"): (23, FieldDescriptor.TYPE_MESSAGE),
    ("Record", "time_flow_rtt"): (24, FieldDescriptor.TYPE_MESSAGE),
    ("Record", "dns_errno"): (25, FieldDescriptor.TYPE_UINT32),
    ("Record", "dup_list"): (26, FieldDescriptor.TYPE_MESSAGE),
    ("Record", "sampling"): (29, FieldDescriptor.TYPE_UINT32),
    ("Record", "dns_name"): (32, FieldDescriptor.TYPE_STRING),
    ("DupMapEntry", "interface"): (1, FieldDescriptor.TYPE_STRING),
    ("DupMapEntry", "direction"): (2, FieldDescriptor.TYPE_ENUM),
    ("DupMapEntry", "udn"): (3, FieldDescriptor.TYPE_STRING),
    ("DataLink", "src_mac"): (1, FieldDescriptor.TYPE_UINT64),
    ("DataLink", "dst_mac"): (2, FieldDescriptor.TYPE_UINT64),
    ("Network", "src_addr"): (1, FieldDescriptor.TYPE_MESSAGE),
    ("Network", "dst_addr"): (2, FieldDescriptor.TYPE_MESSAGE),
    ("Network", "dscp"): (3, FieldDescriptor.TYPE_UINT32),
    ("Transport", "src_port"): (1, FieldDescriptor.TYPE_UINT32),
    ("Transport", "dst_port"): (2, FieldDescriptor.TYPE_UINT32),
    ("Transport", "protocol"): (3, FieldDescriptor.TYPE_UINT32),
    ("IP", "ipv4"): (1, FieldDescriptor.TYPE_FIXED32),
    ("IP", "ipv6"): (2, FieldDescriptor.TYPE_BYTES),
    ("Records", "entries"): (1, FieldDescriptor.TYPE_MESSAGE),
}


def v6_flow(**overrides: Any) -> Flow:
    fields: dict[str, Any] = {
        "eth_protocol": ETH_P_IPV6,
        "src_ip": "fd00::1",
        "dst_ip": "fd00:0:0:ff::2",
        "proto": IPPROTO_UDP,
        "src_port": 5353,
        "dst_port": 53,
        "flags": 0,
        "direction": INGRESS,
        "start_ns": T0,
        "end_ns": T0 + 2_500_000_001,
    }
    fields.update(overrides)
    return make_flow(**fields)


def icmp_flow() -> Flow:
    return make_flow(
        proto=IPPROTO_ICMP,
        src_port=0,
        dst_port=0,
        icmp_type=3,
        icmp_code=13,
        flags=0,
        start_ns=T0,
        end_ns=T0,
    )


def test_schema_has_the_exact_field_numbers_and_types() -> None:
    for (message, field), (number, ftype) in SCHEMA.items():
        descriptor = flow_pb2.DESCRIPTOR.message_types_by_name[message].fields_by_name[field]
        assert (descriptor.number, descriptor.type) == (number, ftype), f"{message}.{field}"
    record_fields = flow_pb2.DESCRIPTOR.message_types_by_name["Record"].fields_by_name
    assert set(record_fields) == {f for (m, f) in SCHEMA if m == "Record"}


def test_schema_package_service_and_enum() -> None:
    assert flow_pb2.DESCRIPTOR.package == "pbflow"
    service = flow_pb2.DESCRIPTOR.services_by_name["Collector"]
    send = service.methods_by_name["Send"]
    assert send.input_type.full_name == "pbflow.Records"
    assert send.output_type.full_name == "pbflow.CollectorReply"
    assert flow_pb2.Direction.Value("INGRESS") == 0
    assert flow_pb2.Direction.Value("EGRESS") == 1
    ip_fields = flow_pb2.DESCRIPTOR.message_types_by_name["IP"].oneofs_by_name["ip_family"]
    assert [f.name for f in ip_fields.fields] == ["ipv4", "ipv6"]
    timestamp = flow_pb2.DESCRIPTOR.message_types_by_name["Record"].fields_by_name["time_flow_end"]
    assert timestamp.message_type.full_name == "google.protobuf.Timestamp"


def test_ipv4_is_the_big_endian_numeric_value() -> None:
    assert ip_to_pb("198.18.0.1") == IP(ipv4=0xC6120001)
    # on the wire: tag 0x0d (field 1, fixed32) then the value little-endian, as fixed32 is
    assert IP(ipv4=0xC6120001).SerializeToString() == b"\x0d\x01\x00\x12\xc6"


def test_ipv6_is_sixteen_bytes() -> None:
    message = ip_to_pb("fd00::1")
    assert message.WhichOneof("ip_family") == "ipv6"
    assert message.ipv6 == ipaddress.IPv6Address("fd00::1").packed


def test_ip_round_trip_and_unset_address() -> None:
    for text in ("198.18.255.254", "0.0.0.0", "fd00::abcd", "::"):
        assert ip_from_pb(ip_to_pb(text)) == ipaddress.ip_address(text)
    assert ip_from_pb(IP()) == ipaddress.IPv4Address(0)
    assert ip_from_pb(IP(), ETH_P_IPV6) == ipaddress.IPv6Address(0)


def test_ipv6_of_wrong_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        ip_from_pb(IP(ipv6=b"\x01\x02"))


def test_flow_to_record_sets_every_field() -> None:
    flow = make_flow(
        direction=EGRESS,
        src_mac=bytes.fromhex("0a0b0c0d0e0f"),
        dst_mac=bytes.fromhex("ffeeddccbbaa"),
        dscp=46,
        sampling=50,
        packets=7,
        bytes=7000,
        start_ns=T0,
        end_ns=T0 + 999_999_999,
        flags=0x1FF,
        interface="fkE-veth0",
    )
    record = flow_to_record(flow, agent_ip="198.18.255.1")
    assert record.eth_protocol == ETH_P_IP
    assert record.direction == flow_pb2.EGRESS
    assert (record.time_flow_start.seconds, record.time_flow_start.nanos) == (
        1_700_000_000,
        123_456_789,
    )
    assert (record.time_flow_end.seconds, record.time_flow_end.nanos) == (
        1_700_000_001,
        123_456_788,
    )
    assert record.data_link.src_mac == 0x0A0B0C0D0E0F
    assert record.data_link.dst_mac == 0xFFEEDDCCBBAA
    assert record.network.src_addr == IP(ipv4=0xC6120001)
    assert record.network.dst_addr == IP(ipv4=0xC6130001)
    assert record.network.dscp == 46
    assert (record.transport.src_port, record.transport.dst_port) == (40000, 443)
    assert record.transport.protocol == 6
    assert (record.bytes, record.packets) == (7000, 7)
    assert record.interface == "fkE-veth0"
    assert record.agent_ip == IP(ipv4=0xC612FF01)
    assert record.flags == 0x1FF
    assert record.sampling == 50


def test_agent_ip_is_absent_when_unknown() -> None:
    record = flow_to_record(make_flow())
    assert not record.HasField("agent_ip")
    assert "AgentIP" not in record_to_json_dict(record)


@pytest.mark.parametrize(
    "flow",
    [
        make_flow(start_ns=T0, end_ns=T0 + 1),
        v6_flow(),
        icmp_flow(),
        v6_flow(proto=IPPROTO_ICMPV6, src_port=0, dst_port=0, icmp_type=128),
    ],
)
def test_record_decodes_back_to_the_same_flow(flow: Flow) -> None:
    flow = Flow(
        **{
            **{s: getattr(flow, s) for s in Flow.__slots__},
            "if_index": 0,
            "agent_ip": ipaddress.ip_address("fd00::99"),
        }
    )
    decoded = record_to_flow(Record.FromString(flow_to_record(flow).SerializeToString()))
    assert decoded == flow


def test_json_of_a_record_is_the_stdout_json_of_the_flow() -> None:
    flow = v6_flow(agent_ip=ipaddress.ip_address("198.18.255.1"), dscp=10, sampling=1)
    assert record_to_json_dict(flow_to_record(flow)) == flow_to_json_dict(flow)


def test_batch_to_records_matches_per_flow_encoding() -> None:
    flows = [
        make_flow(if_index=2, start_ns=T0, end_ns=T0),
        v6_flow(if_index=5, interface="fkE-v6"),
        icmp_flow(),
    ]
    batch = FlowBatch.from_flows(flows, agent_ip="fd00::7")
    records = batch_to_records(batch)
    assert records == [flow_to_record(f, "fd00::7") for f in flows]
    assert [r.interface for r in records] == ["eth0", "fkE-v6", "eth0"]


def test_empty_batch_gives_no_records() -> None:
    assert batch_to_records(FlowBatch.empty()) == []


def test_records_messages_split_at_the_maximum() -> None:
    records = [flow_to_record(make_flow(src_port=i)) for i in range(25)]
    messages = list(records_messages(records, 10))
    assert [len(m.entries) for m in messages] == [10, 10, 5]
    assert [r.transport.src_port for m in messages for r in m.entries] == list(range(25))
    assert all(isinstance(m, Records) for m in messages)
    with pytest.raises(ValueError, match="at least 1"):
        list(records_messages(records, 0))


def test_sampling_uses_field_29_on_the_wire() -> None:
    assert Record(sampling=5).SerializeToString() == b"\xe8\x01\x05"


def test_feature_fields_survive_protobuf_as_the_stdout_json_shows_them() -> None:
    """What a Kafka or gRPC consumer decodes is the JSON stdout prints, feature keys included."""
    from flowkit.encoding import encode_records
    from flowkit.model import FEATURE_DNS, FEATURE_DROPS, FEATURE_RTT
    from flowkit.pbflow.convert import record_to_json_dict

    base: dict[str, Any] = {
        "if_index": 3, "interface": "veth0", "direction": 0, "eth_protocol": 0x0800,
        "src_mac": bytes(6), "dst_mac": bytes(6),
        "src_ip": ipaddress.ip_address("198.18.0.1"),
        "dst_ip": ipaddress.ip_address("198.18.0.2"),
        "src_port": 53, "dst_port": 40000, "proto": 17,
        "icmp_type": 0, "icmp_code": 0, "packets": 2, "bytes": 200, "start_ns": T0,
        "end_ns": T0 + 5, "flags": 0, "dscp": 0, "sampling": 0,
    }
    flows = [
        Flow(**base, features=FEATURE_DROPS | FEATURE_RTT | FEATURE_DNS, drop_bytes=128,
             drop_packets=1, drop_flags=0x10, drop_state=1, drop_cause=6, rtt_ns=40_478_000,
             dns_id=0x1234, dns_flags=0x8183, dns_latency_ns=201_500_000, dns_errno=0,
             dns_name="nx.example.test"),
        Flow(**base, features=FEATURE_DNS, dns_id=7, dns_flags=0x0100, dns_name="a.test"),
        Flow(**base, features=FEATURE_RTT, rtt_ns=0),
        Flow(**base),
    ]
    batch = FlowBatch.from_flows(flows)
    decoded = [record_to_json_dict(Record.FromString(raw)) for raw in encode_records(batch).split()]
    expected = batch.to_dicts()
    assert decoded == expected
    assert expected[0]["DnsFlagsResponseCode"] == "NXDomain"
    assert expected[0]["PktDropLatestState"] == "TCP_ESTABLISHED"
    assert "TimeFlowRttNs" in expected[2]
    assert "DnsId" not in expected[3]
