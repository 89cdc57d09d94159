"""The ``replay`` tracer: every frame of a pcap/pcapng capture through flowkit's eBPF program.

``flowkit-agent replay FILE`` and :func:`flowkit.replay` select it (``TRACER=replay
REPLAY_FILE=...`` works too). It loads the replay programs of the object the ``ebpf``
tracer uses, ``flowkit_replay_ingress`` / ``flowkit_replay_egress`` (the code of
``flowkit_ingress`` / ``flowkit_egress`` compiled with replay on), attaches nothing, and runs
each frame through one of them with BPF_PROG_TEST_RUN. They take three things from
``skb->cb[]`` (set through the test run's ``struct __sk_buff`` context) instead of the live
packet: the interface index, the byte count (the frame's original length, so frames
truncated by the capture's snapshot length, or cut to fit BPF_PROG_TEST_RUN's one-page limit,
count what the wire carried) and the time (the capture timestamp, unix ns). The live programs
are compiled from the same function with replay off: their code is what it was without replay.

The flows go through the configured accounter (the native one drains the same maps) and
exporters. When the file is done the tracer asks the agent to stop, which evicts the last flows.
A malformed or truncated capture stops the replay at the bad frame: the flows before it are
exported, :attr:`ReplayTracer.error` holds the :class:`~flowkit.pcapfile.CaptureError`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, field_validator

from flowkit import hookimpl
from flowkit.components import (
    ComponentContext,
    InformerSpec,
    Interface,
    InterfaceEvent,
    KernelMaps,
    TracerSpec,
)
from flowkit.pcapfile import (
    INBOUND,
    LINKTYPE_ETHERNET,
    LINKTYPE_NAMES,
    CaptureError,
    CaptureInterface,
    read_capture,
)

if TYPE_CHECKING:
    from flowkit.metrics import Metrics
    from flowkit.model import FlowArray

log = logging.getLogger(__name__)

# The object's replay twins of flowkit_ingress / flowkit_egress (indexed by direction).
REPLAY_PROGRAMS = ("flowkit_replay_ingress", "flowkit_replay_egress")
# BPF_PROG_TEST_RUN copies the frame into one page with headroom and the shared info: 3 KiB
# always fits, and holds every header the program reads.
MAX_TEST_RUN_BYTES = 3072
ETH_HLEN = 14
# The test run's context: struct __sk_buff up to the end of cb[5]; cb[] starts at word 12.
CB = 12
CTX_WORDS = CB + 5


class ReplaySettings(BaseModel):
    """Settings of the ``replay`` tracer."""

    replay_file: str = Field(default="", description="pcap or pcapng file to replay "
                             "(flowkit-agent replay FILE sets it).")
    replay_direction: Literal["ingress", "egress"] = Field(
        default="ingress",
        description="Direction of frames whose capture does not record one (pcap files; "
        "pcapng frames with epb_flags inbound/outbound use that).",
    )
    replay_if_index: int = Field(
        default=0, ge=0, le=0xFFFFFFFF,
        description="Interface index recorded in replayed flows; 0: the capture's interface "
        "number plus one.",
    )


    @field_validator("replay_file")
    @classmethod
    def _readable(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"REPLAY_FILE {value}: no such file")
        return value


class ReplayTracer:
    """Runs a capture's frames through the eBPF flow program (implements ``Tracer``)."""

    boot_offset_ns = 0
    """Flow times are capture times, already unix nanoseconds: accounters add no offset."""

    def __init__(self, settings: ReplaySettings, *, cache_max_flows: int = 5000,
                 sampling: int = 0, ringbuf_size: int = 1 << 20,
                 stop_event: threading.Event | None = None, metrics: Metrics | None = None,
                 ) -> None:
        if not settings.replay_file:
            raise ValueError("REPLAY_FILE is required with the replay tracer")
        self.settings = settings
        self.path = Path(settings.replay_file)
        self.cache_max_flows = cache_max_flows
        self.sampling = sampling
        self.ringbuf_size = ringbuf_size
        self._stop_event = stop_event or threading.Event()
        self._collection: Any = None
        self._kernel_maps: KernelMaps | None = None
        self._names: dict[int, str] = {}
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()
        self.done = threading.Event()
        self.error: CaptureError | None = None
        self.frames = 0
        self.skipped = 0
        self._frames_metric = None if metrics is None else metrics.counter(
            "replay_frames", "Capture frames run through the eBPF program")

    # -- Tracer protocol --------------------------------------------------------------------
    def start(self) -> None:
        """Load the program in replay mode and start replaying on a thread."""
        from flowkit.ebpf import CollectionSpec
        from flowkit.native.libbpf import num_possible_cpus
        from flowkit_plugins.ebpf_tracer import (
            MAP_COUNTERS,
            MAP_EVENTS,
            MAP_FLOWS,
            MAP_SELECTOR,
            default_object_path,
        )

        if self._collection is not None:
            return
        if not self.path.is_file():
            raise FileNotFoundError(f"REPLAY_FILE {self.path}: no such file")
        self._check_header()
        spec = CollectionSpec.from_file(default_object_path())
        spec.variables["sampling"].set(self.sampling if self.sampling > 1 else 0)
        for name in MAP_FLOWS:
            spec.maps[name].max_entries = self.cache_max_flows
        spec.maps[MAP_EVENTS].max_entries = self.ringbuf_size
        collection = spec.load(programs=list(REPLAY_PROGRAMS))
        maps = collection.maps
        self._kernel_maps = KernelMaps(
            selector_fd=maps[MAP_SELECTOR].fd,
            flow_map_fds=(maps[MAP_FLOWS[0]].fd, maps[MAP_FLOWS[1]].fd),
            ringbuf_fd=maps[MAP_EVENTS].fd,
            counters_fd=maps[MAP_COUNTERS].fd,
            max_entries=self.cache_max_flows,
            ncpus=num_possible_cpus(),
        )
        self._collection = collection
        self._thread = threading.Thread(target=self._run, name="flowkit-replay", daemon=True)
        self._thread.start()

    def attach(self, interface: Interface) -> None:
        """Nothing to attach: frames come from the file."""

    def detach(self, interface: Interface) -> None:
        """Nothing attached."""

    def interface_names(self) -> dict[int, str]:
        """Names of the capture's interfaces, by the index their flows carry."""
        return dict(self._names)

    def read_aggregates(self) -> FlowArray:
        """Flip and drain the flow maps (for Python accounters)."""
        from flowkit.accounting import KernelDrainer

        assert self._kernel_maps is not None
        if not hasattr(self, "_drainer"):
            self._drainer = KernelDrainer(self._kernel_maps)
        return self._drainer.drain()

    def read_events(self, timeout: float) -> FlowArray:
        """Single-packet records of frames that found the flow map full."""
        from flowkit.accounting import RingBufferReader

        assert self._kernel_maps is not None
        if not hasattr(self, "_reader"):
            self._reader = RingBufferReader(self._kernel_maps.ringbuf_fd)
        return self._reader.read(timeout)

    @property
    def kernel_maps(self) -> KernelMaps | None:
        """The maps the native accounter drains."""
        return self._kernel_maps

    def close(self) -> None:
        """Stop replaying and release the program and maps. Idempotent."""
        self._halt.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for part in ("_reader", "_drainer"):
            obj = self.__dict__.pop(part, None)
            if obj is not None:
                obj.close()
        if self._collection is not None:
            self._collection.close()
            self._collection = None
        self._kernel_maps = None

    # -- the replay -------------------------------------------------------------------------
    def _check_header(self) -> None:
        """Fail at start (not on the thread) for a file that is not a capture at all, and learn
        the names of the interfaces declared before the first frame."""
        interfaces: list[CaptureInterface] = []
        frames = read_capture(self.path, interfaces)
        try:
            next(frames, None)
        except CaptureError as exc:
            if exc.frame == 0:
                raise
        finally:
            frames.close()
        for interface in interfaces:
            self._names.setdefault(self._index_of(interface), interface.name)

    def _index_of(self, interface: CaptureInterface) -> int:
        return self.settings.replay_if_index or interface.number + 1

    def frames_with_context(self) -> Iterator[tuple[int, bytes, int, int, int]]:
        """(direction, data, if_index, original length, time ns) per frame; raises
        CaptureError for a bad frame."""
        interfaces: list[CaptureInterface] = []
        default = 0 if self.settings.replay_direction == "ingress" else 1
        checked: dict[int, int] = {}  # capture interface number -> flow if_index
        for frame in read_capture(self.path, interfaces):
            index = checked.get(frame.interface)
            if index is None:
                interface = interfaces[frame.interface]
                if interface.linktype != LINKTYPE_ETHERNET:
                    name = LINKTYPE_NAMES.get(interface.linktype, str(interface.linktype))
                    raise CaptureError(str(self.path), frame.number, 0,
                                       f"link type {name} is not supported (flowkit replays "
                                       "Ethernet captures, link type 1)")
                index = checked[frame.interface] = self._index_of(interface)
                self._names.setdefault(index, interface.name)
            direction = default if frame.direction is None else (
                0 if frame.direction == INBOUND else 1)
            yield direction, frame.data, index, frame.orig_len, frame.time_ns

    def _run(self) -> None:
        from flowkit.native import check
        from flowkit.native.libbpf import TestRun

        assert self._collection is not None
        programs = tuple(self._collection.programs[name].fd for name in REPLAY_PROGRAMS)
        # One frame buffer and one context, reused: the kernel copies both in.
        runner = TestRun(MAX_TEST_RUN_BYTES, CTX_WORDS)
        ctx = runner.ctx
        run = runner.run
        try:
            for direction, data, index, orig_len, time_ns in self.frames_with_context():
                size = min(len(data), MAX_TEST_RUN_BYTES)
                if size < ETH_HLEN:
                    self.skipped += 1  # BPF_PROG_TEST_RUN refuses frames without Ethernet header
                    continue
                ctx[CB] = index
                ctx[CB + 1] = orig_len
                ctx[CB + 2] = time_ns & 0xFFFFFFFF
                ctx[CB + 3] = time_ns >> 32
                rc = run(programs[direction], data, size)
                if rc < 0:
                    check(rc, "bpf_prog_test_run_opts", f"replay of frame {self.frames + 1}")
                self.frames += 1
                if self.frames & 0x3FF == 0 and self._halt.is_set():
                    return
            log.info("replay: %s: %d frames replayed", self.path, self.frames)
        except CaptureError as exc:
            self.error = exc
            log.error("replay stopped: %s (the %d frames before it were replayed)", exc,
                      self.frames)
        except Exception as exc:
            self.error = CaptureError(str(self.path), self.frames + 1, 0, str(exc))
            log.exception("replay failed")
        finally:
            if self._frames_metric is not None:
                self._frames_metric.inc(self.frames)
            self.done.set()
            self._stop_event.set()


