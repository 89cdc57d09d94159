"""Agent configuration: NetObserv-compatible settings from CLI flags, environment and YAML.

Every setting has one canonical name, the field name of a pydantic model:

- environment variable: the name upper-cased (``CACHE_ACTIVE_TIMEOUT``), plus deprecated
  aliases listed in ``json_schema_extra={"env_aliases": [...]}``;
- YAML key (``--config FILE``): the name as is (``cache_active_timeout``);
- CLI flag: ``--cache-active-timeout``.

Precedence: CLI > environment > file > defaults. The core settings live in :class:`AgentConfig`;
each plugin component may add its own settings model (``settings_model`` of its spec), validated
only when the component is selected.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from pydantic.fields import FieldInfo

from flowkit.settings_types import Bool, CidrList, CommaList, Duration

if TYPE_CHECKING:
    from flowkit.plugins import PluginManager

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A setting is invalid. ``str()`` is the one line the CLI prints before exiting with 2."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class AgentConfig(BaseModel):
    """The agent's core settings (see docs/configuration.md for the full reference)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    export: CommaList = Field(
        default_factory=lambda: ["stdout"],
        description="Exporters to send flows to, comma-separated (stdout, kafka, grpc, or any "
        "exporter a plugin provides).",
    )
    tracer: str = Field(
        default="ebpf", description="Flow tracer: ebpf, synthetic, or a plugin's tracer."
    )
    accounter: str = Field(
        default="native", description="Accounter: native (C), python (reference), or a plugin's."
    )
    listen_interfaces: str = Field(
        default="watch",
        description="How interfaces are discovered: watch (netlink notifications) or poll.",
    )
    listen_poll_period: Duration = Field(
        default=10.0, description="How often the poll informer lists interfaces."
    )
    interfaces: CommaList = Field(
        default_factory=list,
        description="Interfaces to trace (names, or /regex/ searched anywhere in the name); "
        "empty means all.",
    )
    exclude_interfaces: CommaList = Field(
        default_factory=lambda: ["lo"],
        description="Interfaces never traced (names or /regex/); exclusion wins over INTERFACES.",
    )
    interface_ips: CidrList = Field(
        default_factory=list,
        description="Only trace interfaces with an address in one of these CIDRs.",
    )
    buffers_length: int = Field(
        default=50, gt=0, description="Length of the queues between stages (batches per exporter)."
    )
    cache_max_flows: int = Field(
        default=5000,
        gt=0,
        description="Flows held per cycle (kernel map size and accounter cache); reaching it "
        "evicts early.",
    )
    cache_active_timeout: Duration = Field(
        default=5.0, gt=0, description="How often flows are evicted and exported."
    )
    sampling: int = Field(
        default=0, ge=0, description="Keep 1 packet in N (0 or 1: every packet)."
    )
    direction: Literal["both", "ingress", "egress"] = Field(
        default="both", description="Which traffic direction to trace."
    )
    agent_ip: str | None = Field(
        default=None,
        description="IP address reported as AgentIP in every flow (default: not reported).",
    )
    log_level: Literal["trace", "debug", "info", "warn", "warning", "error", "fatal", "panic"] = (
        Field(default="info", description="Log verbosity.")
    )
    metrics_enable: Bool = Field(default=False, description="Serve Prometheus metrics.")
    metrics_server_address: str = Field(
        default="", description="Address the metrics server listens on (empty: all)."
    )
    metrics_server_port: int = Field(
        default=9090, ge=0, le=65535, description="Port of the metrics server."
    )
    metrics_prefix: str = Field(default="ebpf_agent_", description="Prefix of every metric name.")
    shutdown_timeout: Duration = Field(
        default=5.0, description="How long an orderly stop may take to flush exporters."
    )

    _component_settings: dict[tuple[str, str], BaseModel] = PrivateAttr(default_factory=dict)

    @field_validator("interfaces", "exclude_interfaces")
    @classmethod
    def _check_regexes(cls, value: list[str]) -> list[str]:
        for entry in value:
            if len(entry) >= 2 and entry.startswith("/") and entry.endswith("/"):
                try:
                    re.compile(entry[1:-1])
                except re.error as exc:
                    raise ValueError(f"{entry!r} is not a valid regular expression: {exc}") \
                        from None
        return value

    @field_validator("agent_ip")
    @classmethod
    def _check_ip(cls, value: str | None) -> str | None:
        if value:
            try:
                return str(ipaddress.ip_address(value))
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address") from None
        return None

    @field_validator("export")
    @classmethod
    def _check_export(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one exporter is needed, e.g. stdout")
        return [v.lower() for v in value]

    # -- component settings -----------------------------------------------------------------
    def settings_for(self, kind: str, name: str, model: type[BaseModel] | None) -> Any:
        """The validated settings of component ``name`` (defaults if none were loaded)."""
        if model is None:
            return None
        found = self._component_settings.get((kind, name))
        if found is None:
            try:
                found = model.model_validate({})
            except ValidationError as exc:
                raise _to_config_error(exc, _field_table([model])) from None
            self._component_settings[(kind, name)] = found
        return found

    def with_component_settings(self, settings: Mapping[tuple[str, str], BaseModel]) -> AgentConfig:
        """Attach validated component settings (used by :func:`load_config`)."""
        self._component_settings.update(settings)
        return self

    def selected(self) -> Iterator[tuple[str, str]]:
        """(kind, name) of every component this configuration selects."""
        yield "informer", self.listen_interfaces
        yield "tracer", self.tracer
        yield "accounter", self.accounter
        for name in self.export:
            yield "exporter", name

    @classmethod
    def load(
        cls,
        *,
        cli: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
        plugin_manager: PluginManager | None = None,
    ) -> AgentConfig:
        """Load from CLI values (by field name), environment and file; see :func:`load_config`."""
        return load_config(
            cli=cli, environ=environ, config_file=config_file, plugin_manager=plugin_manager
        )


# ---------------------------------------------------------------------------------------------
# Setting tables, shared by the loader, the CLI (flags) and the docs generator.


@dataclass(frozen=True)
class SettingInfo:
    """One setting: its canonical name and where it can be given."""

    name: str
    field: FieldInfo
    owners: tuple[str, ...]

    @property
    def env(self) -> str:
        return self.name.upper()

    @property
    def env_aliases(self) -> list[str]:
        extra = self.field.json_schema_extra
        if isinstance(extra, dict):
            aliases = extra.get("env_aliases", [])
            if isinstance(aliases, list):
                return [str(a) for a in aliases]
        return []

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _field_table(
    models: list[type[BaseModel]], owners: list[str] | None = None
) -> dict[str, SettingInfo]:
    table: dict[str, SettingInfo] = {}
    for i, model in enumerate(models):
        owner = owners[i] if owners else model.__name__
        for name, info in model.model_fields.items():
            if name in table:
                table[name] = SettingInfo(name, table[name].field, (*table[name].owners, owner))
            else:
                table[name] = SettingInfo(name, info, (owner,))
    return table


def settings_table(plugin_manager: PluginManager | None) -> dict[str, SettingInfo]:
    """Every known setting: the core ones, then every plugin component's."""
    models: list[type[BaseModel]] = [AgentConfig]
    owners = ["core"]
    if plugin_manager is not None:
        for kind, components in plugin_manager.all_components().items():
            for name, comp in components.items():
                if comp.spec.settings_model is not None:
                    models.append(comp.spec.settings_model)
                    owners.append(f"{kind} {name}")
    return _field_table(models, owners)


def _to_config_error(exc: ValidationError, table: Mapping[str, SettingInfo]) -> ConfigError:
    error = exc.errors()[0]
    loc = error.get("loc") or ()
    name = str(loc[0]) if loc else ""
    setting = table[name].env if name in table else name.upper()
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if error.get("type") == "missing":
        return ConfigError(f"missing setting {setting}: it is required here", setting)
    if not name:
        # model-level validators: the message names the settings itself
        return ConfigError(f"invalid settings: {message}", None)
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f"={value!r}"
    return ConfigError(f"invalid setting {setting}{shown}: {message}", setting)


def _read_file(path: str | os.PathLike[str], table: Mapping[str, SettingInfo]) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of setting: value")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).strip().lower().replace("-", "_")
        if name not in table:
            raise ConfigError(
                f"unknown key {key!r} in config file {path}; see docs/configuration.md for "
                "the settings"
            )
        out[name] = value
    return out


def _read_env(environ: Mapping[str, str], table: Mapping[str, SettingInfo]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, info in table.items():
        if info.env in environ:
            out[name] = environ[info.env]
            continue
        for alias in info.env_aliases:
            if alias in environ:
                log.warning("%s is deprecated; use %s", alias, info.env)
                out[name] = environ[alias]
                break
    return out


def load_config(
    *,
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    plugin_manager: PluginManager | None = None,
) -> AgentConfig:
    """Merge and validate every source; raise :class:`ConfigError` on the first bad setting.

    ``cli`` maps canonical setting names to raw values (strings as typed); ``environ`` defaults
    to ``os.environ``. With a plugin manager, component names are checked and the selected
    components' settings are validated too, so nothing starts with a bad configuration.
    """
    from flowkit.plugins import PluginError, UnknownComponentError

    table = settings_table(plugin_manager)
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(_read_file(config_file, table))
    merged.update(_read_env(os.environ if environ is None else environ, table))
    for name, value in (cli or {}).items():
        if name not in table:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            merged[name] = value

    core = {k: v for k, v in merged.items() if k in AgentConfig.model_fields}
    try:
        config = AgentConfig.model_validate(core)
    except ValidationError as exc:
        raise _to_config_error(exc, table) from None

    if plugin_manager is None:
        return config
    settings_by_component: dict[tuple[str, str], BaseModel] = {}
    setting_of_kind = {
        "informer": "LISTEN_INTERFACES",
        "tracer": "TRACER",
        "accounter": "ACCOUNTER",
        "exporter": "EXPORT",
    }
    for kind, name in config.selected():
        try:
            spec = plugin_manager.get(kind, name)
        except UnknownComponentError as exc:
            raise ConfigError(
                f"invalid setting {setting_of_kind[kind]}={name!r}: {exc}", setting_of_kind[kind]
            ) from None
        except PluginError as exc:
            raise ConfigError(str(exc)) from None
        model = spec.settings_model
        if model is None:
            continue
        values = {k: v for k, v in merged.items() if k in model.model_fields}
        try:
            settings_by_component[(kind, spec.name)] = model.model_validate(values)
        except ValidationError as exc:
            raise _to_config_error(exc, table) from None
    return config.with_component_settings(settings_by_component)
