"""``flowkit-agent`` with EXPORT=kafka as a subprocess, against a real broker on 127.0.0.1.

The synthetic tracer makes every count known in advance: with SYNTHETIC_RATE=0 and
SYNTHETIC_MAX_RECORDS=N, the N packets arrive in one read, so the agent exports exactly
SYNTHETIC_FLOWS flows of N / SYNTHETIC_FLOWS packets each, in one batch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import orjson
import pytest

from flowkit.model import ip_to_16

pytest.importorskip("confluent_kafka")

from flowkit.synthetic import synthetic_flow_key

try:
    from .kafka_broker import Message, TansuBroker
except ImportError:
    from kafka_broker import Message, TansuBroker  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

TOPIC = "fk-agent-flows"
AGENT_IP = "198.18.0.254"
PACKET_BYTES = 120


def agent_command() -> list[str]:
    script = Path(sys.executable).with_name("flowkit-agent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "flowkit.cli"]


class AgentProcess:
    """One ``flowkit-agent`` run; logs go to files under the test's tmp_path."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.stderr_path = tmp_path / "agent.stderr"
        self.stdout_path = tmp_path / "agent.stdout"
        full_env = {**os.environ, **env}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(agent_command(), env=full_env, stdout=out, stderr=err)

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr_path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"msg": line.decode(errors="replace"), "level": "raw"})
        return out

    def wait_for_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in entry.get("msg", "") for entry in self.log_lines()):
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited early: {self.stderr_path.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line with {text!r}: {self.stderr_path.read_text()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (an orderly stop) and wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stats(self) -> dict[str, Any]:
        """The counters of the agent's final 'flowkit agent stopped' line, with ``books``: its
        flow account (evicted, and exported / dropped by reason per exporter)."""
        for entry in self.log_lines():
            if entry.get("msg", "").startswith("flowkit agent stopped: "):
                stats: dict[str, Any] = dict(entry["counters"])
                stats["books"] = entry["flows"]
                return stats
        raise AssertionError(f"no final stats line: {self.stderr_path.read_text()}")

    def dropped(self) -> dict[str, int]:
        """The kafka exporter's dropped flows by reason, from the final line."""
        dropped: dict[str, int] = self.stats()["books"]["exporters"]["kafka"]["dropped"]
        return dropped

    def tracebacks(self) -> list[str]:
        text = self.stderr_path.read_text()
        return [line for line in text.splitlines() if "Traceback" in line or '"exc"' in line]


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[Any]:
    if not entry_points(group="flowkit", name="kafka"):
        pytest.fail(
            "the kafka exporter is not registered: pyproject.toml needs "
            'kafka = "flowkit_plugins.kafka_exporter" under [project.entry-points.flowkit]'
        )
    started: list[AgentProcess] = []

    def start(**settings: Any) -> AgentProcess:
        env = {
            "EXPORT": "kafka",
            "TRACER": "synthetic",
            "ACCOUNTER": "python",
            "LISTEN_INTERFACES": "poll",
            "CACHE_ACTIVE_TIMEOUT": "300ms",
            "AGENT_IP": AGENT_IP,
            "LOG_LEVEL": "info",
            "KAFKA_TOPIC": TOPIC,
            "SYNTHETIC_PACKET_BYTES": str(PACKET_BYTES),
        }
        env.update({k.upper(): str(v) for k, v in settings.items()})
        agent = AgentProcess(tmp_path, env)
        started.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in started:
            agent.kill()


def decode(message: Message, encoding: str) -> dict[str, Any]:
    if encoding == "json":
        parsed: dict[str, Any] = orjson.loads(message.value)
        return parsed
    from flowkit.pbflow.convert import Record, record_to_json_dict

    return record_to_json_dict(Record.FromString(message.value))


def expected_json(i: int, packets: int) -> dict[str, Any]:
    """The JSON fields of synthetic flow ``i`` that do not depend on time."""
    k = synthetic_flow_key(i)
    return {
        "Etype": k["eth_protocol"],
        "FlowDirection": k["direction"],
        "SrcMac": ":".join(f"{b:02x}" for b in k["src_mac"]),  # type: ignore[attr-defined]
        "DstMac": ":".join(f"{b:02x}" for b in k["dst_mac"]),  # type: ignore[attr-defined]
        "SrcAddr": str(k["src_ip"]),
        "DstAddr": str(k["dst_ip"]),
        "SrcPort": k["src_port"],
        "DstPort": k["dst_port"],
        "Proto": k["proto"],
        "Bytes": packets * PACKET_BYTES,
        "Packets": packets,
        "Interface": "synthetic0",
        "Flags": k["flags"],
        "IcmpType": k["icmp_type"],
        "IcmpCode": k["icmp_code"],
        "Dscp": 0,
        "Sampling": 0,
        "AgentIP": AGENT_IP,
    }


def sorted_pair(src: str, dst: str) -> bytes:
    a, b = ip_to_16(src), ip_to_16(dst)
    return a + b if a <= b else b + a


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_agent_exports_every_field_of_every_synthetic_flow(
    kafka_broker: TansuBroker, run_agent: Any, encoding: str
) -> None:
    flows, per_flow = 12, 50
    kafka_broker.create_topic(TOPIC)
    started_ms = time.time_ns() // 1_000_000
    agent = run_agent(
        kafka_brokers=kafka_broker.bootstrap,
        kafka_encoding=encoding,
        synthetic_flows=flows,
        synthetic_rate=0,
        synthetic_max_records=flows * per_flow,
    )

    messages = kafka_broker.consume(TOPIC, flows)
    assert agent.stop() == 0
    ended_ms = time.time_ns() // 1_000_000

    assert len(messages) == flows
    by_src = {}
    for message in messages:
        decoded = decode(message, encoding)
        assert message.key == sorted_pair(decoded["SrcAddr"], decoded["DstAddr"])
        by_src[decoded["SrcAddr"]] = decoded
    for i in range(flows):
        got = dict(by_src[str(synthetic_flow_key(i)["src_ip"])])
        times = {
            name: got.pop(name)
            for name in ("TimeFlowStart", "TimeFlowEnd", "TimeFlowStartMs", "TimeFlowEndMs")
        }
        assert got == expected_json(i, per_flow)
        assert started_ms <= times["TimeFlowStartMs"] <= times["TimeFlowEndMs"] <= ended_ms
        assert times["TimeFlowStart"] == times["TimeFlowStartMs"] // 1000
        assert times["TimeFlowEnd"] == times["TimeFlowEndMs"] // 1000
    stats = agent.stats()
    assert stats["kafka_produced_flows"] == flows
    assert stats["books"]["exporters"]["kafka"] == {"exported": flows, "dropped": {}}
    assert stats["kafka_delivery_failures"] == 0
    assert agent.tracebacks() == []


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_agent_exports_with_every_compression_codec(
    kafka_broker: TansuBroker, run_agent: Any, codec: str
) -> None:
    flows, per_flow = 30, 4
    kafka_broker.create_topic(TOPIC)
    agent = run_agent(
        kafka_brokers=kafka_broker.bootstrap,
        kafka_encoding="json",
        kafka_compression=codec,
        synthetic_flows=flows,
        synthetic_rate=0,
        synthetic_max_records=flows * per_flow,
    )

    messages = kafka_broker.consume(TOPIC, flows)
    assert agent.stop() == 0

    assert len(messages) == flows
    assert {orjson.loads(m.value)["SrcAddr"] for m in messages} == {
        str(synthetic_flow_key(i)["src_ip"]) for i in range(flows)
    }
    assert all(orjson.loads(m.value)["Packets"] == per_flow for m in messages)


def test_agent_drops_exactly_what_exceeds_the_queue_bound_while_the_broker_is_down(
    kafka_broker: TansuBroker, run_agent: Any
) -> None:
    flows, bound = 30, 10
    kafka_broker.create_topic(TOPIC)
    kafka_broker.stop()
    agent = run_agent(
        kafka_brokers=kafka_broker.bootstrap,
        kafka_encoding="json",
        kafka_queue_max_messages=bound,
        synthetic_flows=flows,
        synthetic_rate=0,
        synthetic_max_records=flows * 3,
    )
    agent.wait_for_log(f"dropped {flows - bound} of {flows} flows")

    kafka_broker.start()
    messages = kafka_broker.consume(TOPIC, bound)
    assert agent.stop() == 0

    assert len(messages) == bound
    stats = agent.stats()
    assert stats["kafka_produced_flows"] == bound
    assert agent.dropped() == {"buffer_full": flows - bound}
    assert stats["books"]["exporters"]["kafka"]["exported"] == bound
    assert stats["kafka_delivery_failures"] == 0
    assert agent.tracebacks() == []


def test_agent_survives_a_broker_outage_and_delivers_what_it_queued(
    kafka_broker: TansuBroker, run_agent: Any, tmp_path: Path
) -> None:
    kafka_broker.create_topic(TOPIC)
    agent = run_agent(
        kafka_brokers=kafka_broker.bootstrap,
        kafka_encoding="json",
        synthetic_flows=4,
        synthetic_rate=200,
        cache_active_timeout="250ms",
    )
    first = kafka_broker.consume(TOPIC, 8, settle=0)
    assert len(first) >= 8

    # Freeze the agent so that the old broker holds a known set of messages, read them all,
    # then take the broker away while the agent goes on producing.
    agent.process.send_signal(signal.SIGSTOP)
    try:
        before = _drain_quiescent(kafka_broker)
        kafka_broker.stop()
    finally:
        agent.process.send_signal(signal.SIGCONT)
    outage_start_ms = time.time_ns() // 1_000_000
    agent.wait_for_log("_ALL_BROKERS_DOWN")
    time.sleep(1.5)  # let evictions happen while the broker is away
    outage_end_ms = time.time_ns() // 1_000_000
    kafka_broker.start()
    kafka_broker.consume(TOPIC, 1, settle=0)  # delivery has resumed
    time.sleep(0.5)
    assert agent.stop() == 0

    stats = agent.stats()
    assert agent.dropped() == {}
    assert stats["kafka_delivery_failures"] == 0
    produced = int(stats["kafka_produced_flows"])
    after = kafka_broker.consume(TOPIC, produced - len(before))
    values = [m.value for m in before + after]
    assert len(set(values)) == produced
    during = [
        v
        for v in (orjson.loads(m.value) for m in after)
        if outage_start_ms <= v["TimeFlowEndMs"] <= outage_end_ms
    ]
    assert during, "no flow produced during the outage was delivered"
    assert agent.tracebacks() == []


def _drain_quiescent(broker: TansuBroker) -> list[Message]:
    """Everything the broker holds now (the producer is frozen, so that set is final)."""
    count = 0
    while True:
        messages = broker.consume(TOPIC, count + 1, timeout=2.0, settle=0.5)
        if len(messages) == count:
            return messages
        count = len(messages)


def test_bad_kafka_settings_exit_2_with_one_line(run_agent: Any, tmp_path: Path) -> None:
    cases = {
        "KAFKA_BROKERS": {"kafka_brokers": ""},
        "KAFKA_COMPRESSION": {"kafka_brokers": "127.0.0.1:9", "kafka_compression": "brotli"},
        "KAFKA_TLS_CA_CERT_PATH": {
            "kafka_brokers": "127.0.0.1:9",
            "kafka_enable_tls": "true",
            "kafka_tls_ca_cert_path": str(tmp_path / "missing-ca.pem"),
        },
        "KAFKA_SASL_CLIENT_SECRET_PATH": {
            "kafka_brokers": "127.0.0.1:9",
            "kafka_enable_sasl": "true",
            "kafka_sasl_client_id_path": __file__,
            "kafka_sasl_client_secret_path": str(tmp_path / "missing-secret"),
        },
    }
    for setting, values in cases.items():
        agent = run_agent(**values)
        assert agent.process.wait(timeout=60) == 2, setting
        lines = agent.stderr_path.read_text().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("flowkit-agent: ")
        assert setting in lines[0]
        assert "agent started" not in lines[0]
