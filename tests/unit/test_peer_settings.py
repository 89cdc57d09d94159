"""The settings pieces the network exporters share (flowkit.peer_settings): one definition, the
same names, defaults and messages under every exporter's prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from flowkit_plugins.grpc_exporter import GrpcSettings
from flowkit_plugins.ipfix_exporter import IpfixSettings
from flowkit_plugins.kafka_exporter import KafkaSettings
from flowkit_plugins.otlp_exporter import OtlpSettings

REQUIRED: dict[type[BaseModel], dict[str, Any]] = {
    GrpcSettings: {"target_host": "h", "target_port": 1},
    IpfixSettings: {"target_host": "h", "target_port": 1},
    KafkaSettings: {"kafka_brokers": ["b:1"], "kafka_enable_tls": True},
    OtlpSettings: {"otlp_endpoint": "h:4317"},
}
TLS = {GrpcSettings: "TARGET", KafkaSettings: "KAFKA", OtlpSettings: "OTLP"}
RETRY = {GrpcSettings: "GRPC", IpfixSettings: "IPFIX", OtlpSettings: "OTLP"}
SPOOL = {GrpcSettings: "GRPC", IpfixSettings: "IPFIX", KafkaSettings: "KAFKA", OtlpSettings: "OTLP"}


def message(model: type[BaseModel], **values: Any) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate({**REQUIRED[model], **values})
    return str(info.value.errors()[0]["msg"]).removeprefix("Value error, ")


@pytest.mark.parametrize("model", list(SPOOL))
def test_the_shared_fields_keep_their_names_and_defaults(model: type[BaseModel]) -> None:
    settings = model.model_validate(REQUIRED[model]).model_dump()
    spool = SPOOL[model].lower()
    assert {k: settings[k] for k in settings if k.startswith(f"{spool}_spool_")} == {
        f"{spool}_spool_dir": "", f"{spool}_spool_max_bytes": 1 << 30,
        f"{spool}_spool_segment_bytes": 16 << 20, f"{spool}_spool_fsync": "segment"}
    if model in RETRY:
        retry = RETRY[model].lower()
        assert settings[f"{retry}_retry_initial_backoff"] == 0.5
        assert settings[f"{retry}_retry_max_backoff"] == 30.0
    if model in TLS:
        tls = TLS[model].lower()
        assert [settings[f"{tls}_tls_{f}_path"] for f in ("ca_cert", "user_cert", "user_key")] \
            == ["", "", ""]


@pytest.mark.parametrize("model", list(TLS))
def test_tls_files_are_checked_alike(model: type[BaseModel], tmp_path: Path) -> None:
    prefix = TLS[model]
    field = prefix.lower()
    cert = tmp_path / "user.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n")
    assert message(model, **{f"{field}_tls_user_cert_path": str(cert)}) == (
        f"{prefix}_TLS_USER_CERT_PATH and {prefix}_TLS_USER_KEY_PATH go together: set both for "
        "mutual TLS, or neither")
    der = tmp_path / "ca.der"
    der.write_bytes(b"\x30\x82\x01\x0a")
    assert message(model, **{f"{field}_tls_ca_cert_path": str(der)}) == (
        f"{prefix}_TLS_CA_CERT_PATH file {der} is not a PEM certificate (no '-----BEGIN "
        "CERTIFICATE-----' line)")


@pytest.mark.parametrize("model", list(RETRY))
def test_backoff_bounds_are_checked_alike(model: type[BaseModel]) -> None:
    prefix = RETRY[model]
    field = prefix.lower()
    assert message(model, **{f"{field}_retry_initial_backoff": "10s",
                             f"{field}_retry_max_backoff": "1s"}) == (
        f"{prefix}_RETRY_MAX_BACKOFF must not be shorter than {prefix}_RETRY_INITIAL_BACKOFF")
