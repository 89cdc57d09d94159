"""Sink outages with a disk spool: a real agent tracing a veth, a real collector or broker.

Topology: namespaces L and R joined by a veth pair; ``flowkit-agent`` (eBPF tracer, native
accounter) runs in R and traces R's end; the test sends known UDP traffic from L, one source port
per phase, so every packet the agent must deliver is known. The sink is reached over R's
loopback: ``flowkit-collector`` runs inside R; the Kafka broker (Tansu) runs on the host's
loopback and is bridged into R's by two socat processes joined by a Unix socket (the agent
connects to 127.0.0.1:<broker port> inside R).

Each test: phase A is delivered normally; the sink goes away for 60 s; phase B is sent and
spooled; the agent is SIGKILLed and started again (same spool directory); phase C is sent and
spooled by the new agent; the sink comes back; phase D is sent. Every phase must arrive exactly
once (the spool's possible duplicates, logged by the agent, are the only tolerance), nothing may
be counted dropped, and the spool directory must be empty at the end.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flowkit.spool import decode_batch, read_spool

try:
    from .kafka_broker import TansuBroker, free_port
    from .netns import AgentRun, Namespace, Pair
except ImportError:
    from kafka_broker import TansuBroker, free_port  # type: ignore[no-redef]
    from netns import AgentRun, Namespace, Pair  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

TRAFFIC = str(Path(__file__).with_name("traffic.py"))
BIN = Path(sys.executable).parent
OUTAGE_SECONDS = 60.0
DPORT = 9
PHASES = {"A": (41001, 50), "B": (41002, 70), "C": (41003, 80), "D": (41004, 90)}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def send(pair: Pair, phase: str) -> None:
    sport, count = PHASES[phase]
    pair.left.ns.run(
        sys.executable, TRAFFIC, "udp-send", pair.right.ip4, str(DPORT), str(sport), str(count),
        "32",
    )


def phase_packets(flows: list[tuple[int, int, int, int]], phase: str) -> int:
    """Packets of ``phase`` among (src port, dst port, proto, packets) tuples."""
    sport, _count = PHASES[phase]
    return sum(p for s, d, proto, p in flows if (s, d, proto) == (sport, DPORT, 17))


def start_agent(pair: Pair, env: dict[str, str]) -> AgentRun:
    agent = AgentRun(
        pair.right.ns,
        env={
            "INTERFACES": pair.right.ifname,
            "CACHE_ACTIVE_TIMEOUT": "500ms",
            "SHUTDOWN_TIMEOUT": "10s",
            **env,
        },
    )
    agent.wait_traced(pair.right.ifname)
    return agent


def dropped_counts(agent: AgentRun) -> dict[str, float]:
    """Every non-zero drop count of the agent's final log line."""
    line = agent.wait_log("flowkit agent stopped", timeout=5)
    entry = json.loads(line)
    out: dict[str, float] = {}
    message = entry.get("msg", "")
    if ": {" in message:  # "flowkit agent stopped: {'name': total, ...}"
        totals = ast.literal_eval(message.split(": ", 1)[1])
        out.update({k: v for k, v in totals.items() if "dropped" in k and v})
    for name, account in entry.get("flows", {}).get("exporters", {}).items():
        out.update({f"{name}/{r}": n for r, n in account.get("dropped", {}).items() if n})
    return out


def duplicates_allowed(agents: list[AgentRun]) -> bool:
    return any("may arrive twice" in line for agent in agents for line in agent.log)


def check_exactly_once(
    received: list[tuple[int, int, int, int]], agents: list[AgentRun]
) -> None:
    totals = {phase: phase_packets(received, phase) for phase in PHASES}
    expected = {phase: count for phase, (_sport, count) in PHASES.items()}
    if duplicates_allowed(agents):  # at-least-once: a record in flight at the SIGKILL
        assert all(totals[p] >= expected[p] for p in PHASES), totals
    else:
        assert totals == expected


