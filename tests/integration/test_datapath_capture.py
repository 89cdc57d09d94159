"""The eBPF datapath counts exactly the traffic the test sends, in both attach modes.

Topology: namespaces L and R joined by a veth pair; ``flowkit-agent`` (stdout exporter,
CACHE_ACTIVE_TIMEOUT=1s) runs in R and traces R's end. A foreign clsact filter is added to R's
end before the agent starts and must survive it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from .netns import AgentRun, Pair, merged, sh
except ImportError:
    from netns import AgentRun, Pair, merged, sh  # type: ignore[no-redef]

TRAFFIC = str(Path(__file__).with_name("traffic.py"))
ETH_IP_UDP4 = 14 + 20 + 8
ETH_IP_UDP6 = 14 + 40 + 8
ICMP_ECHO_FRAME = 14 + 20 + 8 + 56  # ping's default 56 data bytes
TCP_SYN, TCP_FIN, TCP_ACK = 0x02, 0x01, 0x10

FOREIGN_PROGRAM = """
#define SEC(n) __attribute__((section(n), used))
struct __sk_buff { unsigned int len; };
SEC("tc") int foreign(struct __sk_buff *skb) { return -1; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(scope="module")
def foreign_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A do-nothing BPF object that `tc` loads as someone else's filter."""
    out = tmp_path_factory.mktemp("foreign")
    src = out / "foreign.bpf.c"
    src.write_text(FOREIGN_PROGRAM)
    sh("clang", "-O2", "-target", "bpf", "-c", str(src), "-o", str(out / "foreign.bpf.o"))
    return out / "foreign.bpf.o"


def flowkit_links() -> dict[int, int]:
    """BPF links (id -> program id) whose program is a flowkit program, system-wide."""
    progs = json.loads(sh("bpftool", "-j", "prog", "show").stdout)
    ours = {p["id"] for p in progs if p.get("name", "").startswith("flowkit_")}
    links = json.loads(sh("bpftool", "-j", "link", "show").stdout or "[]")
    return {link["id"]: link["prog_id"] for link in links if link.get("prog_id") in ours}


def traffic(ns_end: object, *args: str) -> dict[str, int]:
    out = ns_end.ns.run(sys.executable, TRAFFIC, *args).stdout  # type: ignore[attr-defined]
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def start_sink(end: object, *args: str) -> subprocess.Popen[str]:
    proc = end.ns.popen(  # type: ignore[attr-defined]
        [sys.executable, TRAFFIC, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"ready": True}
    return proc


def finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, _ = proc.communicate(timeout=60)
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


class Capture:
    """What one agent run saw, plus the facts needed to check it."""

    def __init__(self, pair: Pair, flows: list[dict[str, object]], tcp: dict[str, list[int]],
                 links_during: dict[int, int], filters_during: str) -> None:
        self.pair = pair
        self.flows = flows
        self.tcp = tcp
        self.links_during = links_during
        self.filters_during = filters_during


@pytest.fixture(scope="module", params=["tcx", "tc"])
def capture(request: pytest.FixtureRequest, foreign_object: Path) -> Iterator[Capture]:
    """Run the agent on R's end, send the known traffic, stop the agent (SIGTERM)."""
    mode = request.param
    with Pair.create("fkB", offload=False) as pair:
        left, right = pair.left, pair.right
        right.ns.run("tc", "qdisc", "add", "dev", right.ifname, "clsact")
        right.ns.run("tc", "filter", "add", "dev", right.ifname, "ingress", "prio", "7",
                     "handle", "3", "bpf", "da", "obj", str(foreign_object), "sec", "tc")
        links_before = flowkit_links()
        agent = AgentRun(right.ns, {"TC_ATTACH_MODE": mode, "INTERFACES": right.ifname})
        with agent:
            agent.wait_traced(right.ifname)
            udp_sink = start_sink(right, "udp-sink", "5001", "4")
            tcp_sink = start_sink(right, "tcp-sink", "5002")
            sniffer = start_sink(right, "sniff", right.ifname, "5002")
            traffic(left, "udp-send", right.ip4, "5001", "40001", "10", "100")
            traffic(left, "udp-send", right.ip6, "5001", "40002", "7", "50")
            traffic(right, "udp-send", left.ip4, "6001", "40003", "4", "300")
            left.ns.run("ping", "-q", "-c", "5", "-i", "0.05", right.ip4)
            traffic(left, "tcp-send", right.ip4, "5002", "40004", "100000")
            assert finish(tcp_sink) == {"received": 100000}
            tcp = finish(sniffer)
            finish(udp_sink)
            links_during = {k: v for k, v in flowkit_links().items() if k not in links_before}
            filters_during = right.ns.tc_filters(right.ifname)
            # SIGTERM detaches, drains the maps and flushes the exporter: nothing is left out.
            assert agent.stop() == 0
        yield Capture(pair, agent.flows, tcp, links_during, filters_during)  # type: ignore[arg-type]


def test_udp_ipv4_ingress_counts_every_datagram(capture: Capture) -> None:
    left, right = capture.pair.left, capture.pair.right
    flow = merged(capture.flows, SrcAddr=left.ip4, DstAddr=right.ip4, SrcPort=40001,
                  DstPort=5001, Proto=17)
    assert flow["Packets"] == 10
    assert flow["Bytes"] == 10 * (100 + ETH_IP_UDP4)
    assert flow["FlowDirection"] == 0
    assert flow["Etype"] == 0x0800
    assert flow["SrcMac"] == left.mac
    assert flow["DstMac"] == right.mac
    assert flow["Interface"] == right.ifname


def test_udp_ipv6_ingress_counts_every_datagram(capture: Capture) -> None:
    left, right = capture.pair.left, capture.pair.right
    flow = merged(capture.flows, SrcAddr=left.ip6, DstAddr=right.ip6, SrcPort=40002,
                  DstPort=5001, Proto=17)
    assert (flow["Packets"], flow["Bytes"]) == (7, 7 * (50 + ETH_IP_UDP6))
    assert flow["Etype"] == 0x86DD
    assert flow["FlowDirection"] == 0


def test_udp_egress_is_seen_with_the_sender_mac(capture: Capture) -> None:
    left, right = capture.pair.left, capture.pair.right
    flow = merged(capture.flows, SrcAddr=right.ip4, DstAddr=left.ip4, SrcPort=40003,
                  DstPort=6001, Proto=17)
    assert (flow["Packets"], flow["Bytes"]) == (4, 4 * (300 + ETH_IP_UDP4))
    assert flow["FlowDirection"] == 1
    assert (flow["SrcMac"], flow["DstMac"]) == (right.mac, left.mac)


def test_icmp_echo_requests_and_replies_carry_type_and_code(capture: Capture) -> None:
    left, right = capture.pair.left, capture.pair.right
    requests = merged(capture.flows, SrcAddr=left.ip4, DstAddr=right.ip4, Proto=1,
                      FlowDirection=0, IcmpType=8)
    replies = merged(capture.flows, SrcAddr=right.ip4, DstAddr=left.ip4, Proto=1,
                     FlowDirection=1, IcmpType=0)
    assert (requests["Packets"], requests["Bytes"]) == (5, 5 * ICMP_ECHO_FRAME)
    assert (requests["IcmpType"], requests["IcmpCode"]) == (8, 0)
    assert (replies["Packets"], replies["Bytes"]) == (5, 5 * ICMP_ECHO_FRAME)
    assert (replies["IcmpType"], replies["IcmpCode"]) == (0, 0)
    assert requests["SrcPort"] == requests["DstPort"] == 0


def test_tcp_transfer_matches_a_packet_socket_and_has_syn_fin_ack(capture: Capture) -> None:
    left, right = capture.pair.left, capture.pair.right
    inbound = merged(capture.flows, SrcAddr=left.ip4, DstAddr=right.ip4, SrcPort=40004,
                     DstPort=5002, Proto=6)
    outbound = merged(capture.flows, SrcAddr=right.ip4, DstAddr=left.ip4, SrcPort=5002,
                      DstPort=40004, Proto=6)
    in_packets, in_bytes, in_flags = capture.tcp["in"]
    out_packets, out_bytes, out_flags = capture.tcp["out"]
    assert (inbound["Packets"], inbound["Bytes"]) == (in_packets, in_bytes)
    assert (outbound["Packets"], outbound["Bytes"]) == (out_packets, out_bytes)
    # 100000 payload bytes cannot fit in fewer than 100000 / 1448 segments.
    assert in_bytes > 100000 + (100000 // 1448) * (14 + 20 + 20)
    for flags in (inbound["Flags"], outbound["Flags"]):
        assert flags & TCP_SYN
        assert flags & TCP_FIN
        assert flags & TCP_ACK
    assert inbound["Flags"] & 0xFF == in_flags
    assert outbound["Flags"] & 0xFF == out_flags
    assert outbound["Flags"] & 0x100  # SYN+ACK seen together


def test_foreign_filter_survives_and_no_flowkit_hook_remains(capture: Capture) -> None:
    right = capture.pair.right
    after = right.ns.tc_filters(right.ifname)
    assert "foreign" in after
    assert "flowkit_" not in after
    assert "clsact" in right.ns.qdiscs(right.ifname)
    assert not set(capture.links_during) & set(flowkit_links())


def test_programs_were_attached_in_the_requested_mode(capture: Capture,
                                                      request: pytest.FixtureRequest) -> None:
    mode = request.node.callspec.params["capture"]
    if mode == "tcx":
        assert len(capture.links_during) == 2
        assert "flowkit_" not in capture.filters_during
    else:
        assert not capture.links_during
        assert "flowkit_ingress" in capture.filters_during
        assert "flowkit_egress" in capture.filters_during
