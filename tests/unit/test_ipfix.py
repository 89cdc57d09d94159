"""The C IPFIX encoder writes exactly the bytes of the Python reference (flowkit/ipfix.py).

The reference is checked on its own against RFC 7011's layout (header, sets, templates,
sequence numbers); random batches (hypothesis) then check the C encoder byte for byte.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowkit import ipfix
from flowkit.ipfix import IpfixParams
from flowkit.model import FLOW_DTYPE, FlowBatch, ip_to_16
from flowkit.testing import make_flow

U8, U16, U32, U64 = 2**8 - 1, 2**16 - 1, 2**32 - 1, 2**64 - 1
V4 = b"\x00" * 10 + b"\xff\xff"

ip16 = st.one_of(
    st.binary(min_size=4, max_size=4).map(lambda b: V4 + b),
    st.binary(min_size=16, max_size=16),
    st.sampled_from([ip_to_16(a) for a in ("::", "::1", "fd00::1", "198.18.0.1", "0.0.0.0")]),
)


def _uint(top: int) -> st.SearchStrategy[int]:
    edges = [e for e in (0, 1, 254, 255, 256, top - 1, top) if e <= top]
    return st.sampled_from(edges) | st.integers(0, top)


@st.composite
def rows(draw: st.DrawFn) -> tuple[Any, ...]:
    v4 = draw(st.booleans())
    src = draw(ip16) if not v4 else V4 + draw(st.binary(min_size=4, max_size=4))
    dst = draw(ip16) if not v4 else V4 + draw(st.binary(min_size=4, max_size=4))
    row = np.zeros((), dtype=FLOW_DTYPE)
    key = row["key"]
    key["if_index"] = draw(st.integers(0, 6) | st.just(U32))
    key["eth_protocol"] = draw(st.sampled_from([0x0800, 0x86DD]) | _uint(U16))
    key["direction"] = draw(st.sampled_from([0, 1]))
    key["proto"] = draw(st.sampled_from([1, 6, 17, 58]) | _uint(U8))
    row["src_mac"] = list(draw(st.binary(min_size=6, max_size=6)))
    row["dst_mac"] = list(draw(st.binary(min_size=6, max_size=6)))
    key["src_ip"] = list(src)
    key["dst_ip"] = list(dst)
    key["src_port"] = draw(_uint(U16))
    key["dst_port"] = draw(_uint(U16))
    key["icmp_type"] = draw(_uint(U8))
    key["icmp_code"] = draw(_uint(U8))
    key["netns"] = draw(st.sampled_from([0, 0, 1, U16]))
    for name, bound in (("packets", U64), ("bytes", U64), ("start_ns", U64), ("end_ns", U64),
                        ("flags", U16), ("dscp", U8), ("sampling", U32), ("features", 7),
                        ("drop_bytes", U64), ("drop_packets", U64), ("drop_flags", U16),
                        ("drop_state", U8), ("drop_cause", U32), ("rtt_ns", U64),
                        ("dns_id", U16), ("dns_flags", U16), ("dns_latency_ns", U64),
                        ("dns_errno", U8)):
        row[name] = draw(_uint(bound))
    row["dns_name"] = draw(st.sampled_from([b"", b"example.org", b"x" * 32, b"a.b"]))
    return row.item()  # type: ignore[no-any-return]


names = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20) | st.sampled_from(
    ["", "eth0", "e" * 254, "f" * 255, "g" * 300]
)


@st.composite
def batches(draw: st.DrawFn) -> FlowBatch:
    array = np.array(draw(st.lists(rows(), max_size=40)), dtype=FLOW_DTYPE)
    keys = st.integers(0, 6) | st.just(U32) | st.builds(
        lambda netns, index: netns << 32 | index, st.sampled_from([1, U16]), st.integers(0, 6)
    )
    interfaces = draw(st.dictionaries(keys, names, max_size=5))
    return FlowBatch(array, interfaces, None)


params = st.builds(
    IpfixParams,
    domain_id=_uint(U32),
    max_message=st.sampled_from([200, 512, 1472, 1500, 65535]) | st.integers(160, 65535),
    template_base=st.sampled_from([256, 1000, 65534]),
    exporter_ip=st.sampled_from([None, "198.18.0.254", "fd00::fe", "0.0.0.0"]),
    enterprise=st.sampled_from([0, 0, 1, 32473, U32]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), p=params, export_time=_uint(U32), sequence=_uint(U32))
def test_c_messages_equal_the_python_reference(
    batch: FlowBatch, p: IpfixParams, export_time: int, sequence: int
) -> None:
    try:
        expected = ipfix.reference_messages(batch, p, export_time=export_time, sequence=sequence)
    except ValueError:
        with pytest.raises(ValueError, match="does not fit"):
            ipfix.encode_messages(batch, p, export_time=export_time, sequence=sequence)
        return
    got = ipfix.encode_messages(batch, p, export_time=export_time, sequence=sequence)
    assert got == expected


@settings(max_examples=50, deadline=None)
@given(p=params, export_time=_uint(U32), sequence=_uint(U32))
def test_c_template_message_equals_the_python_reference(
    p: IpfixParams, export_time: int, sequence: int
) -> None:
    c = ipfix.template_message(p, export_time=export_time, sequence=sequence)
    assert c == ipfix.reference_template_message(p, export_time=export_time, sequence=sequence)


# -- the reference against RFC 7011 -------------------------------------------------------------


def _parse(message: bytes) -> tuple[tuple[int, ...], list[tuple[int, bytes]]]:
    header = struct.unpack("!HHIII", message[:16])
    sets = []
    offset = 16
    while offset < len(message):
        set_id, length = struct.unpack("!HH", message[offset : offset + 4])
        sets.append((set_id, message[offset + 4 : offset + length]))
        offset += length
    assert offset == len(message)
    return header, sets


def test_template_message_lists_iana_elements_for_both_families() -> None:
    p = IpfixParams(domain_id=7, exporter_ip="198.18.0.254")
    message = ipfix.reference_template_message(p, export_time=1_700_000_000, sequence=42)
    (version, length, export_time, sequence, domain), sets = _parse(message)
    assert (version, length, export_time, sequence, domain) == (10, len(message), 1_700_000_000,
                                                                 42, 7)
    assert [s[0] for s in sets] == [2]
    body = sets[0][1]
    templates = {}
    while body:
        template_id, count = struct.unpack("!HH", body[:4])
        fields = [struct.unpack("!HH", body[4 + 4 * i : 8 + 4 * i]) for i in range(count)]
        templates[template_id] = dict(fields)
        body = body[4 + 4 * count :]
    v4, v6 = templates[256], templates[257]
    assert {8: 4, 12: 4, 4: 1, 32: 2, 130: 4, 82: 0xFFFF}.items() <= v4.items()
    assert {27: 16, 28: 16, 4: 1, 139: 2, 130: 4, 82: 0xFFFF}.items() <= v6.items()
    for template in (v4, v6):
        for element in (1, 2, 5, 6, 7, 11, 56, 61, 80, 152, 153, 195, 256, 34, 305):
            assert element in template
    assert 193 not in v6  # protocolIdentifier, not nextHeaderIPv6, in both


def test_messages_fill_the_limit_and_number_records_per_rfc7011() -> None:
    flows = [make_flow(src_port=40000 + i, interface="eth0") for i in range(50)]
    flows += [make_flow(src_ip=ipaddress.ip_address("fd00::1"),
                        dst_ip=ipaddress.ip_address("fd00::2"), eth_protocol=0x86DD,
                        interface="eth0") for _ in range(5)]
    batch = FlowBatch.from_flows(flows)
    p = IpfixParams(max_message=1000)
    messages = ipfix.reference_messages(batch, p, export_time=5, sequence=U32 - 3)
    v4_len = 84 + 1 + 4
    per_message = (1000 - 16 - 4) // v4_len
    assert [m.records for m in messages][:2] == [per_message, per_message]
    assert sum(m.records for m in messages) == 55
    expected_sequence = U32 - 3
    for message in messages:
        (version, length, _, sequence, _), _sets = _parse(message.data)
        assert version == 10
        assert length == len(message.data) <= 1000
        assert sequence == expected_sequence
        # The next record would not have fitted.
        expected_sequence = (expected_sequence + message.records) & U32
    last_sets = _parse(messages[-1].data)[1]
    assert [s[0] for s in last_sets][-1] == 257


def test_record_values_are_big_endian_in_template_order() -> None:
    flow = make_flow(
        src_ip=ipaddress.ip_address("198.18.0.1"), dst_ip=ipaddress.ip_address("198.19.0.1"),
        src_port=40000, dst_port=53, proto=17, bytes=1500, packets=10, direction=1,
        if_index=3, interface="veth0", start_ns=1_700_000_000_123_456_789,
        end_ns=1_700_000_001_987_654_321, sampling=50, dscp=46, flags=0,
    )
    (message,) = ipfix.reference_messages(
        FlowBatch.from_flows([flow]), IpfixParams(), export_time=1, sequence=0
    )
    record = _parse(message.data)[1][0][1]
    start, end, octets, packets = struct.unpack("!QQQQ", record[:32])
    assert (start, end, octets, packets) == (1_700_000_000_123, 1_700_000_001_987, 1500, 10)
    assert record[32:40] == bytes([198, 18, 0, 1, 198, 19, 0, 1])
    assert struct.unpack("!HHB", record[40:45]) == (40000, 53, 17)
    assert record[51:54] == bytes([1, 46, 46 << 2])  # flowDirection egress, DSCP, TOS
    ingress, egress, interval, packet_interval = struct.unpack("!IIII", record[68:84])
    assert (ingress, egress, interval, packet_interval) == (0, 3, 50, 50)
    assert record[84:] == b"\x05veth0"


def test_a_record_larger_than_the_message_limit_is_refused() -> None:
    batch = FlowBatch.from_flows([make_flow(interface="x" * 300)])
    with pytest.raises(ValueError, match="does not fit"):
        ipfix.encode_messages(batch, IpfixParams(max_message=300), export_time=0, sequence=0)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="observation domain"):
        IpfixParams(domain_id=2**32)
    with pytest.raises(ValueError, match="message size"):
        IpfixParams(max_message=70000)


def test_enterprise_elements_carry_the_feature_data_under_the_pen() -> None:
    flow = make_flow(interface="eth0")
    batch = FlowBatch.from_flows([flow])
    row = batch.array[0]
    row["features"] = 0x07
    row["drop_bytes"], row["drop_packets"], row["drop_cause"] = 1500, 2, 77
    row["rtt_ns"] = 123_456
    row["dns_id"], row["dns_flags"], row["dns_latency_ns"] = 0x1234, 0x8183, 5_000_000
    row["dns_name"] = b"example.org"
    p = IpfixParams(enterprise=32473)
    template = ipfix.reference_template_message(p, export_time=0, sequence=0)
    assert struct.pack("!HHI", 0x8000 | 34, 0xFFFF, 32473) in template
    assert struct.pack("!HHI", 0x8000 | 20, 8, 32473) in template
    (message,) = ipfix.reference_messages(batch, p, export_time=0, sequence=0)
    record = _parse(message.data)[1][0][1]
    ent = record[84:]
    assert ent[0] == 0x07
    assert struct.unpack("!QQ", ent[3:19]) == (1500, 2)
    assert struct.unpack("!Q", ent[26:34]) == (123_456,)
    assert struct.unpack("!HHQ", ent[34:46]) == (0x1234, 0x8183, 5_000_000)
    assert ent[47:59] == b"\x0bexample.org"
    assert ent[59:] == b"\x04eth0"
    assert ipfix.encode_messages(batch, p, export_time=0, sequence=0) == [message]
