"""The plugin manager and component specs: names, duplicates, resolution, built-ins."""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from flowkit import hookimpl, hookspecs
from flowkit.components import (
    COMPONENT_KINDS,
    AccounterSpec,
    ComponentSpec,
    ExporterSpec,
    InformerSpec,
    InvalidSpecError,
    TracerSpec,
)
from flowkit.plugins import (
    DISABLE_ENV,
    DuplicateComponentError,
    PluginError,
    PluginManager,
    UnknownComponentError,
)


def _factory(context: Any) -> None:
    return None


class Exporters:
    """A plugin object providing exporters with the given names."""

    def __init__(self, *names: str) -> None:
        self.names = names

    @hookimpl
    def flowkit_exporters(self) -> list[ExporterSpec]:
        return [ExporterSpec(name=n, factory=_factory, description=f"{n} exporter")
                for n in self.names]


# -- specs -------------------------------------------------------------------------------------


def test_spec_names_are_normalised() -> None:
    assert ExporterSpec(name="  Kafka ", factory=_factory).name == "kafka"


@pytest.mark.parametrize("name", ["", "-kafka", "ka fka", "kafka!", "_x", "ünï"])
def test_invalid_spec_names_are_rejected_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidSpecError, match="invalid exporter name"):
        ExporterSpec(name=name, factory=_factory)


@pytest.mark.parametrize("name", ["kafka", "k8s.v2", "my_exporter-2", "0day"])
def test_valid_spec_names_are_accepted(name: str) -> None:
    assert TracerSpec(name=name, factory=_factory).name == name


def test_a_spec_needs_a_callable_factory() -> None:
    with pytest.raises(InvalidSpecError, match="factory is not callable"):
        InformerSpec(name="x", factory="not callable")  # type: ignore[arg-type]


def test_a_settings_model_must_be_a_pydantic_model() -> None:
    with pytest.raises(InvalidSpecError, match="pydantic BaseModel subclass"):
        AccounterSpec(name="x", factory=_factory, settings_model=dict)  # type: ignore[arg-type]

    class Settings(BaseModel):
        x_level: int = 1

    assert AccounterSpec(name="x", factory=_factory, settings_model=Settings).settings_model \
        is Settings


def test_specs_are_frozen() -> None:
    spec = ExporterSpec(name="x", factory=_factory)
    with pytest.raises(AttributeError):
        spec.name = "y"  # type: ignore[misc]


def test_a_non_string_name_is_rejected() -> None:
    with pytest.raises(InvalidSpecError, match="must be a string"):
        ComponentSpec(name=3, factory=_factory)  # type: ignore[arg-type]


# -- resolution --------------------------------------------------------------------------------


def test_components_are_resolved_by_name_and_sorted(
    flowkit_plugin_manager: PluginManager,
) -> None:
    flowkit_plugin_manager.register(Exporters("zeta", "alpha"), name="a", distribution="dist-a")
    flowkit_plugin_manager.register(Exporters("mid"), name="b", distribution="dist-b",
                                    version="2.0")
    components = flowkit_plugin_manager.components("exporter")
    assert list(components) == ["alpha", "mid", "zeta"]
    assert components["mid"].distribution == "dist-b"
    assert components["mid"].version == "2.0"
    assert components["mid"].plugin == "b"
    assert flowkit_plugin_manager.get("exporter", " MID ").name == "mid"


def test_registration_order_does_not_decide_which_component_is_picked(
    flowkit_plugin_manager: PluginManager,
) -> None:
    flowkit_plugin_manager.register(Exporters("b"), name="first")
    flowkit_plugin_manager.register(Exporters("a"), name="second")
    assert flowkit_plugin_manager.get("exporter", "a").description == "a exporter"
    assert flowkit_plugin_manager.get("exporter", "b").description == "b exporter"


def test_duplicate_names_are_rejected_naming_both_distributions(
    flowkit_plugin_manager: PluginManager,
) -> None:
    flowkit_plugin_manager.register(Exporters("stdout"), name="stdout", distribution="flowkit")
    flowkit_plugin_manager.register(Exporters("stdout"), name="copycat",
                                    distribution="flowkit-copycat")
    with pytest.raises(DuplicateComponentError) as err:
        flowkit_plugin_manager.components("exporter")
    message = str(err.value)
    assert "exporter 'stdout' is provided twice" in message
    assert "flowkit-copycat" in message
    assert "by flowkit (plugin 'stdout')" in message
    assert DISABLE_ENV in message


def test_the_same_name_in_two_kinds_is_no_clash(flowkit_plugin_manager: PluginManager) -> None:
    class Both:
        @hookimpl
        def flowkit_exporters(self) -> list[ExporterSpec]:
            return [ExporterSpec(name="x", factory=_factory)]

        @hookimpl
        def flowkit_tracers(self) -> list[TracerSpec]:
            return [TracerSpec(name="x", factory=_factory)]

    flowkit_plugin_manager.register(Both())
    assert list(flowkit_plugin_manager.components("exporter")) == ["x"]
    assert list(flowkit_plugin_manager.components("tracer")) == ["x"]


def test_unknown_names_list_the_available_ones(flowkit_plugin_manager: PluginManager) -> None:
    flowkit_plugin_manager.register(Exporters("kafka", "grpc"))
    with pytest.raises(UnknownComponentError,
                       match=r"^unknown exporter 'ipfix'; available: grpc, kafka$"):
        flowkit_plugin_manager.get("exporter", "ipfix")


def test_an_empty_kind_says_none_are_available(flowkit_plugin_manager: PluginManager) -> None:
    with pytest.raises(UnknownComponentError, match=r"available: \(none\)"):
        flowkit_plugin_manager.get("tracer", "ebpf")


