"""The ``synthetic`` tracer: deterministic flows at a configurable rate, no kernel needed.

For tests, demos, benchmarks and plugin authors. Record ``n`` (counting from 0) is one packet of
``SYNTHETIC_PACKET_BYTES`` bytes of flow ``n % SYNTHETIC_FLOWS``; flow ``i`` is described by
:func:`synthetic_flow_key`. With SYNTHETIC_MAX_RECORDS set, exactly that many packets are
produced, so a test knows every count in advance.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Mapping
from typing import cast

import numpy as np
from pydantic import BaseModel, Field

from flowkit import hookimpl
from flowkit.components import ComponentContext, Interface, KernelMaps, TracerSpec
from flowkit.model import (
    EGRESS,
    ETH_P_IP,
    INGRESS,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    RECORD_DTYPE,
    FlowArray,
    ip_to_16,
)

SYNTHETIC_IFINDEX = 1_000_000
SYNTHETIC_IFNAME = "synthetic0"
_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP)
TCP_SYN_ACK = 0x12


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


def synthetic_flow_key(i: int) -> dict[str, object]:
    """The identity of synthetic flow ``i`` (what tests compare exported flows against)."""
    proto = _PROTOCOLS[i % len(_PROTOCOLS)]
    return {
        "if_index": SYNTHETIC_IFINDEX,
        "interface": SYNTHETIC_IFNAME,
        "direction": EGRESS if i % 2 == 0 else INGRESS,
        "eth_protocol": ETH_P_IP,
        "src_mac": bytes([0x02, 0, 0, 0, (i >> 8) & 0xFF, i & 0xFF]),
        "dst_mac": bytes([0x02, 0, 0, 1, (i >> 8) & 0xFF, i & 0xFF]),
        "src_ip": ipaddress.IPv4Address(0xC6120000 + i + 1),  # 198.18.0.0/16
        "dst_ip": ipaddress.IPv4Address(0xC6130000 + i + 1),  # 198.19.0.0/16
        "src_port": 0 if proto == IPPROTO_ICMP else 10000 + i % 50000,
        "dst_port": {IPPROTO_TCP: 443, IPPROTO_UDP: 53, IPPROTO_ICMP: 0}[proto],
        "proto": proto,
        "icmp_type": 8 if proto == IPPROTO_ICMP else 0,
        "icmp_code": 0,
        "flags": TCP_SYN_ACK if proto == IPPROTO_TCP else 0,
    }


def _key_table(flows: int) -> FlowArray:
    keys = np.zeros(flows, dtype=RECORD_DTYPE["key"])
    for i in range(flows):
        k = synthetic_flow_key(i)
        row = keys[i]
        for name in ("if_index", "direction", "eth_protocol", "src_port", "dst_port", "proto",
                     "icmp_type", "icmp_code"):
            row[name] = k[name]
        row["src_mac"] = np.frombuffer(cast(bytes, k["src_mac"]), dtype="u1")
        row["dst_mac"] = np.frombuffer(cast(bytes, k["dst_mac"]), dtype="u1")
        row["src_ip"] = np.frombuffer(ip_to_16(cast(str, k["src_ip"])), dtype="u1")
        row["dst_ip"] = np.frombuffer(ip_to_16(cast(str, k["dst_ip"])), dtype="u1")
    return keys


class SyntheticTracer:
    """Generates records on demand, paced by ``synthetic_rate``."""

    MAX_RECORDS_PER_READ = 65536

    def __init__(self, settings: SyntheticSettings, sampling: int = 0) -> None:
        self.settings = settings
        self._sampling = sampling
        self._closing = threading.Event()  # wakes a waiting read_events on close()
        self._keys = _key_table(settings.synthetic_flows)
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
