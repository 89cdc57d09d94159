"""Settings: names, sources and precedence, value types, and the errors users see."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from flowkit import hookimpl
from flowkit.components import ExporterSpec
from flowkit.config import AgentConfig, ConfigError, load_config, settings_table
from flowkit.plugins import PluginManager
from flowkit.settings_types import format_duration, parse_duration
from flowkit_plugins.synthetic_tracer import SyntheticSettings

BASE = {"tracer": "synthetic", "accounter": "python", "listen_interfaces": "poll"}


class TargetSettings(BaseModel):
    """A plugin setting model with a required field and a deprecated environment alias."""

    target_host: str = Field(
        min_length=1, description="Collector host.",
        json_schema_extra={"env_aliases": ["FLOWS_TARGET_HOST"]},
    )
    target_retries: int = Field(default=3, ge=0, description="Retries.")


class TargetPlugin:
    @hookimpl
    def flowkit_exporters(self) -> list[ExporterSpec]:
        return [ExporterSpec(name="target", factory=lambda ctx: None,
                             settings_model=TargetSettings)]


@pytest.fixture
def pm(builtin_pm: PluginManager) -> PluginManager:
    builtin_pm.register(TargetPlugin(), name="target", distribution="flowkit-target")
    return builtin_pm


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flowkit.yaml"
    path.write_text(text)
    return path


# -- defaults and names ------------------------------------------------------------------------


def test_defaults_work_with_zero_configuration() -> None:
    config = load_config(environ={})
    assert config.export == ["stdout"]
    assert config.exclude_interfaces == ["lo"]
    assert config.interfaces == []
    assert config.cache_active_timeout == 5.0
    assert config.cache_max_flows == 5000
    assert config.sampling == 0
    assert config.direction == "both"
    assert config.agent_ip is None


def test_every_setting_has_an_env_name_a_flag_and_a_yaml_key(pm: PluginManager) -> None:
    table = settings_table(pm)
    info = table["cache_active_timeout"]
    assert (info.env, info.flag, info.name) == (
        "CACHE_ACTIVE_TIMEOUT", "--cache-active-timeout", "cache_active_timeout"
    )
    assert table["target_host"].env_aliases == ["FLOWS_TARGET_HOST"]
    assert table["target_host"].owners == ("exporter target",)
    assert table["synthetic_rate"].owners == ("tracer synthetic",)
    assert table["export"].owners == ("core",)


def test_a_setting_shared_by_two_components_lists_both_owners(pm: PluginManager) -> None:
    class Other:
        @hookimpl
        def flowkit_exporters(self) -> list[ExporterSpec]:
            return [ExporterSpec(name="target2", factory=lambda ctx: None,
                                 settings_model=TargetSettings)]

    pm.register(Other(), name="other")
    assert settings_table(pm)["target_host"].owners == ("exporter target", "exporter target2")


def test_config_is_immutable_and_rejects_unknown_fields() -> None:
    config = AgentConfig()
    with pytest.raises(ValidationError):
        config.sampling = 3
    with pytest.raises(ValidationError):
        AgentConfig(no_such_setting=1)  # type: ignore[call-arg]


# -- sources and precedence --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cli", "env", "file", "expected"),
    [
        ("7", "5", "3", 7),
        (None, "5", "3", 5),
        (None, None, "3", 3),
        (None, None, None, 0),
        ("7", None, "3", 7),
        ("7", "5", None, 7),
    ],
    ids=["cli-wins", "env-beats-file", "file-beats-default", "default", "cli-beats-file",
         "cli-beats-env"],
)
def test_precedence_is_cli_then_env_then_file_then_default(
    tmp_path: Path, pm: PluginManager, cli: str | None, env: str | None, file: str | None,
    expected: int,
) -> None:
    path = write_yaml(tmp_path, f"sampling: {file}\nsynthetic_packet_bytes: {file}\n") \
        if file else None
    environ = {"SAMPLING": env, "SYNTHETIC_PACKET_BYTES": env} if env else {}
    cli_values: dict[str, Any] = (
        {"sampling": cli, "synthetic_packet_bytes": cli} if cli else {}
    )
    config = load_config(cli={**BASE, **cli_values}, environ=environ, config_file=path,
                         plugin_manager=pm)
    assert config.sampling == expected
    synthetic = config.settings_for("tracer", "synthetic", SyntheticSettings)
    assert synthetic.synthetic_packet_bytes == (expected or 100)


def test_cli_values_of_none_do_not_override() -> None:
    config = load_config(cli={"sampling": None}, environ={"SAMPLING": "4"})
    assert config.sampling == 4


def test_environment_defaults_to_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CACHE_MAX_FLOWS", "123")
    assert load_config().cache_max_flows == 123


def test_yaml_keys_accept_dashes_and_any_case(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "Cache-Max-Flows: 42\nexport: [stdout]\n")
    assert load_config(environ={}, config_file=path).cache_max_flows == 42


def test_yaml_lists_and_env_comma_lists_mean_the_same(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "interfaces: [eth0, /^veth/]\n")
    from_file = load_config(environ={}, config_file=path)
    from_env = load_config(environ={"INTERFACES": "eth0, /^veth/"})
    assert from_file.interfaces == from_env.interfaces == ["eth0", "/^veth/"]


def test_an_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(environ={}, config_file=write_yaml(tmp_path, "")) == AgentConfig()


def test_deprecated_env_alias_is_used_with_a_warning(
    pm: PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flowkit.config"):
        config = load_config(cli={**BASE, "export": "target"},
                             environ={"FLOWS_TARGET_HOST": "198.18.0.9"}, plugin_manager=pm)
    assert config.settings_for("exporter", "target", TargetSettings).target_host == "198.18.0.9"
    assert "FLOWS_TARGET_HOST is deprecated; use TARGET_HOST" in caplog.text


def test_the_current_env_name_beats_its_deprecated_alias(pm: PluginManager) -> None:
    config = load_config(
        cli={**BASE, "export": "target"},
        environ={"FLOWS_TARGET_HOST": "198.18.0.9", "TARGET_HOST": "198.18.0.10"},
        plugin_manager=pm,
    )
    assert config.settings_for("exporter", "target", TargetSettings).target_host == "198.18.0.10"


# -- plugin settings ---------------------------------------------------------------------------


def test_plugin_settings_are_validated_only_when_the_component_is_selected(
    pm: PluginManager,
) -> None:
    config = load_config(cli=BASE, environ={"TARGET_RETRIES": "-1"}, plugin_manager=pm)
    assert config.export == ["stdout"]
    with pytest.raises(ConfigError) as err:
        load_config(cli={**BASE, "export": "stdout,target"},
                    environ={"TARGET_HOST": "h", "TARGET_RETRIES": "-1"}, plugin_manager=pm)
    assert err.value.setting == "TARGET_RETRIES"


def test_a_required_plugin_setting_is_named_when_missing(pm: PluginManager) -> None:
    with pytest.raises(ConfigError, match=r"^missing setting TARGET_HOST: it is required here$"):
        load_config(cli={**BASE, "export": "target"}, environ={}, plugin_manager=pm)


def test_plugin_settings_come_from_every_source(tmp_path: Path, pm: PluginManager) -> None:
    path = write_yaml(tmp_path, "target_host: from-file\ntarget_retries: 9\n")
    config = load_config(cli={**BASE, "export": "target", "target_retries": "1"},
                         environ={}, config_file=path, plugin_manager=pm)
    settings = config.settings_for("exporter", "target", TargetSettings)
    assert (settings.target_host, settings.target_retries) == ("from-file", 1)


def test_settings_of_a_component_loaded_without_a_manager_are_its_defaults() -> None:
    config = load_config(environ={})
    assert config.settings_for("tracer", "synthetic", SyntheticSettings) == SyntheticSettings()
    assert config.settings_for("exporter", "stdout", None) is None


def test_component_names_are_case_insensitive(pm: PluginManager) -> None:
    config = load_config(cli={**BASE, "export": "STDOUT"}, environ={}, plugin_manager=pm)
    assert config.export == ["stdout"]


# -- value types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("1m30s", 90.0), ("2h", 7200.0), ("1.5s", 1.5),
     ("250us", 0.00025), ("10", 10.0), ("0", 0.0)],
)
def test_durations_are_written_the_go_way(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", [0.5, 5.0, 90.0, 120.0, 0.001])
def test_formatted_durations_read_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_lists_booleans_and_cidrs_parse_from_strings() -> None:
    config = load_config(environ={
        "EXPORT": "stdout, ", "EXCLUDE_INTERFACES": "lo,/^veth/", "METRICS_ENABLE": "YES",
        "INTERFACE_IPS": "198.18.0.0/15,fd00::1/8", "AGENT_IP": "fd00::0001",
    })
    assert config.export == ["stdout"]
    assert config.exclude_interfaces == ["lo", "/^veth/"]
    assert config.metrics_enable is True
    assert config.interface_ips == ["198.18.0.0/15", "fd00::/8"]
    assert config.agent_ip == "fd00::1"


# -- errors: one line naming the setting and what it accepts -----------------------------------


@pytest.mark.parametrize(
    ("environ", "setting", "accepted"),
    [
        ({"SAMPLING": "abc"}, "SAMPLING", "valid integer"),
        ({"SAMPLING": "-1"}, "SAMPLING", "greater than or equal to 0"),
        ({"DIRECTION": "sideways"}, "DIRECTION", "'both', 'ingress' or 'egress'"),
        ({"CACHE_ACTIVE_TIMEOUT": "5 parsecs"}, "CACHE_ACTIVE_TIMEOUT", "500ms, 5s or 1m30s"),
        ({"CACHE_ACTIVE_TIMEOUT": "0s"}, "CACHE_ACTIVE_TIMEOUT", "must be more than 0s"),
        ({"CACHE_MAX_FLOWS": "0"}, "CACHE_MAX_FLOWS", "greater than 0"),
        ({"BUFFERS_LENGTH": "lots"}, "BUFFERS_LENGTH", "valid integer"),
        ({"METRICS_ENABLE": "maybe"}, "METRICS_ENABLE", "true or false"),
        ({"METRICS_SERVER_PORT": "70000"}, "METRICS_SERVER_PORT", "less than or equal to 65535"),
        ({"INTERFACES": "/([/"}, "INTERFACES", "not a valid regular expression"),
        ({"EXCLUDE_INTERFACES": "/*/"}, "EXCLUDE_INTERFACES", "not a valid regular expression"),
        ({"INTERFACE_IPS": "198.18.0.0/33"}, "INTERFACE_IPS", "198.18.0.0/15 or fd00::/8"),
        ({"AGENT_IP": "agent"}, "AGENT_IP", "not an IP address"),
        ({"EXPORT": ""}, "EXPORT", "at least one exporter"),
        ({"EXPORT": "carrier-pigeon"}, "EXPORT", "available: stdout, target"),
        ({"TRACER": "nope"}, "TRACER", "available: synthetic"),
        ({"ACCOUNTER": "nope"}, "ACCOUNTER", "available: python"),
        ({"LISTEN_INTERFACES": "nope"}, "LISTEN_INTERFACES", "available: poll"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL", "'info', 'warn'"),
        ({"LISTEN_POLL_PERIOD": "-1s"}, "LISTEN_POLL_PERIOD", "500ms, 5s or 1m30s"),
        ({"SYNTHETIC_RATE": "-5"}, "SYNTHETIC_RATE", "greater than or equal to 0"),
        ({"SYNTHETIC_FLOWS": "many"}, "SYNTHETIC_FLOWS", "valid integer"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_values_name_the_setting_and_what_it_accepts(
    pm: PluginManager, environ: dict[str, str], setting: str, accepted: str
) -> None:
    env = {"TRACER": "synthetic", "ACCOUNTER": "python", "LISTEN_INTERFACES": "poll", **environ}
    with pytest.raises(ConfigError) as err:
        load_config(environ=env, plugin_manager=pm)
    message = str(err.value)
    assert err.value.setting == setting
    assert message.startswith(f"invalid setting {setting}=")
    assert accepted in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sampling: [1\n", "is not valid YAML"),
        ("- a\n- b\n", "must be a mapping of setting: value"),
        ("no_such_setting: 1\n", "unknown key 'no_such_setting'"),
    ],
)
def test_bad_config_files_are_reported(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(environ={}, config_file=write_yaml(tmp_path, text))


def test_a_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*No such file"):
        load_config(environ={}, config_file=tmp_path / "absent.yaml")


def test_a_yaml_key_of_a_plugin_is_known_even_when_unselected(
    tmp_path: Path, pm: PluginManager
) -> None:
    path = write_yaml(tmp_path, "target_retries: 2\n")
    assert load_config(cli=BASE, environ={}, config_file=path, plugin_manager=pm)


def test_unknown_cli_settings_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'warp_speed'"):
        load_config(cli={"warp_speed": "9"}, environ={})


def test_unrelated_environment_variables_are_ignored() -> None:
    assert load_config(environ={"HOME": "/root", "WARP_SPEED": "9"}) == AgentConfig()


def test_agent_config_load_is_load_config(load: Callable[..., AgentConfig]) -> None:
    assert load(**BASE, sampling="2").sampling == 2
