"""The optional kernel features on real traffic: packet drops, DNS tracking and flow filters.

Topology: namespaces L and R joined by a veth pair (198.18.0.1 <-> 198.18.0.2, offloads off);
``flowkit-agent`` (stdout, CACHE_ACTIVE_TIMEOUT=1s) runs in R and traces R's end. Drops come from
an nftables rule inside R; DNS from a dnslib responder in R that answers after a set delay.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from .netns import AgentRun, Endpoint, Pair, agent_command
except ImportError:
    from netns import AgentRun, Endpoint, Pair, agent_command  # type: ignore[no-redef]

TRAFFIC = str(Path(__file__).with_name("traffic.py"))


def send(end: Endpoint, *args: str) -> dict[str, Any]:
    out = end.ns.run(sys.executable, TRAFFIC, *args).stdout
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture
def pair() -> Iterator[Pair]:
    with Pair.create("fkF", offload=False) as p:
        yield p


def run_agent(pair: Pair, env: dict[str, str]) -> AgentRun:
    agent = AgentRun(pair.right.ns, {"INTERFACES": pair.right.ifname, **env})
    agent.wait_traced(pair.right.ifname)
    return agent


def nft(end: Endpoint, rule: str, hook: str = "input") -> None:
    """Add table inet fkdrop with ``rule`` in its chain of ``hook``, inside the endpoint's
    namespace (deleted with the namespace)."""
    script = (f"table inet fkdrop {{\n chain {hook} {{\n  type filter hook {hook} priority 0;\n"
              f"  {rule}\n }}\n}}\n")
    subprocess.run(end.ns.cmd("nft", "-f", "-"), input=script, text=True, check=True, timeout=30)


def flows_of(flows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [f for f in flows if all(f.get(k) == v for k, v in match.items())]


def total(flows: list[dict[str, Any]], key: str, **match: Any) -> int:
    return sum(f.get(key, 0) for f in flows_of(flows, **match))


# -- ENABLE_PKT_DROPS ---------------------------------------------------------------------------


def test_udp_packets_dropped_by_nftables_are_counted_with_their_cause(pair: Pair) -> None:
    left, right = pair.left, pair.right
    nft(right, "udp dport 5003 drop")
    with run_agent(pair, {"ENABLE_PKT_DROPS": "true"}) as agent:
        send(left, "udp-send", right.ip4, "5003", "40010", "10", "100")
        # Passes nftables, but nothing listens on 5005: dropped for another reason.
        send(left, "udp-send", right.ip4, "5005", "40012", "5", "100")
        time.sleep(0.3)
        assert agent.stop() == 0
    match = {"SrcAddr": left.ip4, "DstAddr": right.ip4, "SrcPort": 40010, "DstPort": 5003}
    assert total(agent.flows, "Packets", **match) == 10  # seen by TC ingress before nftables
    assert total(agent.flows, "PktDropPackets", **match) == 10
    assert total(agent.flows, "PktDropBytes", **match) == 10 * (20 + 8 + 100)  # IP packets
    causes = {f["PktDropLatestDropCause"] for f in flows_of(agent.flows, **match)
              if "PktDropPackets" in f}
    assert causes == {"SKB_DROP_REASON_NETFILTER_DROP"}
    assert {f["PktDropLatestState"] for f in flows_of(agent.flows, **match)
            if "PktDropPackets" in f} == {"TCP_INVALID_STATE"}  # UDP: no TCP state
    other = flows_of(agent.flows, SrcPort=40012, DstPort=5005)
    assert sum(f["Packets"] for f in other) == 5
    assert sum(f.get("PktDropPackets", 0) for f in other) == 5
    assert {f["PktDropLatestDropCause"] for f in other if "PktDropPackets" in f} == {
        "SKB_DROP_REASON_NO_SOCKET"}


UDP_REFUSED = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", int(sys.argv[3])))
    refused = 0
    for _ in range(int(sys.argv[4])):
        try:
            s.sendto(b"d" * 100, (sys.argv[1], int(sys.argv[2])))
        except PermissionError:  # netfilter's drop of a local packet, reported to the sender
            refused += 1
    print(refused)
""")


def test_sent_packets_dropped_before_they_have_a_device_count_on_their_route(
        pair: Pair) -> None:
    # nftables' OUTPUT hook runs before the packet is given its device (skb->dev is unset):
    # the drop belongs to the interface of the packet's route, as an egress flow.
    left, right = pair.left, pair.right
    nft(right, "udp dport 5006 drop", hook="output")
    with run_agent(pair, {"ENABLE_PKT_DROPS": "true"}) as agent:
        refused = right.ns.run(sys.executable, "-c", UDP_REFUSED, left.ip4, "5006", "40014",
                               "8").stdout
        assert int(refused) == 8
        time.sleep(0.3)
        assert agent.stop() == 0
    dropped = flows_of(agent.flows, SrcAddr=right.ip4, DstAddr=left.ip4, SrcPort=40014,
                       DstPort=5006)
    assert sum(f.get("PktDropPackets", 0) for f in dropped) == 8
    assert sum(f.get("PktDropBytes", 0) for f in dropped) == 8 * (20 + 8 + 100)
    assert {(f["Interface"], f["FlowDirection"]) for f in dropped} == {(right.ifname, 1)}
    assert {f["PktDropLatestDropCause"] for f in dropped} == {"SKB_DROP_REASON_NETFILTER_DROP"}
    assert not [f for f in agent.flows if f.get("PktDropPackets") and not f.get("Interface")]


