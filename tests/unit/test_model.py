"""The flow model: record layouts, address helpers, Flow, FlowBatch and the JSON encoding."""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowkit.model import (
    EGRESS,
    ETH_P_IP,
    ETH_P_IPV6,
    FLOW_DTYPE,
    INGRESS,
    IPPROTO_ICMPV6,
    IPPROTO_UDP,
    KEY_DTYPE,
    RECORD_DTYPE,
    VALUE_DTYPE,
    Flow,
    FlowBatch,
    flow_to_json_dict,
    ip_from_16,
    ip_to_16,
    mac_to_int,
    mac_to_str,
    records_to_flows,
)
from flowkit.testing import make_flow, synthetic_flows

NETOBSERV_KEYS = {
    "Etype", "FlowDirection", "SrcMac", "DstMac", "SrcAddr", "DstAddr", "SrcPort", "DstPort",
    "Proto", "Bytes", "Packets", "Interface", "TimeFlowStart", "TimeFlowEnd", "TimeFlowStartMs",
    "TimeFlowEndMs", "Flags", "IcmpType", "IcmpCode", "Dscp", "Sampling",
}


# -- layouts shared with C ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "struct"),
    [(KEY_DTYPE, "struct fk_flow_key"), (VALUE_DTYPE, "struct fk_flow_value"),
     (RECORD_DTYPE, "struct fk_flow_record"), (FLOW_DTYPE, "struct fk_flow_out")],
)
def test_numpy_layouts_match_the_c_structs_field_by_field(
    dtype: np.dtype[Any], struct: str
) -> None:
    from flowkit.native._lib import ffi

    c_fields = dict(ffi.typeof(struct).fields)
    assert dtype.itemsize == ffi.sizeof(struct)
    assert dtype.names is not None
    assert dtype.fields is not None
    assert list(dtype.names) == list(c_fields)
    for name in dtype.names:
        np_type, np_offset = dtype.fields[name][:2]
        assert (np_offset, np_type.itemsize) == (
            c_fields[name].offset, ffi.sizeof(c_fields[name].type)
        ), f"{struct}.{name}"


# -- addresses ---------------------------------------------------------------------------------


def test_macs_print_as_colon_separated_hex_and_as_48_bit_integers() -> None:
    mac = bytes.fromhex("0a1b2c3d4e5f")
    assert mac_to_str(mac) == "0a:1b:2c:3d:4e:5f"
    assert mac_to_int(mac) == 0x0A1B2C3D4E5F


def test_ipv4_is_stored_as_ipv4_mapped_ipv6() -> None:
    raw = ip_to_16("198.18.0.1")
    assert raw == bytes(10) + b"\xff\xff" + bytes([198, 18, 0, 1])
    assert ip_from_16(raw) == ipaddress.IPv4Address("198.18.0.1")


def test_ipv6_is_stored_as_is() -> None:
    raw = ip_to_16(ipaddress.IPv6Address("fd00::1"))
    assert raw == ipaddress.IPv6Address("fd00::1").packed
    assert ip_from_16(raw) == ipaddress.IPv6Address("fd00::1")


