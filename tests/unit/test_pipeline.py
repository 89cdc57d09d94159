"""The kind table and resolution: configuration + plugins -> a frozen pipeline."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from flowkit import hookspecs
from flowkit.components import COMPONENT_KINDS, Accounter, Exporter, Informer, Tracer
from flowkit.config import AgentConfig, ConfigError, load_config
from flowkit.pipeline import Pipeline, resolve_pipeline
from flowkit.plugins import PluginManager

BASE = {"tracer": "synthetic", "accounter": "python", "listen_interfaces": "poll"}


def test_every_kind_in_the_table_has_its_hook_setting_and_protocol() -> None:
    assert list(COMPONENT_KINDS) == ["informer", "tracer", "accounter", "exporter"]
    protocols = {"informer": Informer, "tracer": Tracer, "accounter": Accounter,
                 "exporter": Exporter}
    for name, kind in COMPONENT_KINDS.items():
        assert callable(getattr(hookspecs, kind.hook))
        assert kind.spec_type.kind == name
        assert kind.setting in AgentConfig.model_fields
        assert kind.protocol is protocols[name]
    assert [k.name for k in COMPONENT_KINDS.values() if k.many] == ["exporter"]


def test_resolution_returns_a_frozen_pipeline_with_validated_settings(
    builtin_pm: PluginManager,
) -> None:
    config = load_config(cli={**BASE, "export": "stdout", "synthetic_rate": "7"}, environ={},
                         plugin_manager=builtin_pm)
    pipeline = resolve_pipeline(config, builtin_pm)
    assert isinstance(pipeline, Pipeline)
    assert [(c.kind, c.name) for c in pipeline.components()] == [
        ("informer", "poll"), ("tracer", "synthetic"), ("accounter", "python"),
        ("exporter", "stdout")]
    assert pipeline.tracer.settings is not None
    assert pipeline.tracer.settings.synthetic_rate == 7.0  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pipeline.exporters = ()  # type: ignore[misc]


def test_resolving_does_not_change_the_configuration(builtin_pm: PluginManager) -> None:
    config = load_config(cli=BASE, environ={}, plugin_manager=builtin_pm)
    before = config.model_dump()
    resolve_pipeline(config, builtin_pm)
    assert config.model_dump() == before
    assert not hasattr(config, "with_component_settings")


def test_an_unknown_component_names_the_setting_and_the_choices(
    builtin_pm: PluginManager,
) -> None:
    config = load_config(cli={**BASE, "export": "nope"}, environ={})
    with pytest.raises(ConfigError, match=r"invalid setting EXPORT='nope': unknown exporter"):
        resolve_pipeline(config, builtin_pm)


def test_an_exporter_listed_twice_is_a_configuration_error(builtin_pm: PluginManager) -> None:
    config = load_config(cli={**BASE, "export": "stdout,STDOUT"}, environ={})
    with pytest.raises(ConfigError, match="'stdout' is listed twice"):
        resolve_pipeline(config, builtin_pm)


def test_the_configuration_module_does_not_import_the_plugin_manager() -> None:
    code = ("import sys, flowkit.config, flowkit.pipeline; "
            "print('flowkit.plugins' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
