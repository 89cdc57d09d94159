"""The plugin manager: loads ``flowkit`` entry points and resolves components by name.

Core code calls the typed methods here (:meth:`PluginManager.components`,
:meth:`PluginManager.get`), never ``pm.hook.*`` directly.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import Distribution, entry_points
from types import ModuleType
from typing import Any

import pluggy

from flowkit import hookspecs
from flowkit.components import (
    COMPONENT_KINDS,
    KINDS,
    ComponentSpec,
    PluginError,
    UnknownComponentError,
)

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "flowkit"
DISABLE_ENV = "FLOWKIT_DISABLE_PLUGINS"

__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "Component",
    "DuplicateComponentError",
    "PluginError",
    "PluginManager",
    "UnknownComponentError",
]


class DuplicateComponentError(PluginError):
    """Two plugins provide a component of the same kind under the same name."""


@dataclass(frozen=True)
class Component:
    """A resolved component: its spec and where it came from."""

    spec: ComponentSpec
    plugin: str
    distribution: str
    version: str

    def install_hint(self) -> str:
        """How to install what the component is missing (``""`` when nothing is)."""
        missing = self.spec.missing_modules()
        if not missing:
            return ""
        if self.spec.extra:
            return f"pip install '{self.distribution}[{self.spec.extra}]'"
        return f"install the Python module(s) {', '.join(missing)}"


DISTRIBUTION = "flowkit-ebpf"
"""The name flowkit is published under (the import package is ``flowkit``)."""


def normalise(name: str) -> str:
    """A distribution or entry-point name compared the PEP 503 way (``Acme_Sink`` is
    ``acme-sink``)."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _disabled_from_env() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _hook_names() -> list[str]:
    return sorted(name for name in dir(hookspecs) if name.startswith("flowkit_"))


def _validation_message(plugin: str, distribution: str, exc: pluggy.PluginValidationError) -> str:
    """One line for pluggy's complaint about a plugin's hook implementation."""
    text = str(exc)
    match = re.search(r"unknown hook '([^']+)'", text)
    where = f"plugin {plugin!r} ({distribution})"
    if match:
        hook = match.group(1)
        close = difflib.get_close_matches(hook, _hook_names(), n=1)
        hint = f"rename it to {close[0]}" if close else \
            f"flowkit's hooks are {', '.join(_hook_names())}"
        return f"{where} implements {hook!r}, which is not a flowkit hook: {hint}"
    match = re.search(r"hook '?([a-z_]+)'?", text)
    hook = match.group(1) if match else "a hook"
    return (f"{where}: its {hook} implementation does not match the hook specification "
            f"({text.splitlines()[-1].strip()}); see docs/plugins.md")


