"""Benchmark of OTLP: the C log encoder against the opentelemetry-proto reference, and the exporter.

* ``encoder``: one batch of ``--flows`` synthetic flows (interface name and agent address set)
  as ``ExportLogsServiceRequest`` bytes, by the reference (protobuf messages) and by C; the
  bytes are compared first; C best of ``--repeat``.
* ``exporter``: batches of ``--batch`` flows through the ``otlp`` exporter's ``export()`` then
  ``flush()``, over gRPC (and HTTP/protobuf) to a receiver in a child process that acknowledges
  every request without decoding it; logs only, then logs + metrics (budget 1,000 series).

Prints one JSON object per measurement. Run::

    .venv/bin/python bench/bench_otlp.py [--flows 200000] [--batch 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from bench_encoding import make_batch
from measure import cpu_seconds, flow_rates

from flowkit import otlp
from flowkit.metrics import Metrics
from flowkit_plugins.otlp_exporter import OtlpExporter, OtlpSettings

_RECEIVER = """
import sys, http.server, threading
from concurrent import futures
import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as L
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as M
logs_ok = L.ExportLogsServiceResponse().SerializeToString()
metrics_ok = M.ExportMetricsServiceResponse().SerializeToString()
handler = grpc.method_handlers_generic_handler
server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                     options=[("grpc.max_receive_message_length", -1)])
server.add_generic_rpc_handlers([
    handler("opentelemetry.proto.collector.logs.v1.LogsService",
            {"Export": grpc.unary_unary_rpc_method_handler(lambda r, c: logs_ok)}),
    handler("opentelemetry.proto.collector.metrics.v1.MetricsService",
            {"Export": grpc.unary_unary_rpc_method_handler(lambda r, c: metrics_ok)}),
])
grpc_port = server.add_insecure_port("127.0.0.1:0")
server.start()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = logs_ok if self.path == "/v1/logs" else metrics_ok
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=web.serve_forever, daemon=True).start()
print(grpc_port, web.server_address[1], flush=True)
sys.stdin.read()
"""


def bench_encoder(flows: int, repeat: int) -> list[dict[str, Any]]:
    batch = make_batch(flows, "mixed")
    resource = otlp.OtlpResource({"service.name": "flowkit-agent"})
    framing = resource.framing(otlp.import_otlp_proto())
    results = {}
    out = []
    cases = (("python", lambda: otlp.reference_logs_request(batch, resource)),
             ("c", lambda: otlp.encode_logs_request(batch, framing)))
    for name, function in cases:
        best_cpu = best_wall = float("inf")
        for _ in range(repeat if name == "c" else 1):
            wall0, cpu0 = time.perf_counter(), cpu_seconds()
            results[name] = function()
            best_wall = min(best_wall, time.perf_counter() - wall0)
            best_cpu = min(best_cpu, cpu_seconds() - cpu0)
        out.append({"bench": "otlp_encoder", "encoder": name, "bytes": len(results[name]),
                    **flow_rates(flows, flows, best_wall, best_cpu)})
    assert results["c"] == results["python"], "C and reference OTLP encodings differ"
    return out


def bench_exporter(protocol: str, port: int, flows: int, batch_flows: int,
                   metrics_on: bool) -> dict[str, Any]:
    batch = make_batch(batch_flows, "mixed")
    scheme = "http://" if protocol == "http/protobuf" else ""
    settings = OtlpSettings(otlp_endpoint=f"{scheme}127.0.0.1:{port}", otlp_protocol=protocol,
                            otlp_metrics=metrics_on, otlp_buffer_max_flows=flows + 1)
    registry = Metrics()
    exporter = OtlpExporter(settings, registry, batch.agent_ip)
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    for _ in range(flows // batch_flows):
        exporter.export(batch)
    assert exporter.flush(300)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    exporter.shutdown(5)
    sent = registry.registry.get_sample_value("ebpf_agent_otlp_sent_flows_total") or 0
    return {"bench": "otlp_exporter", "protocol": protocol, "metrics": metrics_on,
            "sent_flows": int(sent), **flow_rates(flows, batch_flows, wall, cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for line in bench_encoder(args.flows, args.repeat):
        print(json.dumps(line), flush=True)
    receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        grpc_port, http_port = (int(p) for p in receiver.stdout.readline().split())
        for protocol, port in (("grpc", grpc_port), ("http/protobuf", http_port)):
            for metrics_on in (False, True):
                result = bench_exporter(protocol, port, args.flows, args.batch, metrics_on)
                print(json.dumps(result), flush=True)
    finally:
        receiver.kill()
        receiver.wait()


if __name__ == "__main__":
    main()
