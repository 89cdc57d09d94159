"""Benchmark of IPFIX: the C encoder against the Python reference, and the two exporters.

* ``encoder``: one batch of ``--flows`` synthetic flows (interface name and agent address set,
  ``--family mixed`` makes every other flow IPv6) encoded into messages of ``--message`` bytes
  by the Python reference and by C; the bytes are compared first; best of ``--repeat``.
* ``udp`` / ``tcp``: batches of ``--batch`` flows handed to the ``ipfix+udp`` / ``ipfix+tcp``
  exporter's ``export()`` (then ``flush()``), sent to a sink on 127.0.0.1 that only reads (a
  thread of this process for UDP, which is counted in the CPU time; a child process for TCP).

Prints one JSON object per measurement. Run::

    .venv/bin/python bench/bench_ipfix.py [--flows 200000] [--batch 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from bench_encoding import make_batch
from measure import cpu_seconds, flow_rates

from flowkit import ipfix
from flowkit.metrics import Metrics
from flowkit_plugins.ipfix_exporter import IpfixSettings, TcpIpfixExporter, UdpIpfixExporter


def bench_encoder(flows: int, repeat: int, family: str, message: int) -> list[dict[str, Any]]:
    batch = make_batch(flows, family)
    params = ipfix.IpfixParams(max_message=message, exporter_ip=batch.agent_ip)
    out = []
    results = {}
    for name, function in (("python", ipfix.reference_messages), ("c", ipfix.encode_messages)):
        best_cpu = best_wall = float("inf")
        for _ in range(repeat if name == "c" else 1):
            wall0, cpu0 = time.perf_counter(), cpu_seconds()
            results[name] = function(batch, params, export_time=1, sequence=0)
            best_wall = min(best_wall, time.perf_counter() - wall0)
            best_cpu = min(best_cpu, cpu_seconds() - cpu0)
        out.append({"bench": "ipfix_encoder", "encoder": name, "family": family,
                    "message_bytes": message, "messages": len(results[name]),
                    **flow_rates(flows, flows, best_wall, best_cpu)})
    assert results["c"] == results["python"], "C and Python IPFIX encodings differ"
    return out


def _udp_sink() -> tuple[int, threading.Event]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sock.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def run() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                sock.recv(65536)
            except TimeoutError:
                continue

    threading.Thread(target=run, daemon=True).start()
    return int(sock.getsockname()[1]), stop


_TCP_SINK = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(1); print(s.getsockname()[1], flush=True)
c, _ = s.accept()
total = 0
while chunk := c.recv(1 << 20):
    total += len(chunk)
print(total, flush=True)
"""


def bench_exporter(transport: str, flows: int, batch_flows: int) -> dict[str, Any]:
    batch = make_batch(batch_flows, "v4")
    sink: subprocess.Popen[str] | None = None
    if transport == "udp":
        port, stop = _udp_sink()
    else:
        sink = subprocess.Popen([sys.executable, "-c", _TCP_SINK], stdout=subprocess.PIPE,
                                text=True)
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
    settings = IpfixSettings(target_host="127.0.0.1", target_port=port, ipfix_transport=transport,
                             ipfix_buffer_max_flows=max(flows, 1))
    metrics = Metrics()
    exporter: UdpIpfixExporter | TcpIpfixExporter
    exporter = (UdpIpfixExporter if transport == "udp" else TcpIpfixExporter)(settings, metrics)
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    for _ in range(flows // batch_flows):
        exporter.export(batch)
    exporter.flush(120)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    exporter.shutdown(5)
    sent = metrics.registry.get_sample_value("ebpf_agent_ipfix_sent_flows_total") or 0
    if sink is not None:
        sink.wait(30)
    else:
        stop.set()
    return {"bench": "ipfix_exporter", "transport": transport, "sent_flows": int(sent),
            **flow_rates(flows, batch_flows, wall, cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for family in ("v4", "mixed"):
        for message in (1472, 65535):
            for line in bench_encoder(args.flows, args.repeat, family, message):
                print(json.dumps(line), flush=True)
    for transport in ("udp", "tcp"):
        print(json.dumps(bench_exporter(transport, args.flows, args.batch)), flush=True)


if __name__ == "__main__":
    main()
