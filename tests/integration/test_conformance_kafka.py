"""The exporter conformance kit against a real Kafka-protocol broker: the kafka exporter with a
Tansu broker on 127.0.0.1 (tests/integration/kafka_broker.py), stopped and started again for
the bounded-memory check."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowkit.testing import check_exporter

try:
    from .kafka_broker import TansuBroker
except ImportError:
    from kafka_broker import TansuBroker  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

TOPIC = "fk-conformance"


class TopicCount:
    """Messages that reached the topic, read back by one consumer from offset 0 (Tansu's
    watermarks are not exact). A restarted Tansu starts empty, so what the earlier broker held
    is carried over."""

    def __init__(self, broker: TansuBroker) -> None:
        self.broker = broker
        self.before = 0
        self.seen = 0
        self.consumer: Any = None

    def __call__(self) -> int:
        from confluent_kafka import Consumer, TopicPartition

        if self.consumer is None:
            self.consumer = Consumer({"bootstrap.servers": self.broker.bootstrap,
                                      "group.id": "fk-conformance", "log_level": 0,
                                      "enable.auto.commit": False})
            partitions = self.broker.partitions(TOPIC)
            self.consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(partitions)])
        quiet_until = time.monotonic() + 0.3
        while time.monotonic() < quiet_until:
            message = self.consumer.poll(0.1)
            if message is not None and not message.error():
                self.seen += 1
                quiet_until = time.monotonic() + 0.3
        return self.before + self.seen

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
            self.consumer = None

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        self.before = self()
        self.seen = 0
        self.close()
        self.broker.stop()
        try:
            yield
        finally:
            self.broker.start()


def test_the_kafka_exporter_passes_the_kit(kafka_broker: TansuBroker, tmp_path: Path) -> None:
    pytest.importorskip("confluent_kafka")
    from flowkit_plugins import kafka_exporter

    kafka_broker.create_topic(TOPIC)
    count = TopicCount(kafka_broker)
    spec = kafka_exporter.flowkit_exporters()[0]
    settings = spec.settings_model.model_validate({  # type: ignore[union-attr]
        "kafka_brokers": [kafka_broker.bootstrap], "kafka_topic": TOPIC,
        "kafka_queue_max_messages": 2000, "kafka_message_timeout": 30.0,
    })
    try:
        ran = check_exporter(spec, settings, delivered=count, stall=count.stalled)
    finally:
        count.close()
    assert ran == ["flush_on_shutdown", "nothing_after_shutdown", "raising_export",
                   "bounded_memory", "settings_round_trip"]
