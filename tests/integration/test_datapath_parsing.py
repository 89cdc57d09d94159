"""Header parsing of the eBPF program, on crafted frames run with BPF_PROG_TEST_RUN.

Frames that real traffic in the other tests does not produce: a VLAN tag, IPv4 options and
fragments, IPv6 extension headers, DSCP, truncated headers. Each frame is run through
``flowkit_ingress`` and the flow map is drained with the native drainer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from flowkit.accounting import KernelDrainer, read_kernel_counters
from flowkit.components import KernelMaps
from flowkit.ebpf import CollectionSpec
from flowkit.model import ip_to_16
from flowkit.native._lib import lib
from flowkit_plugins.ebpf_tracer import default_object_path

SRC_MAC = bytes.fromhex("02fb000000aa")
DST_MAC = bytes.fromhex("02fb000000bb")
V4_SRC, V4_DST = "198.18.7.1", "198.18.7.2"
V6_SRC, V6_DST = "fd00::7:1", "fd00::7:2"


def eth(etype: int, vlan: int | None = None) -> bytes:
    if vlan is None:
        return DST_MAC + SRC_MAC + struct.pack("!H", etype)
    return DST_MAC + SRC_MAC + struct.pack("!HHH", 0x8100, vlan, etype)


def ipv4(proto: int, payload: bytes, *, tos: int = 0, options: bytes = b"",
         frag_offset: int = 0) -> bytes:
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + len(payload), 1,
                         frag_offset, 64, proto, 0, ip_to_16(V4_SRC)[12:], ip_to_16(V4_DST)[12:])
    return header + options + payload


def ipv6(next_header: int, payload: bytes, *, tclass: int = 0) -> bytes:
    first = (6 << 28) | (tclass << 20)
    return struct.pack("!IHBB", first, len(payload), next_header, 64) + ip_to_16(V6_SRC) + \
        ip_to_16(V6_DST) + payload


def udp(sport: int, dport: int, data: bytes = b"x" * 10) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 1024, 0, 0)


@pytest.fixture(params=["map", "cache"])
def datapath(request: pytest.FixtureRequest) -> Iterator[tuple[object, KernelDrainer,
                                                               KernelMaps]]:
    """The program with the flow map only, and with the flow cache the ebpf tracer turns on."""
    cached = request.param == "cache"
    spec = CollectionSpec.from_file(default_object_path())
    spec.variables["flow_cache"].set(1 if cached else 0)
    for name in ("flows_a", "flows_b"):
        spec.maps[name].max_entries = 256
    with spec.load() as coll:
        maps = KernelMaps(
            selector_fd=coll.maps["flow_selector"].fd,
            flow_map_fds=(coll.maps["flows_a"].fd, coll.maps["flows_b"].fd),
            ringbuf_fd=coll.maps["flow_events"].fd,
            counters_fd=coll.maps["counters"].fd,
            max_entries=256,
            ncpus=lib.libbpf_num_possible_cpus(),
            cache_selector_fd=coll.maps["cache_selector"].fd if cached else -1,
            cache_map_fds=(
                (coll.maps["cache_a"].fd, coll.maps["cache_b"].fd) if cached else (-1, -1)
            ),
        )
        drainer = KernelDrainer(maps)
        try:
            yield coll.programs["flowkit_ingress"], drainer, maps
        finally:
            drainer.close()


def run_one(datapath: tuple[object, KernelDrainer, KernelMaps], frame: bytes) -> dict[str, int]:
    program, drainer, _ = datapath
    program.test_run(frame, repeat=1)  # type: ignore[attr-defined]
    records = drainer.drain()
    assert len(records) == 1
    key, value = records[0]["key"], records[0]["value"]
    return {
        "etype": int(key["eth_protocol"]), "proto": int(key["proto"]),
        "sport": int(key["src_port"]), "dport": int(key["dst_port"]),
        "icmp_type": int(key["icmp_type"]), "icmp_code": int(key["icmp_code"]),
        "src_ip": bytes(key["src_ip"]), "dst_ip": bytes(key["dst_ip"]),
        "src_mac": bytes(value["src_mac"]), "dst_mac": bytes(value["dst_mac"]),
        "netns": int(key["netns"]),
        "packets": int(value["packets"]), "bytes": int(value["bytes"]),
        "flags": int(value["flags"]), "dscp": int(value["dscp"]),
        "first": int(value["first_ns"]), "last": int(value["last_ns"]),
    }


def test_ipv4_udp_key_value_and_zero_padding(datapath) -> None:  # type: ignore[no-untyped-def]
    frame = eth(0x0800) + ipv4(17, udp(1111, 2222), tos=0xB8)
    flow = run_one(datapath, frame)
    assert (flow["etype"], flow["proto"], flow["sport"], flow["dport"]) == (0x0800, 17, 1111,
                                                                             2222)
    assert (flow["src_ip"], flow["dst_ip"]) == (ip_to_16(V4_SRC), ip_to_16(V4_DST))
    assert (flow["src_mac"], flow["dst_mac"]) == (SRC_MAC, DST_MAC)
    assert (flow["packets"], flow["bytes"]) == (1, len(frame))
    assert flow["dscp"] == 46
    assert flow["netns"] == 0
    assert 0 < flow["first"] <= flow["last"]


def test_one_vlan_tag_is_skipped(datapath) -> None:  # type: ignore[no-untyped-def]
    flow = run_one(datapath, eth(0x0800, vlan=42) + ipv4(17, udp(3333, 4444)))
    assert (flow["etype"], flow["sport"], flow["dport"]) == (0x0800, 3333, 4444)


def test_ipv4_options_move_the_transport_header(datapath) -> None:  # type: ignore[no-untyped-def]
    frame = eth(0x0800) + ipv4(6, tcp(5555, 80, 0x02), options=b"\x01\x01\x01\x00")
    flow = run_one(datapath, frame)
    assert (flow["proto"], flow["sport"], flow["dport"], flow["flags"]) == (6, 5555, 80, 0x02)


def test_tcp_syn_ack_sets_the_combined_flag(datapath) -> None:  # type: ignore[no-untyped-def]
    flow = run_one(datapath, eth(0x0800) + ipv4(6, tcp(80, 5555, 0x12)))
    assert flow["flags"] == 0x12 | 0x100


def test_non_first_ipv4_fragment_has_no_ports(datapath) -> None:  # type: ignore[no-untyped-def]
    flow = run_one(datapath, eth(0x0800) + ipv4(17, udp(1, 2), frag_offset=100))
    assert (flow["proto"], flow["sport"], flow["dport"]) == (17, 0, 0)


def test_ipv6_extension_headers_are_skipped(datapath) -> None:  # type: ignore[no-untyped-def]
    hop_by_hop = bytes([60, 0]) + b"\x01\x04\0\0\0\0"  # next: destination options, 8 bytes
    dest_opts = bytes([17, 1]) + b"\x01\x0c" + b"\0" * 12  # next: UDP, 16 bytes
    frame = eth(0x86DD) + ipv6(0, hop_by_hop + dest_opts + udp(6666, 7777), tclass=0xB8)
    flow = run_one(datapath, frame)
    assert (flow["etype"], flow["proto"], flow["sport"], flow["dport"]) == (0x86DD, 17, 6666,
                                                                             7777)
    assert (flow["src_ip"], flow["dst_ip"]) == (ip_to_16(V6_SRC), ip_to_16(V6_DST))
    assert flow["dscp"] == 46


def test_ipv6_fragments(datapath) -> None:  # type: ignore[no-untyped-def]
    first = bytes([17, 0]) + struct.pack("!HI", 1, 9)  # offset 0, more fragments
    flow = run_one(datapath, eth(0x86DD) + ipv6(44, first + udp(8888, 9999)))
    assert (flow["proto"], flow["sport"], flow["dport"]) == (17, 8888, 9999)
    later = bytes([17, 0]) + struct.pack("!HI", 100 << 3, 9)
    flow = run_one(datapath, eth(0x86DD) + ipv6(44, later + b"\0" * 16))
    assert (flow["proto"], flow["sport"], flow["dport"]) == (17, 0, 0)


def test_icmpv6_type_and_code(datapath) -> None:  # type: ignore[no-untyped-def]
    flow = run_one(datapath, eth(0x86DD) + ipv6(58, bytes([128, 0, 0, 0, 0, 1, 0, 1])))
    assert (flow["proto"], flow["icmp_type"], flow["icmp_code"]) == (58, 128, 0)


def test_other_ethertypes_are_flows_without_addresses(datapath) -> None:  # type: ignore[no-untyped-def]
    frame = eth(0x0806) + b"\0" * 28
    flow = run_one(datapath, frame)
    assert (flow["etype"], flow["proto"], flow["src_ip"]) == (0x0806, 0, b"\0" * 16)
    assert flow["bytes"] == len(frame)


def test_truncated_headers_still_count_the_packet(datapath) -> None:  # type: ignore[no-untyped-def]
    frame = eth(0x0800) + ipv4(6, tcp(1, 2, 0))[:22]  # 2 of the 4 port bytes
    flow = run_one(datapath, frame)
    assert (flow["etype"], flow["proto"], flow["sport"], flow["dport"]) == (0x0800, 6, 0, 0)
    assert flow["src_ip"] == ip_to_16(V4_SRC)
    assert (flow["packets"], flow["bytes"]) == (1, len(frame))
    _, _, maps = datapath
    assert read_kernel_counters(maps)["update_failed"] == 0
