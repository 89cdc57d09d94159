"""KafkaSettings: NetObserv names and defaults, validation messages, librdkafka mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from flowkit_plugins.kafka_exporter import KafkaSettings, flowkit_exporters

CERT_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def settings(**values: object) -> KafkaSettings:
    return KafkaSettings.model_validate({"kafka_brokers": "b1:9092", **values})


def error_message(**values: object) -> str:
    with pytest.raises(ValidationError) as info:
        KafkaSettings.model_validate(values)
    return str(info.value)


def test_defaults_are_netobserv_defaults():
    s = settings()
    assert s.kafka_topic == "network-flows"
    assert s.kafka_encoding == "protobuf"
    assert s.kafka_batch_messages == 1000
    assert s.kafka_batch_size == 1048576
    assert s.kafka_async is True
    assert s.kafka_compression == "none"
    assert s.kafka_enable_tls is False
    assert s.kafka_tls_insecure_skip_verify is False
    assert s.kafka_enable_sasl is False
    assert s.kafka_sasl_type == "plain"


def test_brokers_are_a_comma_list():
    assert settings(kafka_brokers="a:9092, b:9093,").kafka_brokers == ["a:9092", "b:9093"]


def test_brokers_are_required():
    assert "KAFKA_BROKERS is required" in error_message()
    assert "KAFKA_BROKERS is required" in error_message(kafka_brokers="")


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_every_netobserv_codec_is_accepted(codec):
    assert settings(kafka_compression=codec).producer_config()["compression.type"] == codec


def test_an_unknown_codec_is_rejected():
    message = error_message(kafka_brokers="b:1", kafka_compression="brotli")
    assert "kafka_compression" in message


def test_an_unknown_encoding_is_rejected():
    assert "kafka_encoding" in error_message(kafka_brokers="b:1", kafka_encoding="avro")


def test_an_unreadable_ca_certificate_is_named(tmp_path: Path):
    missing = tmp_path / "nope.pem"
    message = error_message(
        kafka_brokers="b:1", kafka_enable_tls="true", kafka_tls_ca_cert_path=str(missing)
    )
    assert "KAFKA_TLS_CA_CERT_PATH" in message
    assert str(missing) in message


def test_tls_paths_are_ignored_while_tls_is_off(tmp_path: Path):
    s = settings(kafka_tls_ca_cert_path=str(tmp_path / "nope.pem"))
    assert s.producer_config()["security.protocol"] == "plaintext"


def test_mutual_tls_needs_both_certificate_and_key(tmp_path: Path):
    cert = tmp_path / "user.pem"
    cert.write_text(CERT_PEM)
    message = error_message(
        kafka_brokers="b:1", kafka_enable_tls=True, kafka_tls_user_cert_path=str(cert)
    )
    assert "KAFKA_TLS_USER_KEY_PATH" in message


def test_tls_maps_to_librdkafka_ssl_settings(tmp_path: Path):
    for name in ("ca.pem", "user.pem"):
        (tmp_path / name).write_text(CERT_PEM)
    (tmp_path / "user.key").write_text(KEY_PEM)
    config = settings(
        kafka_enable_tls=True,
        kafka_tls_ca_cert_path=str(tmp_path / "ca.pem"),
        kafka_tls_user_cert_path=str(tmp_path / "user.pem"),
        kafka_tls_user_key_path=str(tmp_path / "user.key"),
        kafka_tls_insecure_skip_verify=True,
    ).producer_config()
    assert config["security.protocol"] == "ssl"
    assert config["ssl.ca.location"] == str(tmp_path / "ca.pem")
    assert config["ssl.certificate.location"] == str(tmp_path / "user.pem")
    assert config["ssl.key.location"] == str(tmp_path / "user.key")
    assert config["enable.ssl.certificate.verification"] is False


def test_sasl_needs_both_files():
    message = error_message(kafka_brokers="b:1", kafka_enable_sasl=True)
    assert "KAFKA_SASL_CLIENT_ID_PATH is required" in message


def test_sasl_rejects_an_unreadable_secret(tmp_path: Path):
    user = tmp_path / "user"
    user.write_text("flowkit\n")
    message = error_message(
        kafka_brokers="b:1",
        kafka_enable_sasl=True,
        kafka_sasl_client_id_path=str(user),
        kafka_sasl_client_secret_path=str(tmp_path / "missing"),
    )
    assert "KAFKA_SASL_CLIENT_SECRET_PATH" in message


@pytest.mark.parametrize(
    ("sasl_type", "mechanism"), [("plain", "PLAIN"), ("scramSHA512", "SCRAM-SHA-512")]
)
def test_sasl_reads_credentials_from_files(tmp_path: Path, sasl_type, mechanism):
    (tmp_path / "user").write_text("flowkit\n")
    (tmp_path / "secret").write_text("s3cret\n")
    config = settings(
        kafka_enable_sasl="true",
        kafka_sasl_type=sasl_type,
        kafka_sasl_client_id_path=str(tmp_path / "user"),
        kafka_sasl_client_secret_path=str(tmp_path / "secret"),
    ).producer_config()
    assert config["security.protocol"] == "sasl_plaintext"
    assert config["sasl.mechanism"] == mechanism
    assert config["sasl.username"] == "flowkit"
    assert config["sasl.password"] == "s3cret"


def test_sasl_type_is_validated():
    assert "kafka_sasl_type" in error_message(kafka_brokers="b:1", kafka_sasl_type="gssapi")


def test_bounds_and_timeouts_map_to_librdkafka():
    config = settings(
        kafka_batch_messages="500",
        kafka_batch_size="65536",
        kafka_queue_max_messages="2000",
        kafka_queue_max_bytes=10 * 1024 * 1024 + 1,
        kafka_message_timeout="1m30s",
        kafka_linger="20ms",
    ).producer_config()
    assert config["bootstrap.servers"] == "b1:9092"
    assert config["batch.num.messages"] == 500
    assert config["batch.size"] == 65536
    assert config["queue.buffering.max.messages"] == 2000
    assert config["queue.buffering.max.kbytes"] == 10 * 1024 + 1
    assert config["message.timeout.ms"] == 90_000
    assert config["linger.ms"] == pytest.approx(20.0)


def test_the_plugin_provides_the_kafka_exporter_spec():
    (spec,) = flowkit_exporters()
    assert spec.name == "kafka"
    assert spec.settings_model is KafkaSettings


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path: Path):
    ca = tmp_path / "ca.der"
    ca.write_bytes(b"\x30\x82\x01\x0a")
    message = error_message(kafka_brokers="b:1", kafka_enable_tls=True,
                            kafka_tls_ca_cert_path=str(ca))
    assert "KAFKA_TLS_CA_CERT_PATH" in message
    assert "is not a PEM certificate" in message


@pytest.mark.parametrize("brokers", ["::::", "broker", "broker:0", "broker:99999", ":9092",
                                     "::1:9092"])
def test_broker_addresses_must_be_host_and_port(brokers: str):
    message = error_message(kafka_brokers=brokers)
    assert "KAFKA_BROKERS" in message


def test_bracketed_ipv6_brokers_are_accepted():
    assert settings(kafka_brokers="[fd00::1]:9092,b:1").kafka_brokers == ["[fd00::1]:9092", "b:1"]