class NoInformer:
    """An informer that reports no interface (replay traces a file, not the host)."""

    def __init__(self, context: ComponentContext | None = None) -> None:
        pass

    def events(self, stop: threading.Event) -> Iterator[InterfaceEvent]:
        """Yield nothing; return when ``stop`` is set."""
        stop.wait()
        yield from ()

    def close(self) -> None:
        """Nothing to release."""


def _make(context: ComponentContext) -> ReplayTracer:
    settings = context.settings if context.settings is not None else ReplaySettings()
    return ReplayTracer(settings, cache_max_flows=context.config.cache_max_flows,
                        sampling=context.config.sampling, stop_event=context.stop_event,
                        metrics=context.metrics)


@hookimpl
def flowkit_tracers() -> list[TracerSpec]:
    """The ``replay`` tracer."""
    return [TracerSpec(name="replay", factory=_make, settings_model=ReplaySettings,
                       description="Frames of a pcap/pcapng file through the eBPF program "
                       "(BPF_PROG_TEST_RUN); capture times become flow times",
                       capabilities=("CAP_BPF",))]


@hookimpl
def flowkit_informers() -> list[InformerSpec]:
    """The ``none`` informer (used by replay)."""
    return [InformerSpec(name="none", factory=NoInformer,
                         description="Reports no interface (replay of a capture file)")]
