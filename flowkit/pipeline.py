"""Resolution: a parsed configuration plus the installed plugins -> a runnable pipeline.

:mod:`flowkit.config` only parses and validates settings. :func:`resolve_pipeline` looks up the
components the configuration selects (one per kind, several exporters), validates each one's
settings model and returns a frozen :class:`Pipeline` that :class:`~flowkit.agent.Agent` runs.
Every problem is a :class:`~flowkit.config.ConfigError` (exit status 2), raised before anything
is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from flowkit.components import (
    COMPONENT_KINDS,
    ComponentKind,
    ComponentSpec,
    PluginError,
    UnknownComponentError,
)
from flowkit.config import AgentConfig, ConfigError

if TYPE_CHECKING:
    from flowkit.plugins import Component

__all__ = ["ComponentSource", "Pipeline", "PipelineComponent", "resolve_pipeline"]


class ComponentSource(Protocol):
    """Where components come from (a :class:`~flowkit.plugins.PluginManager`)."""

    def components(self, kind: str) -> Mapping[str, Component]:
        """Every component of ``kind`` by name."""
        ...


@dataclass(frozen=True)
class PipelineComponent:
    """One selected component: its spec, validated settings and origin."""

    kind: str
    spec: ComponentSpec
    settings: BaseModel | None
    plugin: str = "local"
    distribution: str = "local"

    @property
    def name(self) -> str:
        """The configured (normalised) name."""
        return self.spec.name

    def describe(self) -> str:
        """``exporter "csv" (distribution flowkit-csv)``: how messages name it."""
        return f'{self.kind} "{self.name}" (distribution {self.distribution})'


@dataclass(frozen=True)
class Pipeline:
    """Everything an agent runs, resolved and validated; immutable."""

    config: AgentConfig
    informer: PipelineComponent
    tracer: PipelineComponent
    accounter: PipelineComponent
    exporters: tuple[PipelineComponent, ...]
    load_messages: tuple[tuple[int, str], ...] = ()
    """What loading the plugins had to say, as ``(level, message)``, for the caller to log once
    logging is set up (see :attr:`flowkit.plugins.PluginManager.messages`)."""

    def components(self) -> tuple[PipelineComponent, ...]:
        """Every component, in pipeline order (informer, tracer, accounter, exporters)."""
        return (self.informer, self.tracer, self.accounter, *self.exporters)


def _resolve_one(
    config: AgentConfig, source: ComponentSource, kind: ComponentKind, name: str
) -> PipelineComponent:
    try:
        available = source.components(kind.name)
    except PluginError as exc:
        raise ConfigError(str(exc)) from None
    found = available.get(name.strip().lower())
    if found is None:
        unknown = UnknownComponentError(kind.name, name, available)
        raise ConfigError(f"invalid setting {kind.env}={name!r}: {unknown}", kind.env)
    component = PipelineComponent(kind.name, found.spec, None, found.plugin, found.distribution)
    missing = found.spec.missing_modules()
    if missing:
        raise ConfigError(
            f"cannot use {component.describe()}: it needs the Python module "
            f"{', '.join(missing)}, which is not installed: {found.install_hint()}",
            kind.env,
        )
    settings = config.settings_for(kind.name, found.spec.name, found.spec.settings_model)
    return dataclasses.replace(component, settings=settings)


def resolve_pipeline(config: AgentConfig, source: ComponentSource) -> Pipeline:
    """The pipeline ``config`` selects from ``source``'s components.

    Raises :class:`~flowkit.config.ConfigError` for an unknown component name, an exporter
    listed twice, or invalid component settings (naming the setting).
    """
    selected: dict[str, list[PipelineComponent]] = {}
    for kind in COMPONENT_KINDS.values():
        value: Any = getattr(config, kind.setting)
        names: list[str] = list(value) if kind.many else [value]
        seen: set[str] = set()
        for name in names:
            component = _resolve_one(config, source, kind, name)
            if component.name in seen:
                raise ConfigError(
                    f"invalid setting {kind.env}: {component.name!r} is listed twice", kind.env
                )
            seen.add(component.name)
            selected.setdefault(kind.name, []).append(component)
    return Pipeline(
        config=config,
        informer=selected["informer"][0],
        tracer=selected["tracer"][0],
        accounter=selected["accounter"][0],
        exporters=tuple(selected.get("exporter", ())),
    )
