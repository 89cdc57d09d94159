"""IPFIX export decoded by collectors nobody here wrote: nfcapd + nfdump, tshark, PyPI ``ipfix``.

Topology: namespaces L and R joined by a veth pair; ``flowkit-agent`` runs in R with the real
eBPF datapath on R's end and two exporters at once, ``stdout`` and ``ipfix+udp`` (or
``ipfix+tcp``) to 127.0.0.1 inside R. The test sends IPv4 and IPv6 UDP, TCP and ICMP traffic
(with a DSCP mark), stops the agent, and checks that every collector decoded exactly the flows
the stdout exporter printed in the same run, value by value. tcpdump on R's loopback keeps the
exported bytes for tshark and for the PyPI decoder.

nfcapd 1.7 listens on UDP only, so TCP is proven with tshark and the PyPI decoder; the TCP run
also restarts the collector mid-run and checks that the new connection starts with the
templates and that every flow still arrives.
"""

from __future__ import annotations

import ast
import collections
import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from .netns import AgentRun, Namespace, Pair, sh
except ImportError:
    from netns import AgentRun, Namespace, Pair, sh  # type: ignore[no-redef]

pytest.importorskip("ipfix")
pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
TRAFFIC = str(HERE / "traffic.py")
COLLECTOR = str(HERE / "ipfix_collector.py")
DSCP_EF = 46
PEN = 32473  # RFC 5612's documentation PEN: the UDP run sends flowkit's enterprise elements

Key = tuple[Any, ...]


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def from_stdout(f: dict[str, Any]) -> Key:
    """What every full decoder must reproduce of a stdout flow."""
    return (
        _ip(f["SrcAddr"]), _ip(f["DstAddr"]), f["SrcPort"], f["DstPort"], f["Proto"],
        f["Bytes"], f["Packets"], f["TimeFlowStartMs"], f["TimeFlowEndMs"], f["Flags"] & 0xFF,
        f["IcmpType"], f["IcmpCode"], f["Dscp"], f["FlowDirection"], f["SrcMac"], f["DstMac"],
        f["Etype"], f["Interface"], f["Sampling"], f.get("AgentIP"),
    )


def nfdump_part(key: Key) -> Key:
    """The part nfdump 1.7 shows (no interface name, sampling, ethertype or exporter element)."""
    return key[:14] + key[14:16]


def from_pypi(r: dict[str, Any]) -> Key:
    v4 = "sourceIPv4Address" in r
    family = "IPv4" if v4 else "IPv6"
    icmp_type, icmp_code = r[f"icmpType{family}"], r[f"icmpCode{family}"]
    assert r[f"icmpTypeCode{family}"] == icmp_type << 8 | icmp_code
    assert r["ipClassOfService"] == r["ipDiffServCodePoint"] << 2
    assert r["samplingInterval"] == r["samplingPacketInterval"]
    exporter = r.get("exporterIPv4Address") or r.get("exporterIPv6Address")
    return (
        _ip(r[f"source{family}Address"]), _ip(r[f"destination{family}Address"]),
        r["sourceTransportPort"], r["destinationTransportPort"], r["protocolIdentifier"],
        r["octetDeltaCount"], r["packetDeltaCount"], r["flowStartMilliseconds"],
        r["flowEndMilliseconds"], r["tcpControlBits"], icmp_type, icmp_code,
        r["ipDiffServCodePoint"], r["flowDirection"], r["sourceMacAddress"],
        r["destinationMacAddress"], r["ethernetType"], r["interfaceName"],
        r["samplingPacketInterval"], exporter,
    )


def _tshark_ms(text: str) -> int:
    # "Nov 30, 2026 07:24:56.073000000 UTC"
    seconds, fraction = text.removesuffix(" UTC").split(".")
    moment = datetime.datetime.strptime(seconds, "%b %d, %Y %H:%M:%S").replace(
        tzinfo=datetime.UTC
    )
    return int(moment.timestamp()) * 1000 + int(fraction[:3])


def from_tshark(r: dict[str, Any]) -> Key:
    v4 = "cflow.srcaddr" in r
    times = r["cflow.timedelta_tree"]
    icmp = "cflow.icmp_ipv4_" if v4 else "cflow.icmp_ipv6_"
    return (
        _ip(r["cflow.srcaddr" if v4 else "cflow.srcaddrv6"]),
        _ip(r["cflow.dstaddr" if v4 else "cflow.dstaddrv6"]),
        int(r["cflow.srcport"]), int(r["cflow.dstport"]), int(r["cflow.protocol"]),
        int(r["cflow.octets"]), int(r["cflow.packets"]), _tshark_ms(times["cflow.abstimestart"]),
        _tshark_ms(times["cflow.abstimeend"]), int(r["cflow.tcpflags"], 16),
        int(r[icmp + "type"]), int(r[icmp + "code"]), int(r["cflow.ip_dscp"]),
        int(r["cflow.direction"]), r["cflow.srcmac"], r["cflow.dstmac"],
        int(r["cflow.ethernet_type"]), r.get("cflow.if_name", ""),
        int(r["cflow.sampling_packet_interval"]),
        r.get("cflow.exporter_addr") or r.get("cflow.exporter_addr_v6"),
    )


