"""The C flow encoders produce exactly the bytes of flowkit's Python encoders.

The Python encoders are the specification: ``orjson.dumps(flow_to_json_dict(flow))`` for JSON and
``flow_to_record(flow).SerializeToString()`` for protobuf. Random batches (hypothesis) cover the
address, interface name and integer edge cases.
"""

from __future__ import annotations

import ipaddress
from itertools import pairwise
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flowkit import encoding
from flowkit.model import FLOW_DTYPE, Flow, FlowBatch, ip_from_16, ip_to_16
from flowkit.native._lib import ffi, lib

pb = pytest.importorskip("flowkit.pbflow.convert")

U8, U16, U32, U64 = 2**8 - 1, 2**16 - 1, 2**32 - 1, 2**64 - 1
V4_MAPPED = b"\x00" * 10 + b"\xff\xff"

EDGE_ADDRESSES = [
    "::",
    "::1",
    "1::",
    "::ffff",
    "::ffff:0:0",  # IPv4-mapped 0.0.0.0: shown as IPv4
    "::fffe:0:0",
    "::1:ffff:0:0",
    "0:0:0:0:ffff:0:0:0",
    "::ffff:0:0:1",
    "ffff::",
    "ff02::1",
    "fe80::1",
    "fd00::",
    "fd00::1:0:0:1",
    "1:0:0:1:0:0:0:1",
    "1:0:0:0:1:0:0:1",
    "1:0:1:0:1:0:1:0",
    "0:1:0:1:0:1:0:1",
    "1:2:3:4:5:6:7:8",
    "::1.2.3.4",  # IPv4-compatible: not mapped, shown as IPv6
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "2001:db8:0:0:1::",
    "0.0.0.0",
    "255.255.255.255",
    "198.18.0.1",
    "10.0.0.10",
]

hextet = st.sampled_from([0, 0, 0, 1, 0xF, 0x10, 0xFF, 0x100, 0xFFF, 0x1000, 0xFFFF]) | st.integers(
    0, 0xFFFF
)

ip16 = st.one_of(
    st.sampled_from([ip_to_16(a) for a in EDGE_ADDRESSES]),
    st.binary(min_size=4, max_size=4).map(lambda b: V4_MAPPED + b),
    st.binary(min_size=16, max_size=16),
    st.lists(hextet, min_size=8, max_size=8).map(
        lambda hs: b"".join(h.to_bytes(2, "big") for h in hs)
    ),
)


def _uint(bits_max: int) -> st.SearchStrategy[int]:
    edges = [0, 1, 9, 10, 99, 100, 127, 128, 255, 256, 16383, 16384, bits_max - 1, bits_max]
    return st.sampled_from([e for e in edges if 0 <= e <= bits_max]) | st.integers(0, bits_max)


mac = st.sampled_from([b"\x00" * 6, b"\xff" * 6, b"\x02\x00\x00\x00\x00\x01"]) | st.binary(
    min_size=6, max_size=6
)
nanoseconds = st.sampled_from([0, 1, 999_999, 1_000_000, 999_999_999, 10**9, U64]) | st.integers(
    0, U64
)
if_index = st.integers(0, 8) | st.just(U32)

# Interface names as a host could report them: ASCII, quotes, backslashes, control characters,
# non-ASCII (no lone surrogates: neither Python encoder accepts those, tested separately).
name_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"]) | st.sampled_from('"\\\x00\x1f\x7f\n\t/'),
    max_size=24,
) | st.sampled_from(["", "eth0", "veth-fk\u00e9", 'a"b\\c', "\x00\x01\x1f", "\u2028x", "e" * 200])
netns = st.sampled_from([0, 0, 1, 0x196]) | st.just(U16)
interfaces = st.dictionaries(
    st.builds(lambda i, n: (n << 32) | i, st.integers(0, 8) | st.just(U32), netns),
    name_text, max_size=8,
)
agent_ip = st.sampled_from(
    [None, "", "198.18.0.1", "0.0.0.0", "fd00::1", "::", "::ffff:198.18.0.2", "fe80::1%eth0"]
)


dns_name = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=31)


