"""Agent configuration: NetObserv-compatible settings from CLI flags, environment and YAML.

Every setting has one canonical name, the field name of a pydantic model:

- environment variable: the name upper-cased (``CACHE_ACTIVE_TIMEOUT``), plus deprecated
  aliases listed in ``json_schema_extra={"env_aliases": [...]}``;
- YAML key (``--config FILE``): the name as is (``cache_active_timeout``);
- CLI flag: ``--cache-active-timeout``.

Precedence: CLI > environment > file > defaults. The core settings live in :class:`AgentConfig`;
each plugin component may add its own settings model (``settings_model`` of its spec), validated
only when the component is selected.

This module parses and validates; it knows nothing of plugins beyond their settings models.
Turning a configuration and the installed plugins into a runnable pipeline is
:func:`flowkit.pipeline.resolve_pipeline`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from flowkit.settings_types import (
    Bool,
    CidrList,
    CommaList,
    Duration,
    format_byte_size,
    format_duration,
    parse_duration,
)

if TYPE_CHECKING:
    from flowkit.plugins import Component


class SettingsSource(Protocol):
    """What the settings table reads from: every component of every kind (a plugin manager)."""

    def all_components(self) -> Mapping[str, Mapping[str, Component]]:
        """kind -> name -> component."""
        ...


class PluginSource(SettingsSource, Protocol):
    """A settings source that also resolves components (a plugin manager)."""

    def components(self, kind: str) -> Mapping[str, Component]:
        """Every component of ``kind`` by name."""
        ...

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
        default=10.0, gt=0, le=86400.0, description="How often the poll informer lists interfaces."
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
    network_namespaces: CommaList = Field(
        default_factory=list,
        description="Named network namespaces (under /var/run/netns, names or /regex/, e.g. "
        "/.*/ for all) whose interfaces are traced too, including namespaces created while the "
        "agent runs; their flows' interface is <namespace>/<interface>. Needs "
        "LISTEN_INTERFACES=watch and CAP_SYS_ADMIN (to enter the namespaces).",
    )
    deduper: Literal["none", "firstCome"] = Field(
        default="none",
        description="none: a packet seen on several interfaces (a veth and its bridge) is "
        "reported once per interface. firstCome: such a flow is reported once, by the first "
        "interface that saw it, and its Interfaces/IfDirections (pbflow dup_list) list every "
        "interface and direction it was seen on.",
    )
    deduper_fc_expiry: Duration = Field(
        default=0.0,
        ge=0,
        description="With DEDUPER=firstCome: how long a flow's first interface is remembered "
        "after its last packet (0: twice CACHE_ACTIVE_TIMEOUT).",
    )
    buffers_length: int = Field(
        default=50, gt=0, description="Length of the queues between stages (batches per exporter)."
    )
    cache_max_flows: int = Field(
        default=5000,
        gt=0,
        le=1 << 31,
        description="Flows held per cycle (kernel map size and accounter cache); reaching it "
        "evicts early.",
    )
    cache_active_timeout: Duration = Field(
        default=5.0, gt=0, le=3600.0,
        description="How often flows are evicted and exported (at most 1h).",
    )
    sampling: int = Field(
        default=0, ge=0, le=0xFFFFFFFF, description="Keep 1 packet in N (0 or 1: every packet)."
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
    status_log_period: Duration = Field(
        default=60.0, ge=0, le=86400.0,
        description="How often a status line (interfaces wanted vs traced, flows evicted) is "
        "logged; 0: never.",
    )
    shutdown_timeout: Duration = Field(
        default=5.0, le=3600.0,
        description="How long an orderly stop may take to flush exporters (at most 1h).",
    )

    # Raw values of the plugin settings given in the sources (file, environment, flags), kept
    # for resolve_pipeline; set once by load_config before the configuration is handed out.
    _component_values: Mapping[str, Any] = PrivateAttr(
        default_factory=lambda: MappingProxyType({})
    )

    @field_validator("interfaces", "exclude_interfaces", "network_namespaces")
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

    @model_validator(mode="after")
    def _namespaces_need_watch(self) -> AgentConfig:
        if self.network_namespaces and self.listen_interfaces != "watch":
            raise ValueError(
                "NETWORK_NAMESPACES needs LISTEN_INTERFACES=watch (the poll informer only "
                "lists the agent's own namespace)"
            )
        return self

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
        """Component ``name``'s settings ``model`` validated from the loaded values (its
        defaults for what was not given); :class:`ConfigError` names a bad setting."""
        if model is None:
            return None
        values = {k: v for k, v in self._component_values.items() if k in model.model_fields}
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            raise _to_config_error(exc, _field_table([model]), values) from None

    def selected(self) -> Iterator[tuple[str, str]]:
        """(kind, name) of every component this configuration selects, in pipeline order."""
        from flowkit.components import COMPONENT_KINDS

        for kind in COMPONENT_KINDS.values():
            value: Any = getattr(self, kind.setting)
            for name in value if kind.many else [value]:
                yield kind.name, name

    @classmethod
    def load(
        cls,
        *,
        cli: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
        plugin_manager: PluginSource | None = None,
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

    @property
    def default_text(self) -> str:
        """The default as a user would write it (``5s``, ``64MiB``, ``a,b``), ``required`` or
        ``unset``: what ``--help`` and docs/configuration.md show."""
        return default_text(self.field)


def _validator_names(field: FieldInfo) -> set[str]:
    return {getattr(getattr(m, "func", None), "__name__", "") for m in field.metadata}


def default_text(field: FieldInfo) -> str:
    """A setting's default written as its value would be (see :attr:`SettingInfo.default_text`)."""
    if field.is_required():
        return "required"
    value: Any = field.get_default(call_default_factory=True)
    if value is None or value == "" or value == []:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    validators = _validator_names(field)
    if "parse_duration" in validators:
        return format_duration(float(value))
    if "parse_byte_size" in validators:
        return format_byte_size(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


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


def settings_table(plugin_manager: SettingsSource | None) -> dict[str, SettingInfo]:
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


_BOUNDS = {"greater_than": ("gt", "more than"), "greater_than_equal": ("ge", "at least"),
           "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}


def _is_duration(info: SettingInfo) -> bool:
    return any(getattr(m, "func", None) is parse_duration for m in info.field.metadata)


def _to_config_error(exc: ValidationError, table: Mapping[str, SettingInfo],
                     raw: Mapping[str, Any] | None = None) -> ConfigError:
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
    bound = _BOUNDS.get(str(error.get("type")))
    if bound is not None and name in table and _is_duration(table[name]):
        # A duration out of range: the value as written (not as seconds) and the limit as a
        # duration ("at most 1h", not "less than or equal to 3600").
        limit = (error.get("ctx") or {}).get(bound[0])
        if isinstance(limit, int | float):
            text = (f"{limit / 3600:g}h" if limit >= 3600 and limit % 3600 == 0
                    else format_duration(float(limit)))
            message = f"must be {bound[1]} {text}"
        if raw is not None and name in raw:
            value = raw[name]
    shown = "" if isinstance(value, dict) else f"={value!r}"
    return ConfigError(f"invalid setting {setting}{shown}: {message}", setting)


def _read_file(path: str | os.PathLike[str], table: Mapping[str, SettingInfo]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(f"config file {path} is not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(
            f"config file {path} is nested too deeply; settings are one level of key: value"
        ) from None
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
            out[name] = _utf8(info.env, environ[info.env])
            continue
        for alias in info.env_aliases:
            if alias in environ:
                log.warning("%s is deprecated; use %s", alias, info.env)
                out[name] = _utf8(alias, environ[alias])
                break
    return out


def _utf8(variable: str, value: str) -> str:
    """Environment values arrive with undecodable bytes as surrogates: refuse them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        shown = value.encode("utf-8", "surrogateescape")
        raise ConfigError(
            f"invalid setting {variable}={shown!r}: not UTF-8 text (byte {exc.start})", variable
        ) from None
    return value


def load_config(
    *,
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    plugin_manager: PluginSource | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Merge and validate every source; raise :class:`ConfigError` on the first bad setting.

    ``cli`` maps canonical setting names to raw values (strings as typed); ``environ`` defaults
    to ``os.environ``; ``defaults`` replaces built-in defaults (for commands such as ``top``
    and ``replay`` that need other defaults: every source still wins over them). With a
    plugin manager, plugin settings are known by name and the selection is checked by
    resolving it (:func:`flowkit.pipeline.resolve_pipeline`: component names and the selected
    components' settings), so nothing starts with a bad configuration.
    """
    table = settings_table(plugin_manager)
    merged: dict[str, Any] = dict(defaults or {})
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
        raise _to_config_error(exc, table, core) from None

    config._component_values = MappingProxyType(
        {k: v for k, v in merged.items() if k not in AgentConfig.model_fields}
    )
    if plugin_manager is not None:
        from flowkit.pipeline import resolve_pipeline

        resolve_pipeline(config, plugin_manager)
    return config