@given(st.ip_addresses())
def test_every_address_survives_the_16_byte_encoding(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    decoded = ip_from_16(ip_to_16(address))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        assert decoded == address.ipv4_mapped
    else:
        assert decoded == address


# -- JSON --------------------------------------------------------------------------------------


def test_json_uses_netobserv_keys_and_values() -> None:
    flow = make_flow(start_ns=1_700_000_000_123_456_789, end_ns=1_700_000_001_987_654_321,
                     dscp=46, sampling=50, icmp_type=0)
    encoded = flow_to_json_dict(flow)
    assert set(encoded) == NETOBSERV_KEYS
    assert encoded == {
        "Etype": 2048, "FlowDirection": 1, "SrcMac": "02:00:00:00:00:01",
        "DstMac": "02:00:00:00:00:02", "SrcAddr": "198.18.0.1", "DstAddr": "198.19.0.1",
        "SrcPort": 40000, "DstPort": 443, "Proto": 6, "Bytes": 1500, "Packets": 10,
        "Interface": "eth0", "TimeFlowStart": 1_700_000_000, "TimeFlowEnd": 1_700_000_001,
        "TimeFlowStartMs": 1_700_000_000_123, "TimeFlowEndMs": 1_700_000_001_987,
        "Flags": 0x12, "IcmpType": 0, "IcmpCode": 0, "Dscp": 46, "Sampling": 50,
    }
    assert flow.to_dict() == encoded


def test_agent_ip_is_encoded_only_when_known() -> None:
    assert "AgentIP" not in make_flow().to_dict()
    assert make_flow(agent_ip="fd00::7").to_dict()["AgentIP"] == "fd00::7"


def test_ipv6_flows_encode_ipv6_addresses() -> None:
    flow = make_flow(eth_protocol=ETH_P_IPV6, src_ip="fd00::1", dst_ip="fd00::2",
                     proto=IPPROTO_ICMPV6, icmp_type=128, src_port=0, dst_port=0)
    encoded = flow.to_dict()
    assert (encoded["Etype"], encoded["SrcAddr"], encoded["DstAddr"], encoded["IcmpType"]) == (
        0x86DD, "fd00::1", "fd00::2", 128
    )


def test_json_dicts_serialise_with_orjson() -> None:
    line = orjson.dumps(make_flow().to_dict())
    assert orjson.loads(line)["SrcAddr"] == "198.18.0.1"


# -- FlowBatch ---------------------------------------------------------------------------------

def _not_ipv4_mapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped)


flows_strategy = st.lists(
    st.builds(
        make_flow,
        if_index=st.integers(1, 2**32 - 1),
        interface=st.sampled_from(["", "eth0", "veth1"]),
        direction=st.sampled_from([INGRESS, EGRESS]),
        src_ip=st.ip_addresses(v=4).map(str),
        dst_ip=st.ip_addresses(v=6).filter(_not_ipv4_mapped).map(str),
        src_port=st.integers(0, 65535),
        dst_port=st.integers(0, 65535),
        proto=st.integers(0, 255),
        packets=st.integers(0, 2**64 - 1),
        bytes=st.integers(0, 2**64 - 1),
        start_ns=st.integers(0, 2**63),
        end_ns=st.integers(0, 2**63),
        flags=st.integers(0, 0xFFFF),
        dscp=st.integers(0, 63),
        sampling=st.integers(0, 2**32 - 1),
        src_mac=st.binary(min_size=6, max_size=6),
        dst_mac=st.binary(min_size=6, max_size=6),
    ),
    max_size=20,
)


@given(flows_strategy)
def test_a_batch_gives_back_the_flows_it_was_built_from(flows: list[Flow]) -> None:
    # One interface name per index, as the agent provides them.
    names = {f.if_index: f.interface for f in flows}
    flows = [f if names[f.if_index] == f.interface else _renamed(f, names[f.if_index])
             for f in flows]
    batch = FlowBatch.from_flows(flows)
    assert len(batch) == len(flows)
    assert list(batch) == flows


def _renamed(flow: Flow, interface: str) -> Flow:
    fields = {name: getattr(flow, name) for name in Flow.__dataclass_fields__}
    fields["interface"] = interface
    return Flow(**fields)


def test_columns_are_views_of_the_structured_array() -> None:
    batch = FlowBatch.from_flows([make_flow(bytes=10, dst_port=53), make_flow(bytes=20)])
    assert batch.array["bytes"].tolist() == [10, 20]
    assert batch.array["key"]["dst_port"].tolist() == [53, 443]
    assert batch.array["bytes"].base is not None