class PluginManager:
    """Registers plugins and resolves their components.

    :param load_entrypoints: load every ``flowkit`` entry point (default); tests pass ``False``
        and register plugins explicitly.
    :param disabled: entry-point or distribution names to skip (default: FLOWKIT_DISABLE_PLUGINS).
    """

    def __init__(
        self, load_entrypoints: bool = True, disabled: Iterable[str] | None = None
    ) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._origins: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)
        self.disabled = set(disabled) if disabled is not None else _disabled_from_env()
        self._disabled_normalised = {normalise(name) for name in self.disabled}
        self._cache: dict[str, dict[str, Component]] = {}
        self.messages: list[tuple[int, str]] = []
        """What loading had to say (disabled plugins, unknown names), as ``(level, message)``:
        the CLI logs them once logging is set up (see :meth:`log_messages`)."""
        if load_entrypoints:
            self.load_entrypoints()
            self.check_builtins()

    # -- registration -----------------------------------------------------------------------
    def is_disabled(self, entry_point: str, distribution: str) -> bool:
        """Whether FLOWKIT_DISABLE_PLUGINS names the entry point or its distribution (names
        compared the PEP 503 way: case, ``-``, ``_`` and ``.`` do not matter)."""
        return bool({normalise(entry_point), normalise(distribution)}
                    & self._disabled_normalised)

    def load_entrypoints(self) -> None:
        """Load and register every entry point of the ``flowkit`` group not disabled."""
        seen: set[str] = set()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist: Distribution | None = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "unknown"
            dist_version = dist.version if dist is not None else ""
            seen.update((normalise(ep.name), normalise(dist_name)))
            if self.is_disabled(ep.name, dist_name):
                self._note(logging.INFO, f"plugin {ep.name!r} ({dist_name}) disabled by "
                           f"{DISABLE_ENV}")
                continue
            if self._pm.has_plugin(ep.name):
                other = self._origins.get(ep.name, ("?", ""))[0]
                raise PluginError(
                    f"two distributions register the flowkit entry point {ep.name!r}: "
                    f"{other} and {dist_name}; uninstall one of them"
                )
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"cannot load plugin {ep.name!r} from {dist_name}: {exc}"
                ) from exc
            self.register(plugin, name=ep.name, distribution=dist_name, version=dist_version)
        unknown = sorted(n for n in self.disabled if normalise(n) not in seen)
        if unknown:
            self._note(logging.WARNING,
                       f"{DISABLE_ENV} names {', '.join(repr(n) for n in unknown)}, which is "
                       "neither an installed flowkit plugin (entry point) nor a distribution; "
                       "see flowkit-agent plugins")

    def _note(self, level: int, message: str) -> None:
        self.messages.append((level, message))
        log.debug("%s", message)

    def log_messages(self, logger: logging.Logger | None = None) -> None:
        """Log what loading had to say (call once logging is configured)."""
        for level, message in self.messages:
            (logger or log).log(level, "%s", message)

    def register(
        self,
        plugin: ModuleType | object,
        name: str | None = None,
        distribution: str = "local",
        version: str = "",
    ) -> str:
        """Register a plugin object or module; return the name it was registered under.

        A hook implementation that does not match flowkit's hooks (a misspelled name, wrong
        arguments) raises :class:`PluginError` naming the plugin, the hook and what to change.
        """
        shown = str(name or getattr(plugin, "__name__", None) or repr(plugin))
        try:
            registered = self._pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(_validation_message(shown, distribution, exc)) from None
        if registered is None:
            raise PluginError(f"plugin {name!r} was not registered (blocked or already present)")
        self._origins[registered] = (distribution, version)
        self._cache.clear()
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self._pm.unregister(name=registered)
            self._origins.pop(registered, None)
            raise PluginError(_validation_message(shown, distribution, exc)) from None
        return registered

    def check_builtins(self) -> None:
        """Fail clearly when flowkit's own components are missing (a broken install)."""
        if normalise(DISTRIBUTION) in self._disabled_normalised:  # all of flowkit is disabled
            return
        for kind, info in COMPONENT_KINDS.items():
            wanted = {name for name, ep in info.builtins.items() if ep not in self.disabled}
            missing = wanted - set(self.components(kind))
            if missing:
                raise PluginError(
                    f"flowkit's built-in {kind} plugin(s) {', '.join(sorted(missing))} are not "
                    f"installed: reinstall flowkit (pip install --force-reinstall {DISTRIBUTION})"
                )

    # -- resolution -------------------------------------------------------------------------
    def components(self, kind: str) -> dict[str, Component]:
        """All components of ``kind`` by name, sorted; duplicates raise with both origins."""
        info = COMPONENT_KINDS.get(kind)
        if info is None:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")
        cached = self._cache.get(kind)
        if cached is not None:
            return cached
        spec_type = info.spec_type
        found: dict[str, Component] = {}
        hook = getattr(self._pm.hook, info.hook)
        for impl in hook.get_hookimpls():
            distribution, version = self._origins.get(impl.plugin_name, ("local", ""))
            try:
                result: Any = impl.function()
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} ({distribution}) failed in {info.hook}: {exc}"
                ) from exc
            if result is not None and (isinstance(result, ComponentSpec | str | bytes | dict)
                                       or not isinstance(result, Iterable)):
                raise PluginError(
                    f"plugin {impl.plugin_name!r} ({distribution}) returned "
                    f"{type(result).__name__} from {info.hook}; return a list of "
                    f"{spec_type.__name__}: [{spec_type.__name__}(...)]"
                )
            for spec in result or ():
                if not isinstance(spec, spec_type):
                    raise PluginError(
                        f"plugin {impl.plugin_name!r} ({distribution}) returned {spec!r} from "
                        f"{info.hook}; expected {spec_type.__name__} instances"
                    )
                previous = found.get(spec.name)
                if previous is not None:
                    raise DuplicateComponentError(
                        f"{kind} {spec.name!r} is provided twice: by {previous.distribution} "
                        f"(plugin {previous.plugin!r}) and by {distribution} (plugin "
                        f"{impl.plugin_name!r}); uninstall one or disable it with "
                        f"{DISABLE_ENV}=<plugin>"
                    )
                found[spec.name] = Component(spec, impl.plugin_name, distribution, version)
        resolved = dict(sorted(found.items()))
        self._cache[kind] = resolved
        return resolved

    def get(self, kind: str, name: str) -> ComponentSpec:
        """The spec of component ``name`` of ``kind``; unknown names raise with the choices."""
        available = self.components(kind)
        component = available.get(name.strip().lower())
        if component is None:
            raise UnknownComponentError(kind, name, available)
        return component.spec

    def all_components(self) -> dict[str, dict[str, Component]]:
        """Every component of every kind (kind -> name -> component)."""
        return {kind: self.components(kind) for kind in KINDS}

    def describe(self) -> list[dict[str, Any]]:
        """What ``flowkit-agent plugins`` prints: per distribution, its components per kind."""
        by_dist: dict[str, dict[str, Any]] = {}
        for kind, comps in self.all_components().items():
            for name, comp in comps.items():
                entry = by_dist.setdefault(
                    comp.distribution,
                    {
                        "distribution": comp.distribution,
                        "version": comp.version,
                        "plugins": set(),
                        "components": {k: [] for k in KINDS},
                    },
                )
                entry["plugins"].add(comp.plugin)
                described: dict[str, Any] = {"name": name, "description": comp.spec.description}
                missing = comp.spec.missing_modules()
                if missing:
                    described["missing"] = missing
                    described["install"] = comp.install_hint()
                entry["components"][kind].append(described)
        out = []
        for dist in sorted(by_dist):
            entry = by_dist[dist]
            entry["plugins"] = sorted(entry["plugins"])
            out.append(entry)
        return out
