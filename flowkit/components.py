"""What plugins provide: component specs (the records hooks return) and component protocols.

A plugin returns specs from its hooks (see :mod:`flowkit.hookspecs`). Each spec has a ``name``
(what users put in EXPORT, TRACER, ACCOUNTER or LISTEN_INTERFACES), a ``factory`` called with a
:class:`ComponentContext`, and an optional pydantic ``settings_model`` whose fields become settings
(environment variable = field name upper-cased, YAML key = field name, flag = ``--field-name``).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

if TYPE_CHECKING:
    from flowkit.accounts import ExporterAccount
    from flowkit.config import AgentConfig
    from flowkit.metrics import Metrics
    from flowkit.model import FlowArray, FlowBatch

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")


class InvalidSpecError(ValueError):
    """A plugin returned a malformed spec."""


class PluginError(Exception):
    """A plugin could not be loaded or provides something invalid."""


class ComponentStartError(Exception):
    """A component's factory raised. One line names the component, its distribution and the
    cause; :attr:`exit_status` is 2 when the cause is a bad setting (the factory raised
    ``ValueError``) and 1 for a runtime failure (anything else)."""

    def __init__(self, what: str, cause: BaseException) -> None:
        text = str(cause).strip() or type(cause).__name__
        if isinstance(cause, ImportError) and cause.name:
            text = f"{text} (a dependency of the plugin is not installed)"
        super().__init__(f"cannot start {what}: {text}")
        self.cause = cause
        self.exit_status = 2 if isinstance(cause, ValueError) else 1


class UnknownComponentError(PluginError):
    """A configured component name is not provided by any plugin."""

    def __init__(self, kind: str, name: str, available: Iterable[str]) -> None:
        names = ", ".join(sorted(available)) or "(none)"
        super().__init__(f"unknown {kind} {name!r}; available: {names}")
        self.kind, self.name = kind, name


@dataclass(frozen=True)
class ComponentSpec:
    """Base record for everything a component hook returns.

    The name is normalised (stripped, lower-cased) and must match ``[a-z0-9][a-z0-9_.+-]*``.
    """

    kind: ClassVar[str] = "component"

    name: str
    factory: Callable[[ComponentContext], Any]
    settings_model: type[BaseModel] | None = None
    description: str = ""
    capabilities: tuple[str, ...] = ()
    """Linux capabilities the component needs (e.g. ``("CAP_BPF", "CAP_NET_ADMIN")``); the agent
    checks them before starting anything and names the missing ones."""
    requires: tuple[str, ...] = ()
    """Python modules the factory imports (``("confluent_kafka",)``): a missing one is reported,
    with how to install it, before anything starts, and shown by ``flowkit-agent plugins``."""
    extra: str = ""
    """The extra of the plugin's distribution that installs :attr:`requires` (``"kafka"`` gives
    ``pip install 'your-dist[kafka]'``)."""

    def missing_modules(self) -> list[str]:
        """The modules of :attr:`requires` that cannot be imported here."""
        missing = []
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                missing.append(module)
        return missing

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise InvalidSpecError(f"{self.kind} name must be a string, got {self.name!r}")
        normalised = self.name.strip().lower()
        if not _NAME_RE.match(normalised):
            raise InvalidSpecError(
                f"invalid {self.kind} name {self.name!r}: use lower-case letters, digits, '_', "
                "'-', '.' and '+', starting with a letter or digit"
            )
        object.__setattr__(self, "name", normalised)
        if not callable(self.factory):
            raise InvalidSpecError(f"{self.kind} {normalised!r}: factory is not callable")
        if self.settings_model is not None and not (
            isinstance(self.settings_model, type) and issubclass(self.settings_model, BaseModel)
        ):
            raise InvalidSpecError(
                f"{self.kind} {normalised!r}: settings_model must be a pydantic BaseModel subclass"
            )


@dataclass(frozen=True)
class InformerSpec(ComponentSpec):
    """An interface informer, selected by LISTEN_INTERFACES; the factory returns an Informer."""

    kind: ClassVar[str] = "informer"


@dataclass(frozen=True)
class TracerSpec(ComponentSpec):
    """A flow tracer; selected by TRACER. Factory returns a :class:`Tracer`."""

    kind: ClassVar[str] = "tracer"


@dataclass(frozen=True)
class AccounterSpec(ComponentSpec):
    """An accounter; selected by ACCOUNTER. Factory returns an :class:`Accounter`."""

    kind: ClassVar[str] = "accounter"


@dataclass(frozen=True)
class ExporterSpec(ComponentSpec):
    """A flow exporter, selected by EXPORT (comma-separated); the factory returns an Exporter."""

    kind: ClassVar[str] = "exporter"




@dataclass
class ComponentContext:
    """Everything a factory gets.

    ``settings`` is the validated instance of the spec's ``settings_model`` (``None`` when the
    spec has none). ``tracer`` is set for accounters: the tracer they drain. ``account`` is set
    for exporters: where an exporter with ``accounts_delivery = True`` reports the flows it
    delivered and dropped (see :mod:`flowkit.accounts`).
    New attributes may be added; factories should only read what they need.
    """

    config: AgentConfig
    settings: Any
    metrics: Metrics
    stop_event: threading.Event = field(default_factory=threading.Event)
    """Informers, tracers, accounters: set when the agent stops. Exporters: set once ``export``
    has returned for the last batch of the run, or when the stop deadline passes first (see "The
    stop contract" in docs/plugins.md): finish what you hold, start no new long waits."""
    tracer: Tracer | None = None
    stopper: Callable[[], None] | None = None
    account: ExporterAccount | None = None

    def request_stop(self) -> None:
        """Ask the agent to stop in order (e.g. the stdout exporter when its reader is gone)."""
        if self.stopper is not None:
            self.stopper()
        else:
            self.stop_event.set()


class ExporterFailed(Exception):
    """Raised from ``export`` when the sink can never work again (e.g. ENOSPC on stdout).

    The agent counts the batch, and every later one, as dropped with ``reason`` and stops;
    ``exit_status`` is what ``flowkit-agent`` exits with (0 for an expected end such as the
    reader of standard output going away, 1 for a failure). ``str()`` is the one line logged.
    """

    def __init__(self, message: str, *, reason: str = "error", exit_status: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_status = exit_status


@dataclass(frozen=True)
class Interface:
    """A network interface as informers report it."""

    name: str
    index: int
    addresses: tuple[str, ...] = ()
    mac: str = ""
    netns: str | None = None
    """Name of the network namespace (under /var/run/netns); ``None``: the agent's own."""
    netns_id: int = 0
    """Id of that namespace in flows (16 bits, :func:`flowkit.netns.netns_id`); 0: the own."""

    @property
    def key(self) -> int:
        """Unique across namespaces: ``netns_id << 32 | index`` (the index in the agent's own)."""
        return (self.netns_id << 32) | self.index

    @property
    def qualified_name(self) -> str:
        """``<namespace>/<name>`` in another namespace, else ``name``: the flows' interface."""
        return f"{self.netns}/{self.name}" if self.netns else self.name

    def ip_addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The interface addresses as ``ipaddress`` objects (scope suffixes removed)."""
        out = []
        for raw in self.addresses:
            try:
                out.append(ipaddress.ip_address(raw.split("%", 1)[0]))
            except ValueError:
                continue
        return out


@dataclass(frozen=True)
class InterfaceEvent:
    """An interface appeared (``added``) or went away (``deleted``)."""

    type: Literal["added", "deleted"]
    interface: Interface


@runtime_checkable
class Informer(Protocol):
    """Reports interfaces: first every existing one as ``added``, then changes."""

    def events(self, stop: threading.Event) -> Iterator[InterfaceEvent]:
        """Yield events until ``stop`` is set; must return within about a second of it, or, for
        an informer that has a ``wake()`` method (called by the agent right after it sets
        ``stop``), at once when woken."""
        ...

    def close(self) -> None:
        """Release sockets and threads."""
        ...


@runtime_checkable
class Tracer(Protocol):
    """Observes packets on interfaces and keeps per-flow aggregates.

    ``read_aggregates`` and ``read_events`` return arrays of
    :data:`flowkit.model.RECORD_DTYPE` with CLOCK_MONOTONIC times. Tracers backed by eBPF also
    expose ``kernel_maps`` (a :class:`KernelMaps`) so that the native accounter can drain them
    in C; others return ``None`` there. ``interface_names`` names interfaces the informer does
    not know (a synthetic one, say).
    """

    def start(self) -> None:
        """Load whatever is needed; raise a clear error if it cannot."""
        ...

    def attach(self, interface: Interface) -> None:
        """Start observing ``interface``."""
        ...

    def detach(self, interface: Interface) -> None:
        """Stop observing ``interface`` and release everything held for it."""
        ...

    def read_aggregates(self) -> FlowArray:
        """Take (and reset) the aggregated flows, without losing packets that arrive meanwhile."""
        ...

    def read_events(self, timeout: float) -> FlowArray:
        """Wait up to ``timeout`` seconds for single-packet (or partial) records and return them."""
        ...

    @property
    def kernel_maps(self) -> KernelMaps | None:
        """File descriptors for native draining, or ``None``."""
        ...

    def interface_names(self) -> Mapping[int, str]:
        """Names of the interface indexes this tracer reports records for (the agent adds what
        the informer reported; return ``{}`` if there is nothing more to say)."""
        ...

    def close(self) -> None:
        """Detach from every interface and release every kernel object. Idempotent."""
        ...


@dataclass(frozen=True)
class KernelMaps:
    """The kernel objects of the flowkit eBPF program, for the native accounter.

    ``selector_fd`` is an ARRAY_OF_MAPS with one slot (key 0) holding the active flow map;
    ``flow_map_fds`` are the two per-CPU hash maps the accounter alternates between;
    ``ringbuf_fd`` carries single-packet records when the active map is full.
    ``extra_selector_fd`` and ``extra_map_fds`` are the same pair for the optional feature data
    (drops, RTT, DNS: ``struct fk_flow_extra``), or -1 when no feature is on.
    ``cache_selector_fd`` and ``cache_map_fds`` are the same pair for the program's per-CPU flow
    caches (``cache_a``/``cache_b``, used when the object's ``flow_cache`` setting is 1), or -1.
    """

    selector_fd: int
    flow_map_fds: tuple[int, int]
    ringbuf_fd: int
    counters_fd: int
    max_entries: int
    ncpus: int
    extra_selector_fd: int = -1
    extra_map_fds: tuple[int, int] = (-1, -1)
    cache_selector_fd: int = -1
    cache_map_fds: tuple[int, int] = (-1, -1)


@runtime_checkable
class Accounter(Protocol):
    """Turns tracer records into FlowBatches.

    Semantics (NetObserv's): records are merged by flow key; everything is evicted every
    CACHE_ACTIVE_TIMEOUT (:meth:`evict`), and the cache is evicted early when it holds
    CACHE_MAX_FLOWS flows (:meth:`poll` then returns the batch).

    Optional: an accounter whose ``wakeable`` attribute is true and that has a ``wake()``
    method (ending the current or next :meth:`poll` at once, from another thread) is polled
    with a timeout that lasts until the next eviction is due; any other one is polled in slices
    of at most 0.2 s, so that the agent sees its stop in time.
    """

    def poll(self, timeout: float) -> FlowBatch | None:
        """Wait up to ``timeout`` for tracer events and aggregate them; return a batch if the
        cache filled up, else ``None``."""
        ...

    def evict(self) -> FlowBatch:
        """Take everything the tracer aggregated plus the cache, as one batch."""
        ...

    def close(self) -> None:
        """Release buffers."""
        ...


@runtime_checkable
class Exporter(Protocol):
    """Sends batches somewhere. Each exporter runs on its own thread behind a bounded queue.

    ``export`` may block (the agent's worker thread absorbs it) but must honour ``shutdown``.
    Errors should be retried/counted inside the exporter; an exception escaping ``export`` is
    logged and counted by the agent, and the batch is dropped.
    """

    def export(self, batch: FlowBatch) -> None:
        """Send one batch (valid only during the call: copy what you keep)."""
        ...

    def flush(self, timeout: float) -> bool:
        """Push out anything buffered; return False if that did not finish in time."""
        ...

    def shutdown(self, timeout: float) -> None:
        """Flush and release resources; interrupt retries."""
        ...


@dataclass(frozen=True)
class ComponentKind:
    """Everything that defines one kind of component, in one place.

    ``setting`` is the :class:`~flowkit.config.AgentConfig` field that selects components of
    this kind (``many``: a comma-separated list of them); ``builtins`` maps the names flowkit's
    own distribution must provide to the entry point that provides each.
    """

    name: str
    spec_type: type[ComponentSpec]
    hook: str
    setting: str
    protocol: type
    builtins: Mapping[str, str]
    many: bool = False

    @property
    def env(self) -> str:
        """The environment variable of :attr:`setting` (what error messages name)."""
        return self.setting.upper()


COMPONENT_KINDS: Mapping[str, ComponentKind] = {
    kind.name: kind
    for kind in (
        ComponentKind("informer", InformerSpec, "flowkit_informers", "listen_interfaces",
                      Informer, {"poll": "poll", "watch": "watch"}),
        ComponentKind("tracer", TracerSpec, "flowkit_tracers", "tracer", Tracer,
                      {"synthetic": "synthetic", "ebpf": "ebpf"}),
        ComponentKind("accounter", AccounterSpec, "flowkit_accounters", "accounter", Accounter,
                      {"python": "python-accounter", "native": "native-accounter"}),
        ComponentKind("exporter", ExporterSpec, "flowkit_exporters", "export", Exporter,
                      {"stdout": "stdout"}, many=True),
    )
}
"""The four component kinds, in pipeline order. Hook specs, the plugin manager, settings
resolution, the agent and the docs all derive from this table."""

KINDS: tuple[str, ...] = tuple(COMPONENT_KINDS)
