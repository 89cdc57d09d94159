"""Settings of the grpc exporter, through the real configuration loader (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowkit.config import ConfigError, load_config
from flowkit.plugins import PluginManager
from flowkit_plugins import grpc_exporter
from flowkit_plugins.grpc_exporter import GrpcExporter, GrpcSettings


@pytest.fixture
def pm() -> PluginManager:
    from flowkit_plugins import poll_informer, python_accounter, stdout_exporter, synthetic_tracer

    manager = PluginManager(load_entrypoints=False, disabled=())
    for module in (
        grpc_exporter,
        poll_informer,
        python_accounter,
        stdout_exporter,
        synthetic_tracer,
    ):
        manager.register(module)
    return manager


def load(pm: PluginManager, **env: str) -> GrpcSettings:
    environ = {
        "EXPORT": "grpc",
        "TRACER": "synthetic",
        "ACCOUNTER": "python",
        "LISTEN_INTERFACES": "poll",
        **env,
    }
    config = load_config(environ=environ, plugin_manager=pm)
    settings: GrpcSettings = config.settings_for("exporter", "grpc", GrpcSettings)
    return settings


def test_defaults(pm: PluginManager) -> None:
    settings = load(pm, TARGET_HOST="127.0.0.1", TARGET_PORT="9999")
    assert settings.target == "127.0.0.1:9999"
    assert settings.grpc_message_max_flows == 10000
    assert settings.grpc_timeout == 10.0
    assert not settings.tls


def test_missing_target_port_names_the_setting(pm: PluginManager) -> None:
    with pytest.raises(ConfigError, match="TARGET_PORT") as info:
        load(pm, TARGET_HOST="127.0.0.1")
    assert info.value.setting == "TARGET_PORT"


def test_missing_target_host_names_the_setting(pm: PluginManager) -> None:
    with pytest.raises(ConfigError, match="TARGET_HOST"):
        load(pm, TARGET_PORT="9999")


def test_settings_are_not_required_when_grpc_is_not_exported(pm: PluginManager) -> None:
    config = load_config(
        environ={
            "EXPORT": "stdout",
            "TRACER": "synthetic",
            "ACCOUNTER": "python",
            "LISTEN_INTERFACES": "poll",
        },
        plugin_manager=pm,
    )
    assert config.export == ["stdout"]


def test_deprecated_flows_target_names_still_work(pm: PluginManager) -> None:
    settings = load(pm, FLOWS_TARGET_HOST="198.18.0.10", FLOWS_TARGET_PORT="2055")
    assert settings.target == "198.18.0.10:2055"


def test_new_names_win_over_deprecated_ones(pm: PluginManager) -> None:
    settings = load(
        pm,
        TARGET_HOST="198.18.0.1",
        FLOWS_TARGET_HOST="198.18.0.2",
        TARGET_PORT="1",
        FLOWS_TARGET_PORT="2",
    )
    assert settings.target == "198.18.0.1:1"


def test_durations_accept_go_syntax(pm: PluginManager) -> None:
    settings = load(
        pm, TARGET_HOST="h", TARGET_PORT="1", GRPC_TIMEOUT="1500ms", GRPC_RETRY_MAX_BACKOFF="1m"
    )
    assert settings.grpc_timeout == 1.5
    assert settings.grpc_retry_max_backoff == 60.0


def test_unreadable_ca_file_names_the_setting(pm: PluginManager, tmp_path: Path) -> None:
    missing = tmp_path / "fkE-no-such-ca.pem"
    with pytest.raises(ConfigError, match="TARGET_TLS_CA_CERT_PATH") as info:
        load(pm, TARGET_HOST="h", TARGET_PORT="1", TARGET_TLS_CA_CERT_PATH=str(missing))
    assert "cannot read" in str(info.value)
    assert "\n" not in str(info.value)


def test_client_certificate_needs_its_key(pm: PluginManager, tmp_path: Path) -> None:
    pem = tmp_path / "fkE.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="TARGET_TLS_USER_KEY_PATH"):
        load(
            pm,
            TARGET_HOST="h",
            TARGET_PORT="1",
            TARGET_TLS_CA_CERT_PATH=str(pem),
            TARGET_TLS_USER_CERT_PATH=str(pem),
        )


def test_port_out_of_range_is_rejected(pm: PluginManager) -> None:
    with pytest.raises(ConfigError, match="TARGET_PORT"):
        load(pm, TARGET_HOST="h", TARGET_PORT="70000")


def test_ipv6_target_is_bracketed() -> None:
    settings = GrpcSettings(target_host="fd00::1", target_port=9999)
    assert settings.target == "[fd00::1]:9999"


def test_backoff_is_jittered_exponential_and_capped() -> None:
    pytest.importorskip("grpc")
    from flowkit.metrics import Metrics

    settings = GrpcSettings(
        target_host="127.0.0.1",
        target_port=9,
        grpc_retry_initial_backoff=1,
        grpc_retry_max_backoff=8,
    )
    exporter = GrpcExporter(settings, Metrics())
    try:
        for attempt, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (60, 8.0)]:
            waits = [exporter._sender.retry.delay(attempt) for _ in range(200)]
            assert all(step / 2 <= w <= step for w in waits), attempt
            assert len(set(waits)) > 1
    finally:
        exporter.shutdown(0.1)


def test_a_ca_file_that_is_not_pem_is_refused_naming_the_setting(
    pm: PluginManager, tmp_path: Path
) -> None:
    der = tmp_path / "fkE-ca.der"
    der.write_bytes(b"\x30\x82\x01\x0a")  # DER starts like this: not what gRPC reads
    with pytest.raises(ConfigError, match="TARGET_TLS_CA_CERT_PATH") as info:
        load(pm, TARGET_HOST="h", TARGET_PORT="1", TARGET_TLS_CA_CERT_PATH=str(der))
    assert "is not a PEM certificate" in str(info.value)
