"""Benchmark of the flow encoders: flows per second, Python reference vs the C encoders.

For each encoding (JSON lines as the stdout exporter writes them, one JSON object per flow as
Kafka sends them, one serialized ``pbflow.Record`` per flow, ``pbflow.Records`` messages of
``--message-flows`` flows as the gRPC exporter sends them), encodes one batch of ``--flows``
synthetic flows (interface name and agent address set) with the Python reference and with the C
encoder, checks that both give the same bytes, and prints one JSON object per measurement. The
best of ``--repeat`` runs is kept. ``--family mixed`` makes every other flow IPv6. Run::

    .venv/bin/python bench/bench_encoding.py [--flows 100000] [--repeat 3] [--family v4|mixed]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from typing import Any

from flowkit import encoding
from flowkit.model import FlowBatch, ip_to_16
from flowkit.testing import synthetic_flows


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def make_batch(flows: int, family: str) -> FlowBatch:
    """``flows`` synthetic flows; with ``family="mixed"`` the odd ones are IPv6 (fd00::/8)."""
    batch = synthetic_flows(n_flows=flows, packets=3)
    batch.agent_ip = "198.18.255.254"
    if family == "mixed":
        key = batch.array["key"]
        for i in range(1, flows, 2):
            key[i]["eth_protocol"] = 0x86DD
            key[i]["src_ip"] = list(ip_to_16(f"fd00::{i & 0xFFFF:x}:1"))
            key[i]["dst_ip"] = list(ip_to_16(f"fd00:0:0:1::{i & 0xFFFF:x}"))
    return batch


def _time(function: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    best_wall = best_cpu = float("inf")
    result: Any = None
    for _ in range(repeat):
        wall0, cpu0 = time.perf_counter(), _cpu()
        result = function()
        best_wall = min(best_wall, time.perf_counter() - wall0)
        best_cpu = min(best_cpu, _cpu() - cpu0)
    return best_wall, best_cpu, result


def _messages_python(batch: FlowBatch, step: int) -> list[bytes]:
    n = len(batch)
    return [encoding.reference_records_message(batch, i, i + step) for i in range(0, n, step)]


def _messages_c(batch: FlowBatch, step: int) -> list[bytes]:
    return [data for data, _ in encoding.encode_records_messages(batch, step)]


def bench(flows: int, repeat: int, family: str, message_flows: int) -> list[dict[str, Any]]:
    batch = make_batch(flows, family)
    cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        (
            "json_lines",
            lambda: encoding.reference_json_lines(batch),
            lambda: encoding.encode_json_lines(batch),
        ),
        (
            "json_each",
            lambda: encoding.reference_json_each(batch),
            lambda: encoding.encode_json_each(batch),
        ),
        (
            "records_each",
            lambda: encoding.reference_records(batch),
            lambda: encoding.encode_records(batch).split(),
        ),
        (
            "records_messages",
            lambda: _messages_python(batch, message_flows),
            lambda: _messages_c(batch, message_flows),
        ),
    ]
    results = []
    for name, python, native in cases:
        py_wall, py_cpu, expected = _time(python, repeat)
        c_wall, c_cpu, got = _time(native, repeat)
        if got != expected:
            raise AssertionError(f"{name}: the C encoder's output differs from the reference")
        size = len(got) if isinstance(got, bytes) else sum(len(b) for b in got)
        results.append(
            {
                "benchmark": f"encode_{name}",
                "family": family,
                "flows": flows,
                "bytes": size,
                "python_flows_per_s": round(flows / py_wall),
                "c_flows_per_s": round(flows / c_wall),
                "python_flows_per_cpu_s": round(flows / py_cpu) if py_cpu else None,
                "c_flows_per_cpu_s": round(flows / c_cpu) if c_cpu else None,
                "speedup": round(py_wall / c_wall, 1),
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--family", choices=["v4", "mixed"], default="v4")
    parser.add_argument("--message-flows", type=int, default=10_000)
    args = parser.parse_args()
    for result in bench(args.flows, args.repeat, args.family, args.message_flows):
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