def test_unknown_kinds_are_a_programming_error(flowkit_plugin_manager: PluginManager) -> None:
    with pytest.raises(ValueError, match="unknown component kind 'widget'"):
        flowkit_plugin_manager.components("widget")


def test_a_hook_returning_the_wrong_spec_type_is_reported(
    flowkit_plugin_manager: PluginManager,
) -> None:
    class Confused:
        @hookimpl
        def flowkit_exporters(self) -> list[TracerSpec]:
            return [TracerSpec(name="x", factory=_factory)]

    flowkit_plugin_manager.register(Confused(), name="confused", distribution="flowkit-confused")
    with pytest.raises(PluginError, match=r"'confused' \(flowkit-confused\) returned .* "
                                          "expected ExporterSpec instances"):
        flowkit_plugin_manager.components("exporter")


def test_a_failing_hook_is_reported_with_its_plugin(flowkit_plugin_manager: PluginManager) -> None:
    class Broken:
        @hookimpl
        def flowkit_informers(self) -> list[InformerSpec]:
            raise RuntimeError("boom")

    flowkit_plugin_manager.register(Broken(), name="broken", distribution="flowkit-broken")
    with pytest.raises(PluginError, match=r"'broken' \(flowkit-broken\) failed in "
                                          r"flowkit_informers: boom"):
        flowkit_plugin_manager.components("informer")


def test_a_hook_returning_none_provides_nothing(flowkit_plugin_manager: PluginManager) -> None:
    class Quiet:
        @hookimpl
        def flowkit_exporters(self) -> None:
            return None

    flowkit_plugin_manager.register(Quiet())
    assert flowkit_plugin_manager.components("exporter") == {}


def test_registering_resets_what_was_resolved(flowkit_plugin_manager: PluginManager) -> None:
    assert flowkit_plugin_manager.components("exporter") == {}
    flowkit_plugin_manager.register(Exporters("late"))
    assert list(flowkit_plugin_manager.components("exporter")) == ["late"]


def test_a_plugin_name_registers_once(flowkit_plugin_manager: PluginManager) -> None:
    flowkit_plugin_manager.register(Exporters("a"), name="same")
    with pytest.raises(ValueError, match="already registered"):
        flowkit_plugin_manager.register(Exporters("b"), name="same")


def test_an_implementation_of_an_unknown_hook_is_refused(
    flowkit_plugin_manager: PluginManager,
) -> None:
    class Typo:
        @hookimpl
        def flowkit_exporter(self) -> list[ExporterSpec]:
            return []

    with pytest.raises(Exception, match="flowkit_exporter"):
        flowkit_plugin_manager.register(Typo())


def test_describe_groups_components_by_distribution(
    flowkit_plugin_manager: PluginManager,
) -> None:
    flowkit_plugin_manager.register(Exporters("b", "a"), name="p1", distribution="dist-z",
                                    version="1.0")
    flowkit_plugin_manager.register(Exporters("c"), name="p2", distribution="dist-y")
    described = flowkit_plugin_manager.describe()
    assert [d["distribution"] for d in described] == ["dist-y", "dist-z"]
    z = described[1]
    assert z["version"] == "1.0"
    assert z["plugins"] == ["p1"]
    assert z["components"] == {
        "informer": [], "tracer": [], "accounter": [],
        "exporter": [{"name": "a", "description": "a exporter"},
                     {"name": "b", "description": "b exporter"}],
    }


# -- entry points and built-ins ----------------------------------------------------------------


def test_the_installed_entry_points_provide_the_builtins() -> None:
    pm = PluginManager(disabled=())
    for kind, info in COMPONENT_KINDS.items():
        components = pm.components(kind)
        for name in info.builtins:
            assert components[name].distribution == "flowkit-ebpf"


def test_missing_builtins_are_reported_as_a_broken_install(
    flowkit_plugin_manager: PluginManager,
) -> None:
    with pytest.raises(PluginError, match=r"built-in informer plugin.*poll.*reinstall flowkit"):
        flowkit_plugin_manager.check_builtins()


def test_disabled_builtins_are_not_required() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    disabled = pyproject["project"]["entry-points"]["flowkit"]  # every built-in entry point
    pm = PluginManager(load_entrypoints=False, disabled=disabled)
    pm.check_builtins()


def test_plugins_are_disabled_by_entry_point_name_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(DISABLE_ENV, " poll , synthetic")
    pm = PluginManager()
    assert pm.disabled == {"poll", "synthetic"}
    assert "poll" not in pm.components("informer")
    assert "synthetic" not in pm.components("tracer")
    assert "stdout" in pm.components("exporter")


def test_a_whole_distribution_can_be_disabled() -> None:
    pm = PluginManager(load_entrypoints=False, disabled=("flowkit-ebpf",))
    pm.load_entrypoints()
    assert pm.components("exporter").get("stdout") is None


# -- hook specifications -----------------------------------------------------------------------


def _hookspecs() -> list[str]:
    return [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
            if name.startswith("flowkit_")]


def test_hooks_are_named_typed_and_documented_with_an_example() -> None:
    specs = _hookspecs()
    assert specs
    for name in specs:
        function = getattr(hookspecs, name)
        doc = inspect.getdoc(function) or ""
        assert ":return:" in doc, name
        assert "@hookimpl" in doc, name
        assert inspect.signature(function).return_annotation != inspect.Signature.empty, name


def test_component_hooks_collect_from_every_plugin() -> None:
    pm = PluginManager(load_entrypoints=False, disabled=())
    for name in _hookspecs():
        caller = getattr(pm._pm.hook, name)
        assert not caller.spec.opts.get("firstresult"), name