# -- gRPC ---------------------------------------------------------------------------------------
class NsCollector:
    """``flowkit-collector`` inside a namespace; the flows it printed survive restarts."""

    def __init__(self, ns: Namespace, port: int) -> None:
        self.ns, self.port = ns, port
        self.flows: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.proc = self.ns.popen(
            [str(BIN / "flowkit-collector"), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert "listening on" in line, line
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.flows.append(json.loads(line))

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def received(self) -> list[tuple[int, int, int, int]]:
        with self._lock:
            return [(f["SrcPort"], f["DstPort"], f["Proto"], f["Packets"]) for f in self.flows]


def grpc_spooled(spool_dir: Path) -> list[tuple[int, int, int, int]]:
    from flowkit.pbflow.flow_pb2 import Records

    out: list[tuple[int, int, int, int]] = []
    for _flows, payload in read_spool(spool_dir):
        for r in Records.FromString(payload).entries:
            out.append((r.transport.src_port, r.transport.dst_port, r.transport.protocol,
                        r.packets))
    return out


def test_grpc_collector_outage_of_60s_with_an_agent_sigkill_loses_nothing(
    tmp_path: Path,
) -> None:
    pytest.importorskip("grpc")
    spool_dir = tmp_path / "grpc-spool"
    port = free_port()
    env = {
        "EXPORT": "grpc",
        "TARGET_HOST": "127.0.0.1",
        "TARGET_PORT": str(port),
        "GRPC_SPOOL_DIR": str(spool_dir),
        "GRPC_RETRY_INITIAL_BACKOFF": "100ms",
        "GRPC_RETRY_MAX_BACKOFF": "1s",
    }
    with Pair.create(prefix="fkS") as pair:
        collector = NsCollector(pair.right.ns, port)
        agents: list[AgentRun] = []
        try:
            collector.start()
            agents.append(start_agent(pair, env))
            send(pair, "A")
            wait_for(lambda: phase_packets(collector.received(), "A") == 50, "phase A delivered")

            collector.kill()
            outage_end = time.monotonic() + OUTAGE_SECONDS
            send(pair, "B")
            wait_for(lambda: phase_packets(grpc_spooled(spool_dir), "B") == 70, "phase B spooled")
            assert agents[0].stop(signal.SIGKILL) == -signal.SIGKILL

            agents.append(start_agent(pair, env))
            agents[1].wait_log("left by an earlier run")
            send(pair, "C")
            wait_for(lambda: phase_packets(grpc_spooled(spool_dir), "C") == 80, "phase C spooled")
            assert phase_packets(collector.received(), "B") == 0

            time.sleep(max(0.0, outage_end - time.monotonic()))
            collector.start()
            wait_for(
                lambda: phase_packets(collector.received(), "C") >= 80, "phases B, C delivered"
            )
            send(pair, "D")
            wait_for(lambda: phase_packets(collector.received(), "D") == 90, "phase D delivered")
            assert agents[1].stop() == 0
        finally:
            for agent in agents:
                agent.stop(signal.SIGKILL)
            collector.kill()
        check_exactly_once(collector.received(), agents)
        assert dropped_counts(agents[1]) == {}
        assert list(spool_dir.glob("*.seg")) == []
        assert not any("Traceback" in line for a in agents for line in a.log)


# -- Kafka --------------------------------------------------------------------------------------
@contextlib.contextmanager
def bridge_into(ns: Namespace, port: int, socket_path: Path) -> Iterator[None]:
    """Make the host's 127.0.0.1:``port`` reachable as 127.0.0.1:``port`` inside ``ns``."""
    host_side = subprocess.Popen(
        ["socat", f"UNIX-LISTEN:{socket_path},fork,unlink-early", f"TCP:127.0.0.1:{port}"],
        stderr=subprocess.DEVNULL,
    )
    ns_side = ns.popen(
        ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
         f"UNIX-CONNECT:{socket_path}"],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(socket_path.exists, "the bridge's socket", timeout=10)
        yield
    finally:
        for proc in (ns_side, host_side):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


def kafka_spooled(spool_dir: Path) -> list[tuple[int, int, int, int]]:
    from flowkit_plugins.kafka_exporter import unpack_messages

    out: list[tuple[int, int, int, int]] = []
    for _flows, payload in read_spool(spool_dir):
        if payload[:1] == b"B":
            array = decode_batch(payload[1:]).array
            key = array["key"]
            out += zip(key["src_port"].tolist(), key["dst_port"].tolist(),
                       key["proto"].tolist(), array["packets"].tolist(), strict=True)
        else:
            for _key, value in unpack_messages(payload):
                f = json.loads(value)
                out.append((f["SrcPort"], f["DstPort"], f["Proto"], f["Packets"]))
    return out


def kafka_received(broker: TansuBroker, topic: str) -> list[tuple[int, int, int, int]]:
    messages = broker.consume(topic, 1 << 30, timeout=1.5, settle=0)
    flows = [json.loads(m.value) for m in messages]
    return [(f["SrcPort"], f["DstPort"], f["Proto"], f["Packets"]) for f in flows]


def test_kafka_broker_outage_of_60s_with_an_agent_sigkill_loses_nothing(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    topic = "fk-spool-flows"
    kafka_broker.create_topic(topic)
    spool_dir = tmp_path / "kafka-spool"
    env = {
        "EXPORT": "kafka",
        "KAFKA_BROKERS": kafka_broker.bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_ENCODING": "json",
        "KAFKA_SPOOL_DIR": str(spool_dir),
        "KAFKA_MESSAGE_TIMEOUT": "5s",
    }
    with Pair.create(prefix="fkS") as pair, bridge_into(
        pair.right.ns, kafka_broker.port, tmp_path / "broker.sock"
    ):
        agents: list[AgentRun] = []
        before: list[tuple[int, int, int, int]] = []
        after: list[tuple[int, int, int, int]] = []
        try:
            agents.append(start_agent(pair, env))
            send(pair, "A")
            wait_for(
                lambda: phase_packets(kafka_received(kafka_broker, topic), "A") == 50,
                "phase A delivered",
            )
            before = kafka_received(kafka_broker, topic)

            kafka_broker.stop()  # memory storage: the broker comes back empty
            outage_end = time.monotonic() + OUTAGE_SECONDS
            send(pair, "B")
            wait_for(lambda: phase_packets(kafka_spooled(spool_dir), "B") == 70, "phase B spooled")
            assert agents[0].stop(signal.SIGKILL) == -signal.SIGKILL

            agents.append(start_agent(pair, env))
            agents[1].wait_log("left by an earlier run")
            send(pair, "C")
            wait_for(lambda: phase_packets(kafka_spooled(spool_dir), "C") == 80, "phase C spooled")

            time.sleep(max(0.0, outage_end - time.monotonic()))
            kafka_broker.start()
            wait_for(
                lambda: phase_packets(kafka_received(kafka_broker, topic), "C") >= 80,
                "phases B, C delivered",
            )
            send(pair, "D")
            wait_for(
                lambda: phase_packets(kafka_received(kafka_broker, topic), "D") == 90,
                "phase D delivered",
            )
            assert agents[1].stop() == 0
            after = kafka_received(kafka_broker, topic)
        finally:
            for agent in agents:
                agent.stop(signal.SIGKILL)
        assert phase_packets(after, "A") == 0  # delivered before the outage, never again
        check_exactly_once(before + after, agents)
        assert dropped_counts(agents[1]) == {}
        assert list(spool_dir.glob("*.seg")) == []
        assert not any("Traceback" in line for a in agents for line in a.log)
