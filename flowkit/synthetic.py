"""The deterministic synthetic flows: one definition shared by the ``synthetic`` tracer,
:mod:`flowkit.testing` and the benchmarks.

Flow ``i`` (counting from 0) is described by :func:`synthetic_flow_key`: addresses from
198.18.0.0/16 to 198.19.0.0/16, protocols cycling TCP, UDP, ICMP, directions alternating, on the
made-up interface ``synthetic0``. Tests compare what an exporter received against these keys.
"""

from __future__ import annotations

import ipaddress
from typing import cast

import numpy as np

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

__all__ = [
    "SYNTHETIC_IFINDEX",
    "SYNTHETIC_IFNAME",
    "TCP_SYN_ACK",
    "synthetic_flow_key",
    "synthetic_key_table",
    "synthetic_value_table",
]

SYNTHETIC_IFINDEX = 1_000_000
"""Interface index of every synthetic flow."""
SYNTHETIC_IFNAME = "synthetic0"
"""Interface name of every synthetic flow."""
TCP_SYN_ACK = 0x12
"""TCP flags of the synthetic TCP flows."""
_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP)


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


def synthetic_key_table(flows: int) -> FlowArray:
    """The record keys (``RECORD_DTYPE["key"]``) of synthetic flows ``0 .. flows-1``."""
    keys = np.zeros(flows, dtype=RECORD_DTYPE["key"])
    for i in range(flows):
        k = synthetic_flow_key(i)
        row = keys[i]
        for name in ("if_index", "direction", "eth_protocol", "src_port", "dst_port", "proto",
                     "icmp_type", "icmp_code"):
            row[name] = k[name]
        row["src_ip"] = np.frombuffer(ip_to_16(cast(str, k["src_ip"])), dtype="u1")
        row["dst_ip"] = np.frombuffer(ip_to_16(cast(str, k["dst_ip"])), dtype="u1")
    return keys


def synthetic_value_table(flows: int) -> FlowArray:
    """Record values (``RECORD_DTYPE["value"]``) holding the MACs of synthetic flows, else 0."""
    values = np.zeros(flows, dtype=RECORD_DTYPE["value"])
    for i in range(flows):
        k = synthetic_flow_key(i)
        values[i]["src_mac"] = np.frombuffer(cast(bytes, k["src_mac"]), dtype="u1")
        values[i]["dst_mac"] = np.frombuffer(cast(bytes, k["dst_mac"]), dtype="u1")
    return values
