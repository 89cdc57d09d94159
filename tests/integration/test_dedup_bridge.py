"""DEDUPER=firstCome on a real bridge: a flow crossing a veth into a bridge is reported once.

Topology (namespaces the test creates): client C and server S, each joined by a veth pair to
namespace H, where both H ends are ports of a bridge. A datagram from C to S is seen in H twice:
entering on C's port (ingress) and leaving on S's port (egress). The agent runs in the test's
namespace and traces H through NETWORK_NAMESPACES, so that the Kafka broker and the gRPC
collector it exports to are reachable on 127.0.0.1.

- firstCome: the flow is exported from C's port only, listing both ports and directions; the
  records decoded from Kafka (protobuf) and from the gRPC collector equal the stdout lines.
- none: the same flow comes once per port, with no interface list.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fk_cli_helpers import AgentProcess, clean_env

try:
    from .netns import Namespace, sh, unique
except ImportError:
    from netns import Namespace, sh, unique  # type: ignore[no-redef]

pytest.importorskip("confluent_kafka")

try:
    from .kafka_broker import TansuBroker
except ImportError:
    from kafka_broker import TansuBroker  # type: ignore[no-redef]

from flowkit.collector import CollectorServer
from flowkit.pbflow.convert import Record, record_to_json_dict

TRAFFIC = str(Path(__file__).with_name("traffic.py"))
PACKETS = 20
SPORT, DPORT = 41234, 5353
TOPIC = "fk-dedup-flows"


class Bridge:
    """C and S joined through a bridge in H; every name carries the test's unique prefix."""

    def __init__(self, base: str, c: Namespace, s: Namespace, h: Namespace) -> None:
        self.base, self.c, self.s, self.h = base, c, s, h
        self.client_port = f"{base}hc"
        self.server_port = f"{base}hs"
        self.server_ip = "198.18.93.2"

    @classmethod
    @contextlib.contextmanager
    def create(cls) -> Iterator[Bridge]:
        base = unique("fkd")
        with Namespace.create(f"{base}C") as c, Namespace.create(f"{base}S") as s, \
                Namespace.create(f"{base}H") as h:
            bridge = cls(base, c, s, h)
            h.ip("link", "add", f"{base}br", "type", "bridge", "forward_delay", "0",
                 "stp_state", "0")
            macs = {c.name: "02:fd:00:00:00:01", s.name: "02:fd:00:00:00:02"}
            ips = {c.name: "198.18.93.1", s.name: bridge.server_ip}
            for ns, inner, outer in ((c, f"{base}c", bridge.client_port),
                                     (s, f"{base}s", bridge.server_port)):
                sh("ip", "link", "add", inner, "netns", ns.name, "type", "veth", "peer", "name",
                   outer, "netns", h.name)
                for space, dev in ((ns, inner), (h, outer)):
                    space.sysctl(f"net.ipv6.conf.{dev}.disable_ipv6", "1")
                ns.ip("link", "set", inner, "address", macs[ns.name])
                ns.ip("addr", "add", f"{ips[ns.name]}/24", "dev", inner)
                h.ip("link", "set", outer, "master", f"{base}br")
                h.ip("link", "set", outer, "up")
                ns.ip("link", "set", inner, "up")
            for ns, peer, dev in ((c, s, f"{base}c"), (s, c, f"{base}s")):
                ns.ip("neigh", "replace", ips[peer.name], "lladdr", macs[peer.name], "dev", dev,
                      "nud", "permanent")
            h.sysctl(f"net.ipv6.conf.{base}br.disable_ipv6", "1")
            h.ip("link", "set", f"{base}br", "up")
            yield bridge

    def send(self, count: int) -> None:
        out = self.c.run(sys.executable, TRAFFIC, "udp-send", self.server_ip, str(DPORT),
                         str(SPORT), str(count), "64").stdout
        assert json.loads(out.splitlines()[-1]) == {"sent": count}

    def agent_env(self, **settings: str) -> dict[str, str]:
        return clean_env(
            TRACER="ebpf", ACCOUNTER="native", LISTEN_INTERFACES="watch",
            NETWORK_NAMESPACES=self.h.name, INTERFACES=f"/^{self.h.name}\\//",
            CACHE_ACTIVE_TIMEOUT="500ms", LOG_LEVEL="info", **settings,
        )


def ours(flows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in flows if f.get("SrcPort") == SPORT and f.get("DstPort") == DPORT]


def start_traced(bridge: Bridge, env: dict[str, str]) -> AgentProcess:
    agent = AgentProcess([], env)
    for port in (bridge.client_port, bridge.server_port):
        agent.wait_for_log(f"tracing interface {bridge.h.name}/{port}", timeout=30)
    return agent


def test_first_come_reports_a_bridged_flow_once_and_kafka_and_grpc_match_stdout(
    kafka_broker: TansuBroker,
) -> None:
    kafka_broker.create_topic(TOPIC)
    received: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_records(records: Any, _context: Any) -> None:
        with lock:
            received.extend(record_to_json_dict(r) for r in records.entries)

    with Bridge.create() as bridge, CollectorServer(on_records) as collector:
        env = bridge.agent_env(
            DEDUPER="firstCome", EXPORT="stdout,kafka,grpc",
            KAFKA_BROKERS=kafka_broker.bootstrap, KAFKA_TOPIC=TOPIC, KAFKA_ENCODING="protobuf",
            TARGET_HOST="127.0.0.1", TARGET_PORT=str(collector.port),
        )
        with start_traced(bridge, env) as agent:
            bridge.send(PACKETS)
            agent.wait_until(lambda: sum(f["Packets"] for f in ours(agent.flows)) >= PACKETS,
                             f"{PACKETS} packets of the test flow")
            assert agent.stop() == 0
        stdout = ours(agent.flows)
        client = f"{bridge.h.name}/{bridge.client_port}"
        server = f"{bridge.h.name}/{bridge.server_port}"
        assert sum(f["Packets"] for f in stdout) == PACKETS
        for flow in stdout:
            assert flow["Interface"] == client
            assert flow["FlowDirection"] == 0
            assert flow["Interfaces"] == [client, server]
            assert flow["IfDirections"] == [0, 1]
        messages = kafka_broker.consume(TOPIC, len(agent.flows))
        from_kafka = ours([record_to_json_dict(Record.FromString(m.value)) for m in messages])
        with lock:
            from_grpc = ours(list(received))
    key = lambda f: json.dumps(f, sort_keys=True)  # noqa: E731
    assert sorted(map(key, from_kafka)) == sorted(map(key, stdout))
    assert sorted(map(key, from_grpc)) == sorted(map(key, stdout))


def test_without_deduper_the_flow_comes_once_per_bridge_port() -> None:
    with Bridge.create() as bridge:
        with start_traced(bridge, bridge.agent_env(EXPORT="stdout")) as agent:
            bridge.send(PACKETS)
            agent.wait_until(
                lambda: sum(f["Packets"] for f in ours(agent.flows)) >= 2 * PACKETS,
                f"{2 * PACKETS} packets of the test flow")
            assert agent.stop() == 0
        by_port: dict[tuple[str, int], int] = {}
        for flow in ours(agent.flows):
            assert "Interfaces" not in flow
            port = (flow["Interface"], flow["FlowDirection"])
            by_port[port] = by_port.get(port, 0) + flow["Packets"]
        assert by_port == {
            (f"{bridge.h.name}/{bridge.client_port}", 0): PACKETS,
            (f"{bridge.h.name}/{bridge.server_port}", 1): PACKETS,
        }
