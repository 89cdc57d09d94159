"""Test doubles for the core unit tests: a scripted tracer and informer, recording exporters.

Imported by ``conftest.py`` (fixtures) and by the tests that need the classes themselves.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from flowkit import hookimpl
from flowkit.components import (
    ComponentContext,
    ExporterSpec,
    InformerSpec,
    Interface,
    InterfaceEvent,
    KernelMaps,
    TracerSpec,
)
from flowkit.model import RECORD_DTYPE, FlowArray, FlowBatch, ip_to_16
from flowkit.synthetic import SYNTHETIC_IFINDEX, synthetic_flow_key
from flowkit_plugins import poll_informer, python_accounter, stdout_exporter, synthetic_tracer

BUILTIN_MODULES = {
    "poll": poll_informer,
    "python-accounter": python_accounter,
    "stdout": stdout_exporter,
    "synthetic": synthetic_tracer,
}


def synthetic_records(
    flow_ids: Iterable[int],
    *,
    packet_bytes: int = 100,
    first_ns: int = 1_000,
    last_ns: int = 2_000,
) -> FlowArray:
    """One single-packet record per entry of ``flow_ids``, keyed like the synthetic tracer's."""
    ids = list(flow_ids)
    records = np.zeros(len(ids), dtype=RECORD_DTYPE)
    for row, i in enumerate(ids):
        k: dict[str, Any] = synthetic_flow_key(i)
        key = records[row]["key"]
        for name in ("if_index", "direction", "eth_protocol", "src_port", "dst_port", "proto",
                     "icmp_type", "icmp_code"):
            key[name] = k[name]
        key["src_ip"] = np.frombuffer(ip_to_16(k["src_ip"]), dtype="u1")
        key["dst_ip"] = np.frombuffer(ip_to_16(k["dst_ip"]), dtype="u1")
        value = records[row]["value"]
        value["src_mac"] = np.frombuffer(k["src_mac"], dtype="u1")
        value["dst_mac"] = np.frombuffer(k["dst_mac"], dtype="u1")
        value["packets"] = 1
        value["bytes"] = packet_bytes
        value["first_ns"] = first_ns
        value["last_ns"] = last_ns
        value["flags"] = k["flags"]
    return records


class ScriptedTracer:
    """A tracer whose single-packet records are handed over by the test, chunk by chunk.

    Each chunk put with :meth:`feed` is returned by exactly one ``read_events`` call, so a test
    decides how many records every accounter poll sees.
    """

    def __init__(self) -> None:
        self.chunks: queue.Queue[FlowArray] = queue.Queue()
        self.attached: list[str] = []
        self.closed = False

    def feed(self, records: FlowArray) -> None:
        self.chunks.put(records)

    def start(self) -> None:
        """Nothing to load."""

    def attach(self, interface: Interface) -> None:
        self.attached.append(interface.name)

    def detach(self, interface: Interface) -> None:
        self.attached.remove(interface.name)

    def interface_names(self) -> Mapping[int, str]:
        return {SYNTHETIC_IFINDEX: "scripted0"}

    def read_aggregates(self) -> FlowArray:
        return np.zeros(0, dtype=RECORD_DTYPE)

    def read_events(self, timeout: float) -> FlowArray:
        try:
            return self.chunks.get(timeout=timeout) if timeout > 0 else self.chunks.get_nowait()
        except queue.Empty:
            return np.zeros(0, dtype=RECORD_DTYPE)

    @property
    def kernel_maps(self) -> KernelMaps | None:
        return None

    def close(self) -> None:
        self.closed = True


class RecordingExporter:
    """Keeps a copy of every batch; optionally blocks in ``export`` until released."""

    def __init__(self, name: str, blocking: bool = False, failing: bool = False) -> None:
        self.name = name
        self.failing = failing
        self.attempts = 0
        self.batches: list[FlowBatch] = []
        self.entered = threading.Event()  # set when export() was first called
        self.release = threading.Event()
        if not blocking:
            self.release.set()
        self.changed = threading.Condition()
        self.flushed = False
        self.shut_down = False

    def export(self, batch: FlowBatch) -> None:
        self.entered.set()
        self.release.wait()
        with self.changed:
            self.attempts += 1
            self.changed.notify_all()
            if self.failing:
                raise RuntimeError("the test exporter fails on purpose")
            self.batches.append(batch.copy())
            self.changed.notify_all()

    def flush(self, timeout: float) -> bool:
        self.flushed = True
        return True

    def shutdown(self, timeout: float) -> None:
        self.shut_down = True

    @property
    def packets(self) -> int:
        return sum(int(b.array["packets"].sum()) for b in self.batches)

    @property
    def flows(self) -> int:
        return sum(len(b) for b in self.batches)

    def wait_for(self, predicate: Callable[[RecordingExporter], bool], timeout: float = 10) -> None:
        """Wait until ``predicate(self)`` holds; fail the test if it does not within timeout."""
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self), timeout):
                pytest.fail(f"exporter {self.name}: condition not reached; got {self.batches}")


class ScriptedInformer:
    """An informer reporting the interface events the test puts in :attr:`events_in`."""

    def __init__(self) -> None:
        self.events_in: queue.Queue[InterfaceEvent] = queue.Queue()

    def events(self, stop: threading.Event) -> Iterator[InterfaceEvent]:
        while not stop.is_set():
            try:
                yield self.events_in.get(timeout=0.1)
            except queue.Empty:
                continue

    def close(self) -> None:
        """Nothing to release."""


class ScriptedPlugin:
    """A plugin providing the scripted tracer and informer, and recording exporters.

    Exporters ``fast``, ``slow`` (blocks until released) and ``failing`` (raises) are created
    when the agent selects them; :meth:`exporter` returns the instance.
    """

    def __init__(self) -> None:
        self.tracer = ScriptedTracer()
        self.informer = ScriptedInformer()
        self.exporters: dict[str, RecordingExporter] = {}

    def exporter(self, name: str) -> RecordingExporter:
        return self.exporters[name]

    @hookimpl
    def flowkit_tracers(self) -> list[TracerSpec]:
        return [TracerSpec(name="scripted", factory=lambda ctx: self.tracer)]

    @hookimpl
    def flowkit_exporters(self) -> list[ExporterSpec]:
        def factory(name: str) -> Callable[[ComponentContext], RecordingExporter]:
            def make(ctx: ComponentContext) -> RecordingExporter:
                exporter = RecordingExporter(
                    name, blocking=name == "slow", failing=name == "failing"
                )
                self.exporters[name] = exporter
                return exporter

            return make

        return [
            ExporterSpec(name=name, factory=factory(name))
            for name in ("fast", "slow", "failing")
        ]

    @hookimpl
    def flowkit_informers(self) -> list[InformerSpec]:
        return [InformerSpec(name="scripted", factory=lambda ctx: self.informer)]
