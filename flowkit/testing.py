"""Test helpers for plugin authors (also a pytest plugin, registered as ``pytest11``).

Fixtures:

- ``flowkit_plugin_manager``: a fresh :class:`~flowkit.plugins.PluginManager` with no entry
  points loaded; register the plugin under test with ``.register(module)``.
- ``synthetic_batch``: a factory ``synthetic_batch(n_flows=8, packets=1)`` returning a
  :class:`~flowkit.model.FlowBatch` of deterministic flows (those of the ``synthetic`` tracer).

Helpers: :func:`make_flow` builds one :class:`~flowkit.model.Flow` with sensible defaults;
:func:`check_exporter` is the exporter conformance kit (:mod:`flowkit.conformance`).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

import pytest

from flowkit.conformance import ConformanceError, check_exporter
from flowkit.model import EGRESS, ETH_P_IP, IPPROTO_TCP, Flow, FlowBatch
from flowkit.plugins import PluginManager
from flowkit.synthetic import synthetic_flow_key

__all__ = ["ConformanceError", "check_exporter", "make_flow", "synthetic_flows"]


def make_flow(**overrides: Any) -> Flow:
    """A TCP flow 198.18.0.1:40000 -> 198.19.0.1:443 on ``eth0``; override any field."""
    now = time.time_ns()
    fields: dict[str, Any] = {
        "if_index": 2,
        "interface": "eth0",
        "direction": EGRESS,
        "eth_protocol": ETH_P_IP,
        "src_mac": bytes.fromhex("020000000001"),
        "dst_mac": bytes.fromhex("020000000002"),
        "src_ip": ipaddress.ip_address("198.18.0.1"),
        "dst_ip": ipaddress.ip_address("198.19.0.1"),
        "src_port": 40000,
        "dst_port": 443,
        "proto": IPPROTO_TCP,
        "icmp_type": 0,
        "icmp_code": 0,
        "packets": 10,
        "bytes": 1500,
        "start_ns": now - 1_000_000_000,
        "end_ns": now,
        "flags": 0x12,
        "dscp": 0,
        "sampling": 0,
    }
    for key, value in overrides.items():
        if key in ("src_ip", "dst_ip", "agent_ip") and isinstance(value, str):
            value = ipaddress.ip_address(value)
        fields[key] = value
    return Flow(**fields)


def synthetic_flows(n_flows: int = 8, packets: int = 1, packet_bytes: int = 100) -> FlowBatch:
    """A batch holding the first ``n_flows`` flows of the synthetic tracer."""
    now = time.time_ns()
    flows = []
    for i in range(n_flows):
        key = synthetic_flow_key(i)
        flows.append(
            Flow(
                **{k: v for k, v in key.items() if k != "flags"},  # type: ignore[arg-type]
                packets=packets,
                bytes=packets * packet_bytes,
                start_ns=now,
                end_ns=now,
                flags=key["flags"],  # type: ignore[arg-type]
                dscp=0,
                sampling=0,
            )
        )
    return FlowBatch.from_flows(flows)


@pytest.fixture
def flowkit_plugin_manager() -> PluginManager:
    """A plugin manager with no plugins: register what the test needs."""
    return PluginManager(load_entrypoints=False, disabled=())


@pytest.fixture
def synthetic_batch() -> Callable[..., FlowBatch]:
    """Factory of deterministic FlowBatches (see :func:`synthetic_flows`)."""
    return synthetic_flows
