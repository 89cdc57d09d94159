"""The ``ebpf`` tracer (the default TRACER): flowkit's eBPF program on real interfaces.

One object (``flowkit/bpf/flowkit.bpf.o``, source ``csrc/bpf/flowkit.bpf.c``) is loaded once
with the agent's settings written into its ``.rodata`` (SAMPLING, DIRECTION) and its flow maps
sized by CACHE_MAX_FLOWS; its ``flowkit_ingress`` / ``flowkit_egress`` programs are then
attached to every traced interface (see :mod:`flowkit.ebpf.attach` and ``docs/datapath.md``).

The tracer exposes the kernel objects as :class:`~flowkit.components.KernelMaps`, which the
``native`` accounter drains in C; :meth:`EbpfTracer.read_aggregates` and
:meth:`EbpfTracer.read_events` give the same records to Python accounters.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, field_validator

from flowkit import hookimpl
from flowkit.components import ComponentContext, Interface, KernelMaps, TracerSpec
from flowkit.filters import parse_filter_rules
from flowkit.settings_types import Bool

if TYPE_CHECKING:
    from flowkit.accounting import KernelDrainer, RingBufferReader
    from flowkit.config import AgentConfig
    from flowkit.ebpf import CollectionSpec
    from flowkit.ebpf.attach import Attacher
    from flowkit.ebpf.memory import MemoryPlan
    from flowkit.metrics import Metrics
    from flowkit.model import FlowArray

log = logging.getLogger(__name__)

PROGRAM_INGRESS = "flowkit_ingress"
PROGRAM_EGRESS = "flowkit_egress"
MAP_FLOWS = ("flows_a", "flows_b")
MAP_SELECTOR = "flow_selector"
MAP_EVENTS = "flow_events"
MAP_COUNTERS = "counters"
PROGRAM_DROPS = "flowkit_drops"  # tp_btf/kfree_skb (ENABLE_PKT_DROPS)
PROGRAM_RTT = "flowkit_rtt"  # tp_btf/tcp_probe (ENABLE_RTT)
MAP_CACHES = ("cache_a", "cache_b")  # per-CPU flow caches, drained with the flow maps
MAP_CACHE_SELECTOR = "cache_selector"
MAP_EXTRAS = ("extras_a", "extras_b")
MAP_EXTRA_SELECTOR = "extra_selector"
MAP_DNS = "dns_queries"
MAP_FILTERS = "filter_rules"
MAX_RINGBUF_SIZE = 1 << 30
"""Largest ring buffer accepted (the kernel's own limit is just under 4 GiB)."""


def default_object_path() -> Path:
    """The eBPF object shipped with flowkit."""
    return Path(str(resources.files("flowkit") / "bpf" / "flowkit.bpf.o"))


class EbpfTracerSettings(BaseModel):
    """Settings of the ``ebpf`` tracer."""

    tc_attach_mode: Literal["tcx", "tc", "any"] = Field(
        default="any",
        description="How programs are attached: tcx (BPF links, Linux >= 6.6), tc (clsact qdisc "
        "+ direct-action filters) or any (tcx when the kernel has it, else tc).",
    )
    tc_filter_priority: int = Field(
        default=1,
        ge=1,
        le=0xFFFF,
        description="Priority of flowkit's tc filters in tc mode (1 runs before filters added "
        "with tc's default priorities).",
    )
    ebpf_precise_timestamps: Bool = Field(
        default=False,
        description="Read the precise monotonic clock for every packet. By default packets of "
        "an existing flow use the coarse clock (one scheduler tick of resolution, ~20 ns less "
        "per packet); flow starts are always precise.",
    )
    ebpf_flow_cache: Bool = Field(
        default=True,
        description="Per-CPU flow cache in the eBPF program: packets of a flow that holds its "
        "cache slot skip the flow map's hash lookup (60-70 ns less per packet here); a packet "
        "of another flow first writes the slot back to the map, which costs more than no "
        "cache when consecutive packets on a CPU keep changing among more flows than its 256 "
        "slots. Counts are exact either way.",
    )
    ebpf_ringbuf_size: int = Field(
        default=1 << 20,
        ge=1 << 12,
        description="Bytes of the ring buffer that carries packets while the flow map is full "
        "(a power of two, at least the page size).",
    )
    ebpf_object: str = Field(
        default="",
        description="Path of the eBPF object to load (default: the one shipped with flowkit).",
    )
    ebpf_memory_limit: int = Field(
        default=0,
        ge=0,
        description="Most host memory, in bytes, the eBPF maps may take (flow maps sized by "
        "CACHE_MAX_FLOWS, per possible CPU, feature maps, and the ring buffer); a larger "
        "configuration is refused at start. 0: a quarter of MemAvailable.",
    )
    enable_pkt_drops: Bool = Field(
        default=False,
        description="Packet drops: a tp_btf/kfree_skb program adds every packet the kernel drops "
        "to its flow (PktDropBytes, PktDropPackets, and the latest drop's TCP flags, TCP state "
        "and SKB_DROP_REASON cause); a dropped packet of an unknown flow creates it.",
    )
    enable_rtt: Bool = Field(
        default=False,
        description="TCP round-trip time: a tp_btf/tcp_probe program (top of "
        "tcp_rcv_established) records the socket's smoothed RTT on the flow of each received "
        "segment; the largest of the period is exported (TimeFlowRttNs).",
    )
    enable_dns_tracking: Bool = Field(
        default=False,
        description="DNS tracking on the TC path: queries over UDP and TCP on DNS_TRACKING_PORT "
        "are remembered, and flows of DNS messages carry DnsId, DnsFlags, the response code, "
        "DnsLatencyMs (responses), DnsErrno and DnsName.",
    )
    dns_tracking_port: int = Field(
        default=53, ge=1, le=0xFFFF,
        description="Port of the DNS traffic ENABLE_DNS_TRACKING tracks (either direction).",
    )
    flow_filter_rules: str = Field(
        default="",
        description="In-kernel flow filters: a JSON list of rules (keys direction, ip_cidr, "
        "protocol, source_port, destination_port, port and their _range/s forms, icmp_type, "
        "icmp_code, peer_ip, peer_cidr, tcp_flags, drops, action, sample; see "
        "docs/datapath.md). Once set, only packets a rule accepts are kept.",
    )

    @field_validator("flow_filter_rules", mode="before")
    @classmethod
    def _filter_rules(cls, value: Any) -> Any:
        from flowkit.filters import parse_filter_rules

        if isinstance(value, list):  # a YAML list of rules
            value = json.dumps(value)
        if isinstance(value, str):
            parse_filter_rules(value)  # raises FilterRuleError (a ValueError): exit 2
        return value

    @property
    def features_enabled(self) -> bool:
        """Whether a feature keeping data in the kernel feature maps is on."""
        return self.enable_pkt_drops or self.enable_rtt or self.enable_dns_tracking

    @field_validator("ebpf_ringbuf_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError(f"EBPF_RINGBUF_SIZE must be a power of two like 1048576, not {value}")
        if value > MAX_RINGBUF_SIZE:
            raise ValueError(f"EBPF_RINGBUF_SIZE can be at most {MAX_RINGBUF_SIZE} (1 GiB)")
        return value


class EbpfTracer:
    """Loads flowkit's eBPF object and attaches it to interfaces (implements ``Tracer``)."""

    def __init__(
        self,
        settings: EbpfTracerSettings,
        *,
        cache_max_flows: int = 5000,
        sampling: int = 0,
        direction: Literal["both", "ingress", "egress"] = "both",
        metrics: Metrics | None = None,
        network_namespaces: bool = False,
    ) -> None:
        self.settings = settings
        self.cache_max_flows = cache_max_flows
        self.sampling = sampling
        self.direction = direction
        self._metrics = metrics
        self.network_namespaces = network_namespaces
        self._collection: Any = None
        self._attacher: Attacher | None = None
        self._kernel_maps: KernelMaps | None = None
        self._drainer: KernelDrainer | None = None
        self._reader: RingBufferReader | None = None
        self._names: dict[int, str] = {}
        self._trace_links: list[int] = []
        self._lock = threading.Lock()
        self._closed = False
        self._spec: CollectionSpec | None = None
        self._programs: list[str] = []
        self._rules: Any = None

    @classmethod
    def from_config(
        cls, config: AgentConfig, settings: EbpfTracerSettings, metrics: Metrics | None = None
    ) -> EbpfTracer:
        """A tracer for the agent's SAMPLING, DIRECTION and CACHE_MAX_FLOWS."""
        return cls(
            settings,
            cache_max_flows=config.cache_max_flows,
            sampling=config.sampling,
            direction=config.direction,
            metrics=metrics,
            network_namespaces=bool(config.network_namespaces),
        )

    # -- sizing -------------------------------------------------------------------------------
    def collection_spec(self) -> CollectionSpec:
        """The object's spec with this tracer's settings applied (nothing created yet)."""
        from flowkit.ebpf import CollectionSpec, LoaderError

        if self._spec is not None:
            return self._spec
        path = Path(self.settings.ebpf_object) if self.settings.ebpf_object else (
            default_object_path()
        )
        try:
            spec = CollectionSpec.from_file(path)
        except OSError as exc:
            raise LoaderError(f"cannot read the eBPF object {path}: {exc.strerror}") from None
        try:
            spec.variables["sampling"].set(self.sampling if self.sampling > 1 else 0)
            spec.variables["trace_ingress"].set(
                1 if self.direction in ("both", "ingress") else 0)
            spec.variables["trace_egress"].set(1 if self.direction in ("both", "egress") else 0)
            spec.variables["precise_timestamps"].set(
                1 if self.settings.ebpf_precise_timestamps else 0)
            if self.network_namespaces:
                self._enable_netns(spec)
            for name in MAP_FLOWS:
                spec.maps[name].max_entries = self.cache_max_flows
            spec.maps[MAP_EVENTS].max_entries = self.settings.ebpf_ringbuf_size
            if "flow_cache" in spec.variables:
                # Drained by KernelDrainer with the maps (kernel_maps names the caches).
                spec.variables["flow_cache"].set(1 if self.settings.ebpf_flow_cache else 0)
            settings = self.settings
            rules = parse_filter_rules(settings.flow_filter_rules)
            features = settings.features_enabled
            spec.variables["enable_dns"].set(1 if settings.enable_dns_tracking else 0)
            spec.variables["dns_port"].set(settings.dns_tracking_port)
            spec.variables["filter_enabled"].set(1 if rules else 0)
            # Feature maps cost memory only when a feature is on (1 entry otherwise).
            for name in MAP_EXTRAS:
                spec.maps[name].max_entries = self.cache_max_flows if features else 1
            spec.maps[MAP_DNS].max_entries = (
                self.cache_max_flows if settings.enable_dns_tracking else 1
            )
            spec.maps[MAP_FILTERS].max_entries = max(1, len(rules.entries))
            if settings.enable_pkt_drops or settings.enable_rtt:
                # The tracing programs see every namespace: they report the agent's own (or,
                # with NETWORK_NAMESPACES, every one, by name).
                from flowkit.netns import own_inode

                spec.variables["host_netns_inum"].set(own_inode())
        except KeyError as exc:
            raise LoaderError(f"{path} is not flowkit's eBPF object: it has no {exc}") from None
        # The object also holds the replay programs (flowkit_replay_*): not needed here.
        programs = [PROGRAM_INGRESS, PROGRAM_EGRESS]
        if self.settings.enable_pkt_drops:
            programs.append(PROGRAM_DROPS)
        if self.settings.enable_rtt:
            programs.append(PROGRAM_RTT)
        self._programs, self._rules = programs, rules
        self._spec = spec
        return spec

    def memory_plan(self) -> MemoryPlan:
        """What the maps will take once created, computed from the object's own sizes."""
        from flowkit.ebpf.memory import collection_memory

        return collection_memory(self.collection_spec())

    def memory_limit(self) -> tuple[int, str]:
        """The most host memory the maps may take, and where that bound comes from."""
        from flowkit.ebpf.memory import mem_available

        if self.settings.ebpf_memory_limit:
            return self.settings.ebpf_memory_limit, "EBPF_MEMORY_LIMIT"
        available = mem_available()
        if available is None:
            return 1 << 62, "no limit: MemAvailable unknown"
        return available // 4, "a quarter of MemAvailable; set EBPF_MEMORY_LIMIT to change it"

    def describe_memory(self) -> str:
        """One line: what the maps will take and what one flow costs."""
        from flowkit.ebpf.memory import format_bytes

        plan = self.memory_plan()
        # Every map sized by CACHE_MAX_FLOWS (the feature maps take 1 entry when off).
        sized = (*MAP_FLOWS, *MAP_EXTRAS, MAP_DNS)
        per_flow = sum(plan.host_maps.get(name, 0) for name in sized) / max(
            1, self.cache_max_flows)
        return (
            f"{format_bytes(plan.host)} of kernel memory for the eBPF maps (flow maps: "
            f"CACHE_MAX_FLOWS={self.cache_max_flows} x {per_flow:.0f} bytes per flow with "
            f"{plan.ncpus} possible CPUs; ring buffer: EBPF_RINGBUF_SIZE="
            f"{self.settings.ebpf_ringbuf_size})"
        )

    def preflight(self) -> None:
        """Refuse (``ConfigError``, exit status 2) sizes the host cannot afford, before
        anything is created in the kernel."""
        from flowkit.config import ConfigError
        from flowkit.ebpf.memory import format_bytes

        plan = self.memory_plan()
        limit, source = self.memory_limit()
        if plan.host > limit:
            ring = plan.maps.get(MAP_EVENTS, 0)
            setting = (
                f"EBPF_RINGBUF_SIZE={self.settings.ebpf_ringbuf_size}"
                if ring > plan.accounted - ring
                else f"CACHE_MAX_FLOWS={self.cache_max_flows}"
            )
            raise ConfigError(
                f"invalid setting {setting}: would take "
                f"{self.describe_memory()}, more than the limit of {format_bytes(limit)} "
                f"({source})",
                setting.split("=", 1)[0],
            )

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Load the object, create the maps and remove stale filters of a killed agent."""
        from flowkit.ebpf.attach import Attacher
        from flowkit.native.libbpf import num_possible_cpus

        if self._collection is not None:
            return
        self.preflight()
        spec = self.collection_spec()
        log.info("ebpf tracer: %s", self.describe_memory())
        settings = self.settings
        rules = self._rules
        features = settings.features_enabled
        programs = self._programs
        collection = spec.load(programs=programs)
        try:
            for key, value in rules.map_entries():
                collection.maps[MAP_FILTERS].update(key, value)
            for name in programs[2:]:
                self._trace_links.append(_attach_tracing(collection.programs[name].fd, name))
            ingress = collection.programs[PROGRAM_INGRESS].fd
            egress = collection.programs[PROGRAM_EGRESS].fd
            attacher = Attacher(
                ingress if self.direction in ("both", "ingress") else None,
                egress if self.direction in ("both", "egress") else None,
                self.settings.tc_attach_mode,
                tc_priority=self.settings.tc_filter_priority,
            )
            removed = attacher.remove_stale_filters()
            if removed:
                log.info("removed %d stale flowkit tc filters", len(removed))
            maps = collection.maps
            cached = MAP_CACHE_SELECTOR in maps and self.settings.ebpf_flow_cache
            self._kernel_maps = KernelMaps(
                selector_fd=maps[MAP_SELECTOR].fd,
                flow_map_fds=(maps[MAP_FLOWS[0]].fd, maps[MAP_FLOWS[1]].fd),
                ringbuf_fd=maps[MAP_EVENTS].fd,
                counters_fd=maps[MAP_COUNTERS].fd,
                max_entries=self.cache_max_flows,
                ncpus=num_possible_cpus(),
                extra_selector_fd=maps[MAP_EXTRA_SELECTOR].fd if features else -1,
                extra_map_fds=(
                    (maps[MAP_EXTRAS[0]].fd, maps[MAP_EXTRAS[1]].fd) if features else (-1, -1)
                ),
                cache_selector_fd=maps[MAP_CACHE_SELECTOR].fd if cached else -1,
                cache_map_fds=(
                    (maps[MAP_CACHES[0]].fd, maps[MAP_CACHES[1]].fd) if cached else (-1, -1)
                ),
            )
        except BaseException:
            self._close_trace_links()
            collection.close()
            raise
        self._collection = collection
        self._attacher = attacher
        if self._metrics is not None:
            self._metrics.gauge_callback(
                "traced_interfaces", "Interfaces the eBPF programs are attached to",
                lambda: float(len(self._names)),
            )

    @staticmethod
    def _enable_netns(spec: Any) -> None:
        """NETWORK_NAMESPACES: the programs write the namespace of each packet into its key."""
        from flowkit import privileges
        from flowkit.netns import own_inode

        privileges.require("NETWORK_NAMESPACES", ("CAP_SYS_ADMIN",))
        missing = {"trace_netns", "host_netns_inum"} - set(spec.variables)
        if missing:
            raise RuntimeError(
                f"the eBPF object has no {', '.join(sorted(missing))}: it cannot tell network "
                "namespaces apart (rebuild it with `make bpf`, or unset NETWORK_NAMESPACES)"
            )
        spec.variables["trace_netns"].set(1)
        spec.variables["host_netns_inum"].set(own_inode())

    def attach(self, interface: Interface) -> None:
        """Attach the ingress and egress programs to ``interface``."""
        attacher = self._require_started()
        if interface.netns and not self.network_namespaces:
            raise RuntimeError(
                f"{interface.qualified_name} is in another network namespace and the programs "
                "were loaded without NETWORK_NAMESPACES"
            )
        attachment = attacher.attach(
            interface.index, interface.name, netns=interface.netns, netns_id=interface.netns_id
        )
        with self._lock:
            self._names[interface.key] = interface.qualified_name
        log.debug("attached to %s (index %d) with %s", interface.qualified_name, interface.index,
                  attachment.mode)

    def detach(self, interface: Interface) -> None:
        """Release the links or filters of ``interface`` (fine if it is already gone)."""
        if self._attacher is None:
            return
        self._attacher.detach(interface.index, interface.netns_id)
        with self._lock:
            self._names.pop(interface.key, None)

    def interface_names(self) -> dict[int, str]:
        """Names of the interfaces traced now, by :attr:`~flowkit.components.Interface.key`."""
        with self._lock:
            return dict(self._names)

    # -- records for Python accounters --------------------------------------------------------
    def read_aggregates(self) -> FlowArray:
        """Flip to the other flow map and drain the one the programs no longer write."""
        from flowkit.accounting import KernelDrainer

        maps = self._require_maps()
        if self._drainer is None:
            self._drainer = KernelDrainer(maps)
        return self._drainer.drain()

    def read_events(self, timeout: float) -> FlowArray:
        """Single-packet records of the ring buffer (packets that found the flow map full)."""
        from flowkit.accounting import RingBufferReader

        maps = self._require_maps()
        if self._reader is None:
            self._reader = RingBufferReader(maps.ringbuf_fd)
        return self._reader.read(timeout)

    @property
    def kernel_maps(self) -> KernelMaps | None:
        """The kernel objects for the native accounter (``None`` before :meth:`start`)."""
        return self._kernel_maps

    def close(self) -> None:
        """Detach from every interface, then release maps and programs. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._attacher is not None:
            self._attacher.close()
        self._close_trace_links()
        for part in (self._reader, self._drainer):
            if part is not None:
                part.close()
        self._reader = self._drainer = None
        if self._collection is not None:
            self._collection.close()
            self._collection = None
        self._kernel_maps = None
        with self._lock:
            self._names.clear()

    def _close_trace_links(self) -> None:
        links, self._trace_links = self._trace_links, []
        for fd in links:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _require_started(self) -> Attacher:
        if self._attacher is None:
            raise RuntimeError("the ebpf tracer is not started (call start() first)")
        return self._attacher

    def _require_maps(self) -> KernelMaps:
        if self._kernel_maps is None:
            raise RuntimeError("the ebpf tracer is not started (call start() first)")
        return self._kernel_maps


def _attach_tracing(prog_fd: int, name: str) -> int:
    """Attach a tp_btf program (its tracepoint was fixed at load); returns the link fd."""
    from flowkit.native.tc import raw_tracepoint_open

    return raw_tracepoint_open(prog_fd, f"attaching {name}")


def _make(context: ComponentContext) -> EbpfTracer:
    settings = context.settings if context.settings is not None else EbpfTracerSettings()
    return EbpfTracer.from_config(context.config, settings, context.metrics)


@hookimpl
def flowkit_tracers() -> list[TracerSpec]:
    """The ``ebpf`` tracer."""
    return [
        TracerSpec(
            name="ebpf",
            factory=_make,
            settings_model=EbpfTracerSettings,
            description="eBPF programs on TCX or clsact hooks, per-CPU flow maps (default)",
            capabilities=("CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"),
        )
    ]
