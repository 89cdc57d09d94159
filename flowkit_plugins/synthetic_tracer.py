"""The ``synthetic`` tracer: deterministic flows at a configurable rate, no kernel needed.

For tests, demos, benchmarks and plugin authors. Record ``n`` (counting from 0) is one packet of
``SYNTHETIC_PACKET_BYTES`` bytes of flow ``n % SYNTHETIC_FLOWS``; flow ``i`` is described by
:func:`flowkit.synthetic.synthetic_flow_key`. With SYNTHETIC_MAX_RECORDS set, exactly that many
packets are produced, so a test knows every count in advance.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, Field

from flowkit import hookimpl
from flowkit.components import ComponentContext, Interface, KernelMaps, TracerSpec
from flowkit.model import RECORD_DTYPE, FlowArray
from flowkit.synthetic import (
    SYNTHETIC_IFINDEX,
    SYNTHETIC_IFNAME,
    synthetic_flow_key,
    synthetic_key_table,
    synthetic_value_table,
)

__all__ = [
    "SYNTHETIC_IFINDEX",
    "SYNTHETIC_IFNAME",
    "SyntheticSettings",
    "SyntheticTracer",
    "synthetic_flow_key",
]


class SyntheticSettings(BaseModel):
    """Settings of the synthetic tracer."""

    synthetic_flows: int = Field(default=8, gt=0, le=1_000_000,
                                 description="Number of distinct synthetic flows.")
    synthetic_rate: float = Field(
        default=1000.0, ge=0, description="Synthetic packets per second (0: as fast as possible)."
    )
    synthetic_packet_bytes: int = Field(
        default=100, gt=0, le=65535, description="Size of every synthetic packet in bytes."
    )
    synthetic_max_records: int = Field(
        default=0, ge=0, description="Stop after this many synthetic packets (0: never)."
    )


class SyntheticTracer:
    """Generates records on demand, paced by ``synthetic_rate``."""

    MAX_RECORDS_PER_READ = 65536

    def __init__(self, settings: SyntheticSettings, sampling: int = 0) -> None:
        self.settings = settings
        self._sampling = sampling
        self._closing = threading.Event()  # wakes a waiting read_events on close()
        self._keys = synthetic_key_table(settings.synthetic_flows)
        self._values = synthetic_value_table(settings.synthetic_flows)
        self._flags = np.array(
            [synthetic_flow_key(i)["flags"] for i in range(settings.synthetic_flows)],
            dtype="<u2",
        )
        self.produced = 0
        self._t0 = time.monotonic()
        self._closed = False

    def start(self) -> None:
        self._t0 = time.monotonic()

    def attach(self, interface: Interface) -> None:
        """Synthetic flows do not depend on interfaces."""

    def detach(self, interface: Interface) -> None:
        """Synthetic flows do not depend on interfaces."""

    def interface_names(self) -> Mapping[int, str]:
        """Names for the interface indexes this tracer reports."""
        return {SYNTHETIC_IFINDEX: SYNTHETIC_IFNAME}

    @property
    def kernel_maps(self) -> KernelMaps | None:
        return None

    def read_aggregates(self) -> FlowArray:
        return np.zeros(0, dtype=RECORD_DTYPE)

    def _due(self) -> int:
        s = self.settings
        if s.synthetic_rate == 0:
            due = self.MAX_RECORDS_PER_READ
        else:
            due = int((time.monotonic() - self._t0) * s.synthetic_rate) - self.produced
        if s.synthetic_max_records:
            due = min(due, s.synthetic_max_records - self.produced)
        return max(0, min(due, self.MAX_RECORDS_PER_READ))

    def read_events(self, timeout: float) -> FlowArray:
        due = self._due()
        if due == 0 and not self._closed:
            s = self.settings
            exhausted = s.synthetic_max_records and self.produced >= s.synthetic_max_records
            if exhausted or s.synthetic_rate == 0:
                wait = timeout
            else:
                wait = min(timeout, 1.0 / s.synthetic_rate)
            if wait > 0:
                self._closing.wait(wait)
            due = self._due()
        if due == 0 or self._closed:
            return np.zeros(0, dtype=RECORD_DTYPE)
        index = (np.arange(self.produced, self.produced + due) % len(self._keys))
        records = np.zeros(due, dtype=RECORD_DTYPE)
        records["key"] = self._keys[index]
        records["value"] = self._values[index]
        value = records["value"]
        now = time.monotonic_ns()
        value["packets"] = 1
        value["bytes"] = self.settings.synthetic_packet_bytes
        value["first_ns"] = now
        value["last_ns"] = now
        value["flags"] = self._flags[index]
        value["sampling"] = self._sampling
        self.produced += due
        return records

    def close(self) -> None:
        self._closed = True
        self._closing.set()


def _make(context: ComponentContext) -> SyntheticTracer:
    return SyntheticTracer(context.settings, context.config.sampling)


@hookimpl
def flowkit_tracers() -> list[TracerSpec]:
    return [
        TracerSpec(
            name="synthetic",
            factory=_make,
            settings_model=SyntheticSettings,
            description="Deterministic synthetic flows at a set rate (tests, demos, benchmarks)",
        )
    ]