def tshark_records(pcap: Path, decode_as: str) -> list[dict[str, Any]]:
    out = sh("tshark", "-r", str(pcap), "-d", decode_as, "-T", "json", timeout=120).stdout
    records: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.startswith("Flow ") and isinstance(value, dict) and "cflow.octets" in value:
                    records.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(out))
    return records


def tshark_template_frames(pcap: Path, decode_as: str) -> list[int]:
    """Frame numbers that carry a template set."""
    out = sh("tshark", "-r", str(pcap), "-d", decode_as, "-Y", "cflow.template_id == 256",
             "-T", "fields", "-e", "frame.number", timeout=120).stdout
    return [int(n) for n in out.split()]


def _nfdump_flags(text: str) -> int:
    return sum(1 << (7 - i) for i, c in enumerate(text) if c != ".")


def _nfdump_ms(text: str) -> int:
    moment = datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)
    return int(moment.timestamp() * 1000 + 0.5)


def from_nfdump(r: dict[str, Any]) -> Key:
    src = r.get("src4_addr") or r["src6_addr"]
    dst = r.get("dst4_addr") or r["dst6_addr"]
    return (
        _ip(src), _ip(dst), r.get("src_port", 0), r.get("dst_port", 0), r["proto"],
        r["in_bytes"], r["in_packets"], _nfdump_ms(r["first"]), _nfdump_ms(r["last"]),
        _nfdump_flags(r.get("tcp_flags", "........")), r.get("icmp_type", 0),
        r.get("icmp_code", 0), r["src_tos"] >> 2, r["direction"], r["in_src_mac"],
        r["in_dst_mac"],
    )