@st.composite
def rows(draw: st.DrawFn) -> tuple[Any, ...]:
    key = (
        list(draw(ip16)),
        list(draw(ip16)),
        draw(_uint(U16)),
        draw(_uint(U16)),
        draw(if_index),
        draw(st.sampled_from([0, 0x0800, 0x86DD]) | st.integers(0, U16)),
        draw(st.sampled_from([0, 1]) | st.integers(0, U8)),
        draw(st.sampled_from([0, 1, 6, 17, 58, 132]) | st.integers(0, U8)),
        draw(_uint(U8)),
        draw(_uint(U8)),
        draw(netns),
    )
    dup_count = draw(st.sampled_from([0, 0, 1, 2, 6]) | st.integers(0, U8))
    return (
        key,
        draw(_uint(U64)),  # packets
        draw(_uint(U64)),  # bytes
        draw(nanoseconds),
        draw(nanoseconds),
        draw(_uint(U16)),  # flags
        draw(_uint(U8)),  # dscp
        draw(st.sampled_from([0, 1, 2, 4, 7]) | st.integers(0, U8)),  # features
        draw(_uint(U32)),  # sampling
        list(draw(mac)),
        list(draw(mac)),
        draw(_uint(U16)),  # drop_flags
        draw(st.integers(0, 14) | st.just(U8)),  # drop_state
        draw(_uint(U8)),  # dns_errno
        draw(_uint(U64)),  # drop_bytes
        draw(_uint(U64)),  # drop_packets
        draw(st.integers(0, 140) | _uint(U32)),  # drop_cause
        draw(_uint(U16)),  # dns_id
        draw(_uint(U16)),  # dns_flags
        draw(nanoseconds),  # rtt_ns
        draw(nanoseconds),  # dns_latency_ns
        draw(dns_name).encode("ascii"),
        draw(st.lists(if_index, min_size=6, max_size=6)),
        draw(st.lists(netns, min_size=6, max_size=6)),
        draw(st.lists(st.sampled_from([0, 1]) | _uint(U8), min_size=6, max_size=6)),
        dup_count,
        [0] * 5,
    )


@st.composite
def batches(draw: st.DrawFn, max_size: int = 12) -> FlowBatch:
    array = np.array(draw(st.lists(rows(), max_size=max_size)), dtype=FLOW_DTYPE)
    return FlowBatch(array, draw(interfaces), draw(agent_ip))


PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _batch(
    *flows: Flow, interfaces: dict[int, str] | None = None, agent: str | None = None
) -> FlowBatch:
    batch = FlowBatch.from_flows(list(flows), agent_ip=agent)
    if interfaces is not None:
        batch.interfaces = interfaces
    return batch


def _flow(**fields: Any) -> Flow:
    values: dict[str, Any] = {
        "if_index": 1,
        "interface": "",
        "direction": 0,
        "eth_protocol": 0x0800,
        "src_mac": b"\x02\x00\x00\x00\x00\x01",
        "dst_mac": b"\x02\x00\x00\x00\x00\x02",
        "src_ip": ipaddress.ip_address("198.18.0.1"),
        "dst_ip": ipaddress.ip_address("198.18.0.2"),
        "src_port": 40000,
        "dst_port": 443,
        "proto": 6,
        "icmp_type": 0,
        "icmp_code": 0,
        "packets": 3,
        "bytes": 180,
        "start_ns": 1_700_000_000_123_456_789,
        "end_ns": 1_700_000_001_987_654_321,
        "flags": 0x12,
        "dscp": 0,
        "sampling": 0,
    }
    values.update(fields)
    return Flow(**values)


# -- JSON ----------------------------------------------------------------------------------


@PROPERTY
@given(batches())
def test_json_lines_are_byte_identical_to_the_python_encoder(batch: FlowBatch) -> None:
    assert encoding.encode_json_lines(batch) == encoding.reference_json_lines(batch)


@PROPERTY
@given(batches())
def test_json_each_gives_one_python_identical_object_per_flow(batch: FlowBatch) -> None:
    assert encoding.encode_json_each(batch) == encoding.reference_json_each(batch)


@given(batches(), st.booleans())
@settings(deadline=None)
def test_json_buffer_offsets_delimit_each_flow(batch: FlowBatch, newline: bool) -> None:
    data, offsets = encoding.encode_json_buffer(batch, newline=newline)
    ends = b"\n" if newline else b""
    expected = [line + ends for line in encoding.reference_json_each(batch)]
    assert len(offsets) == len(batch) + 1
    assert offsets[0] == 0
    assert offsets[-1] == len(data)
    assert [data[a:b] for a, b in pairwise(offsets.tolist())] == expected


@settings(max_examples=2000, deadline=None)
@given(ip16)
@example(bytes(16))
@example(V4_MAPPED + bytes(4))
def test_addresses_are_shown_as_python_shows_them(raw: bytes) -> None:
    out = ffi.new("uint8_t[40]")
    length = lib.fk_format_ip16(raw, out)
    assert ffi.buffer(out, length)[:].decode() == str(ip_from_16(raw))


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40))
@example("".join(chr(c) for c in range(0x80)))
@example('"\\/\u2028\u2029\U0001f600')
def test_strings_are_escaped_as_orjson_escapes_them(text: str) -> None:
    raw = text.encode()
    out = ffi.new("uint8_t[]", 6 * len(raw) + 2)
    length = lib.fk_json_escape(raw, len(raw), out)
    assert ffi.buffer(out, length)[:] == orjson.dumps(text)


