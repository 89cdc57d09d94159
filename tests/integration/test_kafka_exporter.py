"""The kafka exporter against a real broker (Tansu on 127.0.0.1), driven in-process.

Every test exports flows it built itself, reads the topic back from offset 0 and compares exact
counts and every field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from flowkit.components import ComponentContext
from flowkit.config import AgentConfig
from flowkit.metrics import Metrics
from flowkit.model import (
    EGRESS,
    ETH_P_IP,
    ETH_P_IPV6,
    INGRESS,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Flow,
    FlowBatch,
    flow_to_json_dict,
    ip_to_16,
)

pytest.importorskip("confluent_kafka")

from flowkit_plugins.kafka_exporter import KafkaExporter, KafkaSettings

try:
    from .kafka_broker import free_port
except ImportError:
    from kafka_broker import free_port  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

TOPIC = "fk-kafka-flows"
T0 = 1_700_000_000_123_456_789


def make_flow(i: int, **overrides: Any) -> Flow:
    """A distinct, fully populated flow; even ``i`` are IPv4 TCP, odd ones IPv6 UDP."""
    v6 = i % 2 == 1
    fields: dict[str, Any] = {
        "if_index": 7,
        "interface": "fkD-veth0",
        "direction": EGRESS if i % 3 else INGRESS,
        "eth_protocol": ETH_P_IPV6 if v6 else ETH_P_IP,
        "src_mac": bytes([0x02, 0xAA, 0, 0, i >> 8 & 0xFF, i & 0xFF]),
        "dst_mac": bytes([0x02, 0xBB, 0, 0, i >> 8 & 0xFF, i & 0xFF]),
        "src_ip": ipaddress.ip_address(f"fd00::a:{i:x}" if v6 else f"198.18.{i >> 8}.{i & 255}"),
        "dst_ip": ipaddress.ip_address(f"fd00::b:{i:x}" if v6 else f"198.19.{i >> 8}.{i & 255}"),
        "src_port": 20000 + i,
        "dst_port": 53 if v6 else 443,
        "proto": IPPROTO_UDP if v6 else IPPROTO_TCP,
        "icmp_type": 0,
        "icmp_code": 0,
        "packets": 3 + i,
        "bytes": 1500 * (3 + i),
        "start_ns": T0 + i * 1_000_000,
        "end_ns": T0 + i * 1_000_000 + 987_654_321,
        "flags": 0x12 if not v6 else 0,
        "dscp": i % 64,
        "sampling": 0,
        "agent_ip": ipaddress.ip_address("198.18.255.1"),
    }
    fields.update(overrides)
    return Flow(**fields)


def make_batch(flows: list[Flow]) -> FlowBatch:
    batch = FlowBatch.from_flows(flows, agent_ip="198.18.255.1")
    return batch


def icmp_flow(i: int) -> Flow:
    return make_flow(
        i * 2, proto=IPPROTO_ICMP, src_port=0, dst_port=0, icmp_type=8, icmp_code=0, flags=0
    )


def expected_key(flow: Flow) -> bytes:
    a, b = ip_to_16(flow.src_ip), ip_to_16(flow.dst_ip)
    return a + b if a <= b else b + a


class Harness:
    """An exporter plus the metrics it writes, shut down at the end of the test."""

    def __init__(self, **settings: Any) -> None:
        self.metrics = Metrics()
        self.settings = KafkaSettings.model_validate(settings)
        context = ComponentContext(
            config=AgentConfig(), settings=self.settings, metrics=self.metrics
        )
        self.exporter = KafkaExporter(self.settings, context)

    def value(self, name: str) -> float:
        return self.metrics.value(name)

    def dropped(self) -> dict[str, int]:
        """Flows the exporter dropped, by reason (the agent's books for it)."""
        return self.exporter.account.dropped_by_reason()

    def counters(self) -> dict[str, float]:
        """Every sample, for assertion messages."""
        return {
            f"{sample.name}{sample.labels or ''}": sample.value
            for family in self.metrics.registry.collect()
            for sample in family.samples
        }


@pytest.fixture
def harness() -> Iterator[Any]:
    made: list[Harness] = []

    def make(**settings: Any) -> Harness:
        h = Harness(**settings)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.exporter.shutdown(1.0)


def test_json_messages_carry_every_field_and_the_address_pair_key(kafka_broker, harness):
    kafka_broker.create_topic(TOPIC)
    flows = [make_flow(i) for i in range(20)] + [icmp_flow(i) for i in range(3)]
    h = harness(kafka_brokers=kafka_broker.bootstrap, kafka_topic=TOPIC, kafka_encoding="json")

    h.exporter.export(make_batch(flows))
    assert h.exporter.flush(30)

    messages = kafka_broker.consume(TOPIC, len(flows))
    assert len(messages) == len(flows)
    by_value = {m.value: m for m in messages}
    for flow in flows:
        value = orjson.dumps(flow_to_json_dict(flow))
        assert value in by_value, f"missing {flow_to_json_dict(flow)}"
        assert by_value[value].key == expected_key(flow)
        decoded = orjson.loads(value)
        assert decoded["Interface"] == "fkD-veth0"
        assert decoded["AgentIP"] == "198.18.255.1"
    assert h.value("kafka_produced_flows_total") == len(flows)
    assert h.dropped() == {}
    assert h.exporter.account.exported == len(flows)
    assert h.value("kafka_delivery_failures_total") == 0


def test_protobuf_messages_decode_to_the_exported_flows(kafka_broker, harness):
    from flowkit.pbflow.convert import Record, record_to_flow

    kafka_broker.create_topic(TOPIC)
    flows = [make_flow(i) for i in range(20)] + [icmp_flow(i) for i in range(3)]
    h = harness(kafka_brokers=kafka_broker.bootstrap, kafka_topic=TOPIC)
    assert h.settings.kafka_encoding == "protobuf"

    h.exporter.export(make_batch(flows))
    assert h.exporter.flush(30)

    messages = kafka_broker.consume(TOPIC, len(flows))
    assert len(messages) == len(flows)
    got = {}
    for m in messages:
        flow = record_to_flow(Record.FromString(m.value))
        assert m.key == expected_key(flow)
        got[(flow.src_ip, flow.dst_ip, flow.proto)] = flow
    for flow in flows:
        decoded = got[(flow.src_ip, flow.dst_ip, flow.proto)]
        # The interface index is not on the wire; everything else round-trips.
        assert decoded == dataclasses.replace(flow, if_index=0)


def test_both_directions_of_a_conversation_share_key_and_partition(kafka_broker, harness):
    kafka_broker.create_topic(TOPIC, partitions=4)
    flows = []
    for i in range(16):
        forward = make_flow(2 * i, direction=EGRESS)
        backward = make_flow(
            2 * i,
            direction=INGRESS,
            src_ip=forward.dst_ip,
            dst_ip=forward.src_ip,
            src_port=forward.dst_port,
            dst_port=forward.src_port,
        )
        flows += [forward, backward]
    h = harness(kafka_brokers=kafka_broker.bootstrap, kafka_topic=TOPIC, kafka_encoding="json")

    h.exporter.export(make_batch(flows))
    assert h.exporter.flush(30)

    messages = kafka_broker.consume(TOPIC, len(flows))
    assert len(messages) == len(flows)
    partitions: dict[bytes, set[int]] = {}
    for m in messages:
        assert m.key is not None
        partitions.setdefault(m.key, set()).add(m.partition)
    assert len(partitions) == 16
    assert all(len(p) == 1 for p in partitions.values())
    per_key = {k: sum(1 for m in messages if m.key == k) for k in partitions}
    assert set(per_key.values()) == {2}


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_every_compression_codec_delivers_every_flow(kafka_broker, harness, codec, encoding):
    kafka_broker.create_topic(TOPIC)
    flows = [make_flow(i) for i in range(200)]
    h = harness(
        kafka_brokers=kafka_broker.bootstrap,
        kafka_topic=TOPIC,
        kafka_encoding=encoding,
        kafka_compression=codec,
    )

    h.exporter.export(make_batch(flows))
    assert h.exporter.flush(30)

    messages = kafka_broker.consume(TOPIC, len(flows))
    assert len(messages) == len(flows)
    assert {m.key for m in messages} == {expected_key(f) for f in flows}


def test_synchronous_mode_returns_once_the_batch_is_delivered(kafka_broker, harness):
    kafka_broker.create_topic(TOPIC)
    flows = [make_flow(i) for i in range(50)]
    h = harness(kafka_brokers=kafka_broker.bootstrap, kafka_topic=TOPIC, kafka_async="false")

    h.exporter.export(make_batch(flows))

    assert h.exporter.queued() == 0
    assert len(kafka_broker.consume(TOPIC, len(flows))) == len(flows)


def test_flows_queued_during_an_outage_are_delivered_when_the_broker_returns(kafka_broker, harness):
    kafka_broker.create_topic(TOPIC)
    h = harness(
        kafka_brokers=kafka_broker.bootstrap,
        kafka_topic=TOPIC,
        kafka_encoding="json",
        kafka_queue_max_messages=1000,
    )
    before = [make_flow(i) for i in range(0, 100)]
    during = [make_flow(i) for i in range(100, 400)]
    after = [make_flow(i) for i in range(400, 500)]

    h.exporter.export(make_batch(before))
    assert h.exporter.flush(30)
    assert len(kafka_broker.consume(TOPIC, len(before))) == len(before)

    kafka_broker.stop()
    for start in range(0, len(during), 100):
        h.exporter.export(make_batch(during[start : start + 100]))
    assert not h.exporter.flush(1.0)
    assert h.exporter.queued() >= len(during)

    # Memory storage: the restarted broker is empty, so the topic holds during + after only.
    kafka_broker.start()
    h.exporter.export(make_batch(after))
    assert h.exporter.flush(60)

    messages = kafka_broker.consume(TOPIC, len(during) + len(after))
    expected = {orjson.dumps(flow_to_json_dict(f)) for f in during + after}
    assert len(messages) == len(expected)
    assert {m.value for m in messages} == expected
    assert h.dropped() == {}
    assert h.value("kafka_delivery_failures_total") == 0
    assert h.value("kafka_produced_flows_total") == 500
    assert (
        h.metrics.value("errors_total", component="exporter/kafka", error="_TRANSPORT")
        + h.metrics.value("errors_total", component="exporter/kafka", error="_ALL_BROKERS_DOWN")
        > 0
    )


def test_a_full_local_queue_drops_and_counts_exactly(kafka_broker, harness):
    kafka_broker.create_topic(TOPIC)
    bound = 64
    h = harness(
        kafka_brokers=kafka_broker.bootstrap,
        kafka_topic=TOPIC,
        kafka_encoding="json",
        kafka_queue_max_messages=bound,
    )
    kafka_broker.stop()
    flows = [make_flow(i) for i in range(100)]
    more = [make_flow(i) for i in range(100, 130)]

    h.exporter.export(make_batch(flows))
    h.exporter.export(make_batch(more))

    assert h.value("kafka_produced_flows_total") == bound
    assert h.dropped() == {"buffer_full": len(flows) + len(more) - bound}

    kafka_broker.start()
    assert h.exporter.flush(60), h.counters()
    messages = kafka_broker.consume(TOPIC, bound)
    assert len(messages) == bound, h.counters()
    assert {m.value for m in messages} == {
        orjson.dumps(flow_to_json_dict(f)) for f in flows[:bound]
    }


def test_broker_down_from_the_start_never_raises_and_counts_what_is_lost(tmp_path, harness):
    h = harness(kafka_brokers=f"127.0.0.1:{free_port()}", kafka_topic=TOPIC)
    flows = [make_flow(i) for i in range(40)]

    h.exporter.export(make_batch(flows))
    assert not h.exporter.flush(0.5)
    h.exporter.shutdown(0.5)

    assert h.value("kafka_produced_flows_total") == 40
    assert h.dropped() == {"shutdown": 40}
    # Once shut down, further batches are dropped and counted, never raised.
    h.exporter.export(make_batch(flows[:5]))
    assert h.dropped() == {"shutdown": 45}


def test_a_batch_larger_than_one_encoding_chunk_is_delivered_whole(kafka_broker, harness):
    kafka_broker.create_topic(TOPIC)
    total = KafkaExporter.CHUNK_FLOWS * 2 + 17
    h = harness(kafka_brokers=kafka_broker.bootstrap, kafka_topic=TOPIC)

    h.exporter.export(make_batch([make_flow(i) for i in range(total)]))
    assert h.exporter.flush(60)

    assert len(kafka_broker.consume(TOPIC, total)) == total
    assert h.value("kafka_produced_flows_total") == total


def test_shutdown_interrupts_a_synchronous_export_waiting_for_a_dead_broker(harness):
    h = harness(
        kafka_brokers=f"127.0.0.1:{free_port()}",
        kafka_topic=TOPIC,
        kafka_async="false",
        kafka_queue_max_messages=10,
    )
    flows = [make_flow(i) for i in range(25)]
    worker = threading.Thread(target=h.exporter.export, args=(make_batch(flows),))
    worker.start()
    # The export blocks once 10 flows fill the queue; shutdown must release it.
    deadline = time.monotonic() + 30
    while h.value("kafka_produced_flows_total") < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    h.exporter.shutdown(0.5)
    worker.join(30)

    assert not worker.is_alive()
    assert h.value("kafka_produced_flows_total") == 10
    # 15 never queued + 10 still queued at shutdown: every flow is accounted for as dropped.
    assert h.dropped() == {"shutdown": 25}


# -- disk spool (KAFKA_SPOOL_DIR) -------------------------------------------------------------


def _wait(condition: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("kafka_async", [True, False])
def test_spool_takes_an_outage_beyond_the_queue_bound_and_loses_nothing(
    kafka_broker, harness, tmp_path, kafka_async
):
    kafka_broker.create_topic(TOPIC)
    spool_dir = tmp_path / "spool"
    h = harness(
        kafka_brokers=kafka_broker.bootstrap,
        kafka_topic=TOPIC,
        kafka_encoding="json",
        kafka_queue_max_messages=50,
        kafka_async=kafka_async,
        kafka_spool_dir=str(spool_dir),
    )
    before = [make_flow(i) for i in range(0, 100)]
    during = [make_flow(i) for i in range(100, 400)]
    after = [make_flow(i) for i in range(400, 450)]
    h.exporter.export(make_batch(before))
    assert h.exporter.flush(30)
    assert len(kafka_broker.consume(TOPIC, len(before))) == len(before)

    kafka_broker.stop()
    for start in range(0, len(during), 100):
        h.exporter.export(make_batch(during[start : start + 100]))
    # librdkafka's queue (50) overflows into the spool, then hands its queue back to the spool
    # once it reports every broker down.
    assert _wait(lambda: h.metrics.value("spool_flows", exporter="kafka") >= 250), h.counters()
    assert list(spool_dir.glob("*.seg"))

    kafka_broker.start()  # memory storage: the topic now holds during + after only
    assert h.exporter.flush(60), h.counters()
    h.exporter.export(make_batch(after))
    assert h.exporter.flush(60), h.counters()
    messages = kafka_broker.consume(TOPIC, len(during) + len(after))
    expected = {orjson.dumps(flow_to_json_dict(f)) for f in during + after}
    assert len(messages) == len(expected), h.counters()
    assert {m.value for m in messages} == expected
    assert h.dropped() == {}
    assert h.metrics.value("spool_flows", exporter="kafka") == 0
    assert list(spool_dir.glob("*.seg")) == []


def test_spool_keeps_what_the_broker_never_took_for_the_next_exporter(
    kafka_broker, harness, tmp_path
):
    kafka_broker.create_topic(TOPIC)
    spool_dir = tmp_path / "spool"
    kafka_broker.stop()
    flows = [make_flow(i) for i in range(60)]
    first = harness(
        kafka_brokers=kafka_broker.bootstrap, kafka_topic=TOPIC, kafka_encoding="json",
        kafka_spool_dir=str(spool_dir),
    )
    first.exporter.export(make_batch(flows[:40]))
    first.exporter.shutdown(0.5)
    assert first.dropped() == {}
    assert first.exporter.spooled_flows() == 40

    kafka_broker.start()
    second = harness(
        kafka_brokers=kafka_broker.bootstrap, kafka_topic=TOPIC, kafka_encoding="json",
        kafka_spool_dir=str(spool_dir),
    )
    assert second.exporter.recovered_flows() == 40
    second.exporter.export(make_batch(flows[40:]))
    assert second.exporter.flush(60), second.counters()
    messages = kafka_broker.consume(TOPIC, len(flows))
    assert len(messages) == len(flows)
    assert {m.value for m in messages} == {orjson.dumps(flow_to_json_dict(f)) for f in flows}
    assert list(spool_dir.glob("*.seg")) == []