class Lines:
    """A child process whose stdout JSON lines are collected by a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.items: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.items.append(json.loads(line))
                self._cond.notify_all()

    def wait(self, predicate: Any, what: str, timeout: float = 30) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.items), timeout):
                raise AssertionError(f"timed out waiting for {what}: {self.items[-5:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._thread.join(5)


def start_collector(ns: Namespace, port: int) -> Lines:
    proc = ns.popen([sys.executable, COLLECTOR, "tcp", str(port)], stdout=subprocess.PIPE,
                    text=True)
    lines = Lines(proc)
    lines.wait(lambda items: items and items[0] == {"ready": True}, "the collector")
    return lines


def free_udp_and_tcp_port(ns: Namespace) -> int:
    out = ns.run(sys.executable, "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0));"
                 "print(s.getsockname()[1])").stdout
    return int(out.strip())


class Tcpdump:
    def __init__(self, ns: Namespace, pcap: Path, bpf_filter: str) -> None:
        self.proc = ns.popen(["tcpdump", "-i", "lo", "-U", "-s", "0", "-w", str(pcap),
                              *bpf_filter.split()], stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # "listening on lo, ..." once the capture runs
            if "listening on" in line:
                break

    def stop(self) -> None:
        time.sleep(0.3)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)


def send_traffic(pair: Pair) -> None:
    left, right = pair.left, pair.right

    def traffic(end: Any, *args: str) -> None:
        end.ns.run(sys.executable, TRAFFIC, *args)

    sink = right.ns.popen([sys.executable, TRAFFIC, "udp-sink", "5001", "3"],
                          stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    sink.stdout.readline()
    traffic(left, "udp-send", right.ip4, "5001", "40001", "40", "100")
    traffic(left, "udp-send", right.ip6, "5001", "40002", "30", "50")
    traffic(right, "udp-send", left.ip4, "6001", "40003", "20", "300")
    left.ns.run("ping", "-q", "-c", "20", "-i", "0.01", "-Q", str(DSCP_EF << 2), right.ip4)
    left.ns.run("ping", "-6", "-q", "-c", "20", "-i", "0.01", right.ip6)
    tcp_sink = right.ns.popen([sys.executable, TRAFFIC, "tcp-sink", "5002"],
                              stdout=subprocess.PIPE, text=True)
    assert tcp_sink.stdout is not None
    tcp_sink.stdout.readline()
    traffic(left, "tcp-send", right.ip4, "5002", "40004", "50000")
    tcp_sink.communicate(timeout=30)
    sink.communicate(timeout=30)


def check_traffic_was_seen(keys: list[Key]) -> None:
    """The run is not vacuous: each kind of traffic produced a flow."""
    protos = {(k[4], ":" in k[0]) for k in keys}
    assert {(17, False), (17, True), (1, False), (58, True), (6, False)} <= protos
    assert any(k[4] == 1 and k[12] == DSCP_EF and k[10] == 8 for k in keys), "ICMP echo with EF"


def agent_env(**settings: str) -> dict[str, str]:
    env = {"CACHE_ACTIVE_TIMEOUT": "500ms", "TARGET_HOST": "127.0.0.1",
           "IPFIX_RETRY_INITIAL_BACKOFF": "50ms", "IPFIX_RETRY_MAX_BACKOFF": "300ms"}
    env.update(settings)
    return env


def final_metrics(agent: AgentRun) -> dict[str, float]:
    line = agent.wait_log("flowkit agent stopped")
    text = json.loads(line)["msg"].split(": ", 1)[1]
    return dict(ast.literal_eval(text))  # the agent logs a dict literal of numbers


# -- UDP: nfdump, tshark, PyPI ----------------------------------------------------------------


@pytest.fixture(scope="module")
def udp_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("fkI-udp")
    with Pair.create("fkI", offload=False) as pair:
        right = pair.right
        port = free_udp_and_tcp_port(right.ns)
        nf_dir = work / "nfcapd"
        nf_dir.mkdir()
        nfcapd = right.ns.popen(["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w",
                                 str(nf_dir), "-t", "3600"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        dump = Tcpdump(right.ns, work / "udp.pcap", f"udp port {port}")
        try:
            env = agent_env(EXPORT="stdout,ipfix+udp", TARGET_PORT=str(port),
                            INTERFACES=right.ifname, SAMPLING="2", AGENT_IP="198.18.0.254",
                            IPFIX_OBSERVATION_DOMAIN_ID="77", IPFIX_MTU="576",
                            IPFIX_ENTERPRISE_NUMBER=str(PEN))
            with AgentRun(right.ns, env) as agent:
                agent.wait_traced(right.ifname)
                send_traffic(pair)
                time.sleep(1.2)
                assert agent.stop() == 0
            metrics = final_metrics(agent)
        finally:
            dump.stop()
            nfcapd.send_signal(signal.SIGTERM)
            nfcapd.wait(20)
        nfdump = sh("nfdump", "-R", str(nf_dir), "-o", "json", timeout=60)
        yield {
            "stdout": agent.flows,
            "metrics": metrics,
            "pcap": work / "udp.pcap",
            "port": port,
            "nfdump": json.loads(nfdump.stdout or "[]") if "No matching" not in nfdump.stdout
            else [],
        }


def test_udp_nfdump_reads_every_flow_stdout_printed(udp_run: dict[str, Any]) -> None:
    expected = [from_stdout(f) for f in udp_run["stdout"]]
    check_traffic_was_seen(expected)
    got = [from_nfdump(r) for r in udp_run["nfdump"] if r.get("type") == "FLOW"]
    assert collections.Counter(got) == collections.Counter(nfdump_part(k) for k in expected)


def test_udp_tshark_decodes_every_flow_stdout_printed(udp_run: dict[str, Any]) -> None:
    records = tshark_records(udp_run["pcap"], f"udp.port=={udp_run['port']},cflow")
    got = [from_tshark(r) for r in records]
    assert collections.Counter(got) == collections.Counter(from_stdout(f)
                                                           for f in udp_run["stdout"])


def test_udp_pypi_decoder_reads_every_flow_and_rfc_sequence_numbers(
    udp_run: dict[str, Any],
) -> None:
    payloads = sh("tshark", "-r", str(udp_run["pcap"]), "-T", "fields", "-e", "udp.payload",
                  timeout=60).stdout.split()
    decoder = subprocess.run([sys.executable, COLLECTOR, "decode-udp"], input="\n".join(payloads),
                             capture_output=True, text=True, timeout=60, check=True,
                             env={**os.environ, "FK_IPFIX_PEN": str(PEN)})
    records = [json.loads(line) for line in decoder.stdout.splitlines()[1:]]
    got = [from_pypi(r) for r in records]
    assert collections.Counter(got) == collections.Counter(from_stdout(f)
                                                           for f in udp_run["stdout"])
    # A collector that knows flowkit's enterprise elements decodes them: NetObserv's full TCP
    # flags (0x100 SYN+ACK, ...), no feature data in this run.
    with_flags = [(from_pypi(r), r["flowkitTcpFlags"], r["flowkitFeatures"], r["dnsName"])
                  for r in records]
    assert collections.Counter(with_flags) == collections.Counter(
        (from_stdout(f), f["Flags"], 0, "") for f in udp_run["stdout"])
    assert any(f["Proto"] == 6 and f["Flags"] for f in udp_run["stdout"])
    # RFC 7011: a message's sequence number counts the data records sent before it (template
    # messages carry the current count).
    counts = collections.Counter(r["seq"] for r in records)
    running, expected_sequences = 0, {0}
    for seq in sorted(counts):
        assert seq == running
        running += counts[seq]
        expected_sequences.add(running)
    for payload in payloads:
        header = bytes.fromhex(payload[:32])
        assert int.from_bytes(header[:2]) == 10
        assert int.from_bytes(header[2:4]) == len(payload) // 2 <= 576 - 28
        assert int.from_bytes(header[8:12]) in expected_sequences
        assert int.from_bytes(header[12:16]) == 77
    assert running == len(records) == udp_run["metrics"]["ipfix_sent_flows"]


def test_udp_accounting_every_evicted_flow_was_sent(udp_run: dict[str, Any]) -> None:
    m = udp_run["metrics"]
    assert m["ipfix_sent_flows"] == m["evicted_flows"] == len(udp_run["stdout"])


# -- TCP: tshark, PyPI, collector restart -----------------------------------------------------


@pytest.fixture(scope="module")
def tcp_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("fkI-tcp")
    with Pair.create("fkJ", offload=False) as pair:
        right = pair.right
        port = free_udp_and_tcp_port(right.ns)
        dump = Tcpdump(right.ns, work / "tcp.pcap", f"tcp port {port}")
        first = start_collector(right.ns, port)
        second: Lines | None = None
        try:
            env = agent_env(EXPORT="stdout,ipfix+tcp", TARGET_PORT=str(port),
                            INTERFACES=right.ifname, AGENT_IP="fd00::fe")
            with AgentRun(right.ns, env) as agent:
                agent.wait_traced(right.ifname)
                send_traffic(pair)
                time.sleep(1.2)
                # Everything exported so far reached the first collector: restart it.
                first.wait(lambda items: len([i for i in items if "conn" in i])
                           >= len(agent.flows), "the first collector to catch up")
                before_restart = len(agent.flows)
                first.kill()
                second = start_collector(right.ns, port)
                send_traffic(pair)
                time.sleep(1.2)
                assert agent.stop() == 0
            metrics = final_metrics(agent)
            second.wait(lambda items: len([i for i in items if "conn" in i])
                        >= len(agent.flows) - before_restart, "the second collector")
        finally:
            dump.stop()
            first.kill()
            if second is not None:
                second.kill()
        yield {
            "stdout": agent.flows,
            "before_restart": before_restart,
            "first": [i for i in first.items if "conn" in i],
            "second": [i for i in second.items if "conn" in i],
            "metrics": metrics,
            "pcap": work / "tcp.pcap",
            "port": port,
        }


def test_tcp_pypi_decoder_gets_every_flow_across_a_collector_restart(
    tcp_run: dict[str, Any],
) -> None:
    expected = [from_stdout(f) for f in tcp_run["stdout"]]
    check_traffic_was_seen(expected)
    assert tcp_run["second"], "nothing reached the restarted collector"
    got = [from_pypi(r) for r in tcp_run["first"] + tcp_run["second"]]
    assert collections.Counter(got) == collections.Counter(expected)
    # The restarted collector could decode because the new connection began with the templates,
    # and it is a new transport session: sequence numbers start again at 0.
    assert tcp_run["second"][0]["seq"] == 0
    assert len(tcp_run["first"]) == tcp_run["before_restart"]


def test_tcp_tshark_decodes_every_flow_and_sees_templates_on_each_connection(
    tcp_run: dict[str, Any],
) -> None:
    decode_as = f"tcp.port=={tcp_run['port']},cflow"
    got = [from_tshark(r) for r in tshark_records(tcp_run["pcap"], decode_as)]
    assert collections.Counter(got) == collections.Counter(from_stdout(f)
                                                           for f in tcp_run["stdout"])
    assert len(tshark_template_frames(tcp_run["pcap"], decode_as)) == 2


def test_tcp_accounting_every_evicted_flow_was_sent(tcp_run: dict[str, Any]) -> None:
    m = tcp_run["metrics"]
    assert m["ipfix_sent_flows"] == m["evicted_flows"] == len(tcp_run["stdout"])
    assert os.path.getsize(tcp_run["pcap"]) > 0