def test_agent_ip_is_the_last_key_and_only_when_known() -> None:
    flow = _flow()
    with_agent = orjson.loads(encoding.encode_json_lines(_batch(flow, agent="198.18.0.9")))
    assert list(with_agent)[-1] == "AgentIP"
    assert with_agent["AgentIP"] == "198.18.0.9"
    assert "AgentIP" not in orjson.loads(encoding.encode_json_lines(_batch(flow)))


# -- protobuf ------------------------------------------------------------------------------


@PROPERTY
@given(batches())
def test_records_are_byte_identical_to_flow_to_record(batch: FlowBatch) -> None:
    assert encoding.encode_records(batch).split() == encoding.reference_records(batch)


@PROPERTY
@given(batches(max_size=20), st.integers(-3, 22), st.integers(-3, 22) | st.none())
def test_records_message_is_byte_identical_to_a_python_records_message(
    batch: FlowBatch, start: int, stop: int | None
) -> None:
    assert encoding.encode_records_message(batch, start, stop) == (
        encoding.reference_records_message(batch, start, stop)
    )


def test_a_record_longer_than_127_bytes_gets_a_two_byte_length_in_records() -> None:
    batch = _batch(_flow(if_index=7), _flow(if_index=8), interfaces={7: "x" * 300, 8: "eth0"})
    message = encoding.encode_records_message(batch)
    assert message == encoding.reference_records_message(batch)
    decoded = pb.Records.FromString(message)
    assert [r.interface for r in decoded.entries] == ["x" * 300, "eth0"]


def test_records_messages_split_at_max_flows_and_stop() -> None:
    batch = _batch(*[_flow(src_port=p) for p in range(10)])
    messages = encoding.encode_records_messages(batch, max_flows=4, stop=9)
    assert [count for _, count in messages] == [4, 4, 1]
    ports = [[r.transport.src_port for r in pb.Records.FromString(m).entries] for m, _ in messages]
    assert ports == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


def test_records_messages_reject_a_max_below_one() -> None:
    with pytest.raises(ValueError, match="max_flows"):
        encoding.encode_records_messages(_batch(_flow()), max_flows=0)


# -- batches --------------------------------------------------------------------------------


def test_an_empty_batch_encodes_to_nothing() -> None:
    batch = FlowBatch.empty()
    assert encoding.encode_json_lines(batch) == b""
    assert encoding.encode_json_each(batch) == []
    assert encoding.encode_records(batch).split() == []
    assert list(encoding.encode_records(batch).offsets) == [0]
    assert encoding.encode_records_message(batch) == b""
    assert encoding.encode_records_messages(batch, 100) == []


def test_a_strided_view_encodes_the_flows_it_shows() -> None:
    full = _batch(*[_flow(src_port=p) for p in range(6)])
    view = FlowBatch(full.array[::2], {1: "eth0"}, "198.18.0.9")
    assert encoding.encode_json_lines(view) == encoding.reference_json_lines(view)
    assert encoding.encode_records(view).split() == encoding.reference_records(view)


def test_a_released_batch_cannot_be_encoded() -> None:
    batch = _batch(_flow())
    batch.release()
    with pytest.raises(ValueError, match="released"):
        encoding.encode_json_lines(batch)


def test_an_interface_name_that_is_not_utf8_fails_like_the_python_encoders() -> None:
    batch = _batch(_flow(if_index=3), interfaces={3: "bad\ud800"})
    with pytest.raises(orjson.JSONEncodeError):
        encoding.reference_json_lines(batch)
    with pytest.raises(orjson.JSONEncodeError):
        encoding.encode_json_lines(batch)
    with pytest.raises(UnicodeEncodeError):
        encoding.reference_records(batch)
    with pytest.raises(UnicodeEncodeError):
        encoding.encode_records(batch)


def test_an_unused_interface_name_that_is_not_utf8_is_ignored() -> None:
    batch = _batch(_flow(if_index=3), interfaces={3: "eth0", 4: "bad\ud800"})
    assert encoding.encode_json_lines(batch) == encoding.reference_json_lines(batch)
    assert encoding.encode_records(batch).split() == encoding.reference_records(batch)


def test_a_records_message_fails_only_for_a_bad_name_among_its_own_flows() -> None:
    batch = _batch(_flow(if_index=3), _flow(if_index=4), interfaces={3: "bad\ud800", 4: "eth0"})
    assert encoding.encode_records_message(batch, 1, 2) == (
        encoding.reference_records_message(batch, 1, 2)
    )
    with pytest.raises(UnicodeEncodeError):
        encoding.encode_records_message(batch, 0, 1)


def test_an_invalid_agent_address_fails_like_the_python_encoders() -> None:
    batch = _batch(_flow(), agent="not-an-address")
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        encoding.encode_json_lines(batch)