TCP_CLIENT = textwrap.dedent("""
    import socket, sys, time
    s = socket.create_connection((sys.argv[1], 5004), source_address=("", 40011))
    s.sendall(b"a" * 1000)
    print("connected", flush=True)
    sys.stdin.readline()
    s.sendall(b"b" * 1000)
    time.sleep(1.5)
    s.close()
""")


def test_tcp_drops_show_the_socket_state(pair: Pair) -> None:
    left, right = pair.left, pair.right
    with run_agent(pair, {"ENABLE_PKT_DROPS": "true"}) as agent:
        sink = right.ns.popen([sys.executable, TRAFFIC, "tcp-sink", "5004"],
                              stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        client = left.ns.popen([sys.executable, "-c", TCP_CLIENT, right.ip4],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert client.stdout is not None
            assert client.stdout.readline() == "connected\n"
            # From now on R drops the client's segments after the socket lookup.
            nft(right, "tcp sport 40011 drop")
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
            client.wait(30)
        finally:
            client.kill()
            sink.kill()
        assert agent.stop() == 0
    match = {"SrcAddr": left.ip4, "DstAddr": right.ip4, "SrcPort": 40011, "DstPort": 5004}
    dropped = [f for f in flows_of(agent.flows, **match) if "PktDropPackets" in f]
    assert sum(f["PktDropPackets"] for f in dropped) >= 1
    assert {f["PktDropLatestDropCause"] for f in dropped} == {"SKB_DROP_REASON_NETFILTER_DROP"}
    assert "TCP_ESTABLISHED" in {f["PktDropLatestState"] for f in dropped}


def test_without_the_setting_no_drop_keys_appear(pair: Pair) -> None:
    left, right = pair.left, pair.right
    nft(right, "udp dport 5003 drop")
    with run_agent(pair, {}) as agent:
        send(left, "udp-send", right.ip4, "5003", "40010", "4", "100")
        time.sleep(0.3)
        assert agent.stop() == 0
    flows = flows_of(agent.flows, SrcPort=40010, DstPort=5003)
    assert sum(f["Packets"] for f in flows) == 4
    assert all("PktDropPackets" not in f for f in flows)


# -- ENABLE_DNS_TRACKING ------------------------------------------------------------------------

DNS_SERVER = textwrap.dedent("""
    import socket, sys, time
    from dnslib import DNSRecord, RR, A, RCODE, QTYPE
    delay = float(sys.argv[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", 53))
        print("ready", flush=True)
        while True:
            data, peer = s.recvfrom(4096)
            query = DNSRecord.parse(data)
            reply = query.reply()
            name = str(query.q.qname)
            if name.startswith("nx"):
                reply.header.rcode = RCODE.NXDOMAIN
            else:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("198.18.0.99"), ttl=60))
            time.sleep(delay)
            s.sendto(reply.pack(), peer)
""")

DNS_CLIENT = textwrap.dedent("""
    import json, sys
    from dnslib import DNSRecord
    out = []
    for i, name in enumerate(sys.argv[2:]):
        q = DNSRecord.question(name)
        r = DNSRecord.parse(q.send(sys.argv[1], 53, timeout=5))
        out.append({"name": name, "id": q.header.id, "rcode": r.header.rcode})
    print(json.dumps(out))
""")


def test_dns_responses_carry_id_rcode_latency_and_name(pair: Pair) -> None:
    left, right = pair.left, pair.right
    delay = 0.2
    server = right.ns.popen([sys.executable, "-c", DNS_SERVER, str(delay)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == "ready\n"
        with run_agent(pair, {"ENABLE_DNS_TRACKING": "true"}) as agent:
            out = left.ns.run(sys.executable, "-c", DNS_CLIENT, right.ip4,
                              "host.example.test", "nx.example.test").stdout
            time.sleep(0.3)
            assert agent.stop() == 0
    finally:
        server.kill()
        server.wait(10)
    answers = json.loads(out)
    responses = [f for f in agent.flows if f.get("SrcPort") == 53 and "DnsId" in f]
    by_id = {f["DnsId"]: f for f in responses}
    for answer, rcode in zip(answers, ("NoError", "NXDomain"), strict=True):
        flow = by_id[answer["id"]]
        assert flow["DnsFlagsResponseCode"] == rcode
        assert flow["DnsFlags"] & 0x8000  # QR: a response
        assert flow["DnsName"] == answer["name"]
        assert flow["DnsErrno"] == 0
        assert delay * 1000 <= flow["DnsLatencyMs"] < delay * 1000 + 500
    queries = [f for f in agent.flows if f.get("DstPort") == 53 and "DnsId" in f]
    assert {f["DnsId"] for f in queries} == {a["id"] for a in answers}
    assert all(f["DnsLatencyMs"] == 0 for f in queries)


# -- FLOW_FILTER_RULES --------------------------------------------------------------------------

SOURCES = ("198.18.0.1", "198.18.0.17", "198.18.0.33")


def filtered_run(pair: Pair, rules: list[dict[str, Any]], sends: list[tuple[str, ...]],
                 extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    left = pair.left
    for address in SOURCES[1:]:
        left.ns.ip("addr", "add", f"{address}/24", "dev", left.ifname)
    with run_agent(pair, {"FLOW_FILTER_RULES": json.dumps(rules)}) as agent:
        for args in sends:
            send(left, *args)
        for line in extra:
            left.ns.run(sys.executable, "-c", line)
        time.sleep(0.3)
        assert agent.stop() == 0
    return agent.flows


def test_a_rejected_cidr_next_to_accepted_neighbours(pair: Pair) -> None:
    right = pair.right
    rules = [{"ip_cidr": "198.18.0.0/24", "action": "Accept"},
             {"ip_cidr": "198.18.0.16/28", "action": "Reject"}]
    flows = filtered_run(pair, rules, [
        ("udp-send-from", src, right.ip4, "5001", "41000", str(10 + i), "40")
        for i, src in enumerate(SOURCES)])
    assert total(flows, "Packets", SrcAddr="198.18.0.1", DstPort=5001) == 10
    assert flows_of(flows, SrcAddr="198.18.0.17") == []
    assert total(flows, "Packets", SrcAddr="198.18.0.33", DstPort=5001) == 12


def test_an_accept_rule_with_sample_sets_the_flows_sampling(pair: Pair) -> None:
    right = pair.right
    rules = [{"ip_cidr": "198.18.0.0/24", "action": "Accept", "sample": 10}]
    flows = filtered_run(pair, rules, [("udp-send", right.ip4, "5001", "41000", "300", "20")])
    mine = flows_of(flows, SrcPort=41000, DstPort=5001)
    assert mine
    assert {f["Sampling"] for f in mine} == {10}
    assert 0 < sum(f["Packets"] for f in mine) < 300


def test_port_ranges_select_flows(pair: Pair) -> None:
    right = pair.right
    rules = [{"protocol": "UDP", "destination_port_range": "5010-5019"}]
    flows = filtered_run(pair, rules, [
        ("udp-send", right.ip4, "5012", "41001", "7", "20"),
        ("udp-send", right.ip4, "5020", "41002", "5", "20"),
        ("udp-send", right.ip4, "5010", "41003", "3", "20")])
    assert total(flows, "Packets", DstPort=5012) == 7
    assert total(flows, "Packets", DstPort=5010) == 3
    assert flows_of(flows, DstPort=5020) == []


def test_peer_ip_constrains_the_other_address(pair: Pair) -> None:
    right = pair.right
    rules = [{"ip_cidr": f"{right.ip4}/32", "peer_ip": "198.18.0.1"}]
    flows = filtered_run(pair, rules, [
        ("udp-send-from", "198.18.0.1", right.ip4, "5001", "41004", "6", "20"),
        ("udp-send-from", "198.18.0.33", right.ip4, "5001", "41005", "6", "20")])
    assert total(flows, "Packets", SrcAddr="198.18.0.1", DstPort=5001) == 6
    assert flows_of(flows, SrcAddr="198.18.0.33") == []


def test_tcp_flags_keep_only_matching_packets(pair: Pair) -> None:
    right = pair.right
    sink = right.ns.popen([sys.executable, TRAFFIC, "tcp-sink", "5002"], stdout=subprocess.PIPE,
                          text=True)
    try:
        time.sleep(0.3)
        rules = [{"protocol": "TCP", "tcp_flags": "SYN"}]
        flows = filtered_run(pair, rules, [("tcp-send", right.ip4, "5002", "41006", "20000")])
    finally:
        sink.kill()
    syn = flows_of(flows, SrcPort=41006, DstPort=5002)
    assert sum(f["Packets"] for f in syn) == 1  # the SYN; every later segment lacks it
    assert all(f["Flags"] & 0x02 for f in syn)


@pytest.mark.parametrize(("rules", "expected"), [
    ('[{"ip_cidr": "198.18.0.0/24"}, {"prot": "TCP"}]', "rule 1, key 'prot'"),
    ('[{"ip_cidr": "198.18.0.300/24"}]', "rule 0, key 'ip_cidr'"),
    ('[{"port_range": "90-80"}]', "rule 0, key 'port_range'"),
    ('[{"action": "Drop"}]', "rule 0, key 'action'"),
    ('[{"ip_cidr": "198.18.0.0/24"', "not valid JSON"),
    (json.dumps([{"port": 1}] * 65), "too many rules"),
])
def test_bad_rules_exit_2_with_one_line_before_anything_is_attached(rules: str,
                                                                     expected: str) -> None:
    proc = subprocess.run(agent_command(), env={"FLOW_FILTER_RULES": rules, "PATH": "/usr/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "FLOW_FILTER_RULES" in lines[0]
    assert expected in lines[0]
    assert proc.stdout == ""
