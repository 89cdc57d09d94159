"""Benchmark of the grpc exporter: flows per second per core, and peak RSS.

Two measurements, each printed as one JSON object:

* ``exporter``: prebuilt batches of synthetic flows handed straight to :class:`GrpcExporter`
  (encoding + sending), the collector running in another process;
* ``agent``: the whole agent in-process (``TRACER=synthetic``, ``ACCOUNTER=native`` by default,
  ``EXPORT=grpc``) until the collector has received every synthetic packet.

"Per core" divides flows by the CPU time (user + system) of this process, so the collector's
work is not counted. Run::

    .venv/bin/python bench/bench_grpc.py [--flows 200000] [--batch 10000] \
        [--agent-packets N] [--accounter python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

from measure import cpu_seconds, flow_rates, peak_rss_mib

from flowkit.metrics import Metrics
from flowkit.testing import synthetic_flows


def serve() -> None:
    """Collector process: counts flows and packets, prints running totals one per line."""
    from flowkit.collector import CollectorServer

    totals = [0, 0]

    def count(message: Any, context: Any) -> None:
        packets = sum(r.packets for r in message.entries)
        totals[0] += len(message.entries)
        totals[1] += packets
        sys.stdout.write(f"{totals[0]} {totals[1]}\n")
        sys.stdout.flush()

    server = CollectorServer(count, "127.0.0.1", 0, workers=1)
    sys.stdout.write(f"port {server.port}\n")
    sys.stdout.flush()
    sys.stdin.read()  # run until the parent closes our stdin
    server.stop(None)


class Collector:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().split()[1])

    def wait_packets(self, packets: int) -> tuple[int, int]:
        assert self.proc.stdout is not None
        flows = got = 0
        while got < packets:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("collector exited early")
            flows, got = map(int, line.split())
        return flows, got

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def bench_exporter(flows: int, batch_size: int) -> dict[str, Any]:
    from flowkit_plugins.grpc_exporter import GrpcExporter, GrpcSettings

    collector = Collector()
    try:
        batch = synthetic_flows(n_flows=batch_size, packets=1)
        settings = GrpcSettings(
            target_host="127.0.0.1",
            target_port=collector.port,
            grpc_buffer_max_flows=max(flows, 100_000),
        )
        exporter = GrpcExporter(settings, Metrics())
        batches = flows // batch_size
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        for _ in range(batches):
            exporter.export(batch)
        assert exporter.flush(600)
        collector.wait_packets(batches * batch_size)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        exporter.shutdown(5)
    finally:
        collector.close()
    total = batches * batch_size
    return {
        "benchmark": "grpc_exporter",
        **flow_rates(total, batch_size, wall, cpu),
    }


def bench_agent(packets: int, flows: int, accounter: str) -> dict[str, Any]:
    import flowkit
    from flowkit.config import load_config
    from flowkit.plugins import PluginManager
    from flowkit_plugins import grpc_exporter

    collector = Collector()
    try:
        pm = PluginManager()
        if "grpc" not in pm.all_components().get("exporter", {}):
            pm.register(grpc_exporter)
        env = {
            "EXPORT": "grpc",
            "TRACER": "synthetic",
            "ACCOUNTER": accounter,
            "LISTEN_INTERFACES": "poll",
            "TARGET_HOST": "127.0.0.1",
            "TARGET_PORT": str(collector.port),
            "SYNTHETIC_RATE": "0",
            "SYNTHETIC_FLOWS": str(flows),
            "SYNTHETIC_MAX_RECORDS": str(packets),
            "CACHE_ACTIVE_TIMEOUT": "1s",
            "GRPC_BUFFER_MAX_FLOWS": "10000000",
        }
        config = load_config(environ=env, plugin_manager=pm)
        agent = flowkit.Agent(config, plugin_manager=pm)
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        agent.start()
        exported, _ = collector.wait_packets(packets)
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        agent.shutdown()
    finally:
        collector.close()
    return {
        "benchmark": "grpc_agent",
        "packets": packets,
        "synthetic_flows": flows,
        "exported_flow_records": exported,
        "accounter": accounter,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "packets_per_cpu_s": round(packets / cpu),
        "flow_records_per_cpu_s": round(exported / cpu),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--flows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--agent-packets", type=int, default=2_000_000)
    parser.add_argument("--agent-flows", type=int, default=50_000)
    parser.add_argument("--accounter", default="native", help="native (C) or python")
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    print(json.dumps(bench_exporter(args.flows, args.batch)))
    if args.agent_packets:
        print(json.dumps(bench_agent(args.agent_packets, args.agent_flows, args.accounter)))


if __name__ == "__main__":
    main()