def test_interfaces_and_agent_ip_of_the_batch_reach_every_flow() -> None:
    batch = FlowBatch.from_flows([make_flow(interface="")], agent_ip="198.18.0.254")
    batch.interfaces = {2: "veth-fkF"}
    (flow,) = list(batch)
    assert flow.interface == "veth-fkF"
    assert flow.agent_ip == ipaddress.IPv4Address("198.18.0.254")
    assert batch.to_dicts()[0]["AgentIP"] == "198.18.0.254"


def test_to_dicts_is_the_json_encoding_of_every_flow() -> None:
    batch = synthetic_flows(3)
    assert batch.to_dicts() == [flow_to_json_dict(f) for f in batch]


def test_release_gives_memory_back_once_and_empties_the_batch() -> None:
    calls: list[int] = []
    batch = FlowBatch(np.zeros(3, dtype=FLOW_DTYPE), release=lambda: calls.append(1))
    batch.release()
    batch.release()
    assert calls == [1]
    assert len(batch) == 0
    with pytest.raises(ValueError, match="released"):
        _ = batch.array


def test_a_batch_is_released_when_its_with_block_ends() -> None:
    calls: list[int] = []
    with FlowBatch(np.zeros(1, dtype=FLOW_DTYPE), release=lambda: calls.append(1)) as batch:
        assert len(batch) == 1
    assert calls == [1]


def test_a_copy_owns_its_memory() -> None:
    original = synthetic_flows(4)
    copy = original.copy()
    original.array["packets"][:] = 99
    original.release()
    assert copy.array["packets"].tolist() == [1, 1, 1, 1]
    assert copy.interfaces == {1_000_000: "synthetic0"}


def test_a_batch_needs_the_flow_dtype() -> None:
    with pytest.raises(TypeError, match="FLOW_DTYPE"):
        FlowBatch(np.zeros(1, dtype=RECORD_DTYPE))


def test_an_empty_batch_has_no_flows() -> None:
    batch = FlowBatch.empty()
    assert len(batch) == 0
    assert list(batch) == []
    assert repr(batch) == "FlowBatch(0 flows)"


def test_records_become_flows_with_wall_clock_times() -> None:
    records = np.zeros(2, dtype=RECORD_DTYPE)
    records["key"]["eth_protocol"] = ETH_P_IP
    records["key"]["proto"] = IPPROTO_UDP
    records["key"]["src_ip"] = np.frombuffer(ip_to_16("198.18.0.1"), dtype="u1")
    records["key"]["dst_ip"] = np.frombuffer(ip_to_16("198.18.0.2"), dtype="u1")
    value = records["value"]
    value["packets"] = [3, 4]
    value["bytes"] = [300, 400]
    value["first_ns"] = [1_000, 2_000]
    value["last_ns"] = [5_000, 6_000]
    value["flags"] = [0x2, 0x10]
    value["dscp"] = [10, 0]
    value["sampling"] = [0, 100]

    batch = records_to_flows(records, boot_offset_ns=1_700_000_000_000_000_000,
                             interfaces={0: "veth0"})
    first, second = list(batch)
    assert (first.packets, first.bytes, first.flags, first.dscp, first.sampling) == (
        3, 300, 0x2, 10, 0
    )
    assert first.start_ns == 1_700_000_000_000_001_000
    assert first.end_ns == 1_700_000_000_000_005_000
    assert (second.packets, second.bytes, second.sampling) == (4, 400, 100)
    assert first.interface == "veth0"
    assert str(first.src_ip) == "198.18.0.1"


def test_synthetic_flows_match_the_synthetic_tracer_keys() -> None:
    from flowkit.synthetic import synthetic_flow_key

    for i, flow in enumerate(synthetic_flows(6, packets=3, packet_bytes=10)):
        key = synthetic_flow_key(i)
        assert (flow.src_ip, flow.dst_ip, flow.proto, flow.src_port, flow.dst_port) == (
            key["src_ip"], key["dst_ip"], key["proto"], key["src_port"], key["dst_port"]
        )
        assert (flow.packets, flow.bytes) == (3, 30)
