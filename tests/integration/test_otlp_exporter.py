"""The ``otlp`` exporter against a loopback OTLP receiver built from opentelemetry-proto's service
definitions (``LogsService`` / ``MetricsService`` over gRPC, and ``/v1/logs`` over HTTP).

The end-to-end run is a real ``flowkit-agent`` process (synthetic tracer, EXPORT=stdout,otlp):
every flow the stdout exporter prints must arrive as one log record with the same values, and
the metrics' totals must equal the sums of the flows although the series budget folds most of
them into the overflow series. The other tests drive the exporter in-process against receivers
that misbehave on purpose (wrong CA, missing client certificate, down, refusing).
"""

from __future__ import annotations

import ast
import collections
import http.server
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.proto")
grpc = pytest.importorskip("grpc")

from opentelemetry.proto.collector.logs.v1 import (  # noqa: E402
    logs_service_pb2,
    logs_service_pb2_grpc,
)
from opentelemetry.proto.collector.metrics.v1 import (  # noqa: E402
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)

from flowkit.metrics import Metrics  # noqa: E402
from flowkit.testing import synthetic_flows  # noqa: E402
from flowkit_plugins.otlp_exporter import OtlpExporter, OtlpSettings  # noqa: E402

try:
    from .fk_cli_helpers import SYNTHETIC, AgentProcess, clean_env, run
    from .test_grpc_exporter import Pki, make_pki
except ImportError:
    from fk_cli_helpers import SYNTHETIC, AgentProcess, clean_env, run  # type: ignore[no-redef]
    from test_grpc_exporter import Pki, make_pki  # type: ignore[no-redef]

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind)


def attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in items}


class Receiver:
    """An OTLP/gRPC receiver: LogsService and MetricsService servicers from opentelemetry-proto."""

    def __init__(self, port: int = 0, tls: Any = None, refuse: Any = None,
                 partial: int = 0) -> None:
        self.logs: list[Any] = []
        self.metrics: list[Any] = []
        self.metadata: list[dict[str, str]] = []
        self._cond = threading.Condition()
        receiver = self

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                if refuse is not None:
                    context.abort(refuse, "refused by the test")
                with receiver._cond:
                    receiver.logs.append(request)
                    receiver.metadata.append(dict(context.invocation_metadata()))
                    receiver._cond.notify_all()
                response = logs_service_pb2.ExportLogsServiceResponse()
                if partial:
                    response.partial_success.rejected_log_records = partial
                    response.partial_success.error_message = "test rejects some"
                return response

        class Metrics_(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                with receiver._cond:
                    receiver.metrics.append(request)
                    receiver._cond.notify_all()
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics_(), self.server)
        address = f"127.0.0.1:{port}"
        self.port = (self.server.add_secure_port(address, tls) if tls is not None
                     else self.server.add_insecure_port(address))
        self.server.start()

    def records(self) -> list[Any]:
        with self._cond:
            return [r for req in self.logs for rl in req.resource_logs for sl in rl.scope_logs
                    for r in sl.log_records]

    def wait_records(self, count: int, timeout: float = 30) -> list[Any]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.records()) >= count, timeout)
        return self.records()

    def stop(self) -> None:
        self.server.stop(0)


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(**kwargs: Any) -> Receiver:
        receiver = Receiver(**kwargs)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("fkO-pki"))


def as_stdout_json(record: Any, resource: dict[str, Any]) -> dict[str, Any]:
    """What the stdout exporter printed for the flow of this log record."""
    a = attributes(record.attributes)
    assert record.time_unix_nano == a["flowkit.flow.end_time_unix_nano"]
    out = {
        "Etype": a["flowkit.ethernet.type"],
        "FlowDirection": {"receive": 0, "transmit": 1}[a["network.io.direction"]],
        "SrcMac": a["flowkit.source.mac"],
        "DstMac": a["flowkit.destination.mac"],
        "SrcAddr": a["source.address"],
        "DstAddr": a["destination.address"],
        "SrcPort": a["source.port"],
        "DstPort": a["destination.port"],
        "Proto": {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}.get(a["network.transport"]),
        "Bytes": a["flowkit.flow.bytes"],
        "Packets": a["flowkit.flow.packets"],
        "Interface": a.get("network.interface.name", ""),
        "TimeFlowStart": a["flowkit.flow.start_time_unix_nano"] // 10**9,
        "TimeFlowEnd": a["flowkit.flow.end_time_unix_nano"] // 10**9,
        "TimeFlowStartMs": a["flowkit.flow.start_time_unix_nano"] // 10**6,
        "TimeFlowEndMs": a["flowkit.flow.end_time_unix_nano"] // 10**6,
        "Flags": a["flowkit.tcp.flags"],
        "IcmpType": a["flowkit.icmp.type"],
        "IcmpCode": a["flowkit.icmp.code"],
        "Dscp": a["flowkit.dscp"],
        "Sampling": a["flowkit.sampling"],
    }
    if "host.ip" in resource:
        out["AgentIP"] = resource["host.ip"][0]
    return out


def _frozen(d: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted(d.items()))


# -- a real agent, logs and metrics -------------------------------------------------------------


@pytest.fixture(scope="module")
def agent_run() -> Iterator[dict[str, Any]]:
    receiver = Receiver()
    try:
        env = clean_env(
            SYNTHETIC, EXPORT="stdout,otlp", OTLP_ENDPOINT=f"127.0.0.1:{receiver.port}",
            SYNTHETIC_FLOWS="40", SYNTHETIC_MAX_RECORDS="4000", SYNTHETIC_RATE="4000",
            CACHE_ACTIVE_TIMEOUT="200ms", AGENT_IP="198.18.0.254", OTLP_METRICS="true",
            OTLP_METRICS_ATTRIBUTES="source.address,destination.port,network.transport",
            OTLP_METRICS_MAX_SERIES="3", OTLP_MESSAGE_MAX_FLOWS="7",
            OTLP_HEADERS="authorization=Bearer%20t0ken,x-tenant=fk",
        )
        with AgentProcess([], env) as agent:
            agent.wait_for_packets(4000, timeout=60)
            assert agent.stop() == 0
        stats = {}
        for record in agent.log_records():
            if record.get("msg", "").startswith("flowkit agent stopped: "):
                stats = ast.literal_eval(record["msg"].split(": ", 1)[1])
        yield {"stdout": agent.flows, "receiver": receiver, "stats": stats}
    finally:
        receiver.stop()


def test_every_flow_printed_arrives_as_one_log_record_with_the_same_values(
    agent_run: dict[str, Any],
) -> None:
    receiver: Receiver = agent_run["receiver"]
    stdout = agent_run["stdout"]
    assert sum(f["Packets"] for f in stdout) == 4000
    records = receiver.wait_records(len(stdout))
    resource = attributes(receiver.logs[0].resource_logs[0].resource.attributes)
    assert resource["service.name"] == "flowkit-agent"
    assert resource["host.ip"] == ["198.18.0.254"]
    got = collections.Counter(_frozen(as_stdout_json(r, resource)) for r in records)
    assert got == collections.Counter(_frozen(f) for f in stdout)
    assert all(len(req.resource_logs[0].scope_logs[0].log_records) <= 7 for req in receiver.logs)
    assert agent_run["stats"]["otlp_sent_flows"] == agent_run["stats"]["evicted_flows"]
    assert all(m.get("authorization") == "Bearer t0ken" and m.get("x-tenant") == "fk"
               for m in receiver.metadata)


def test_metric_totals_equal_the_flows_although_the_budget_folds_series(
    agent_run: dict[str, Any],
) -> None:
    receiver: Receiver = agent_run["receiver"]
    stdout = agent_run["stdout"]
    totals = {"flowkit.flow.bytes": 0, "flowkit.flow.packets": 0}
    overflow_seen = False
    for request in receiver.metrics:
        for metric in request.resource_metrics[0].scope_metrics[0].metrics:
            assert metric.sum.is_monotonic
            points = metric.sum.data_points
            assert len(points) <= 3 + 1
            for point in points:
                attrs = attributes(point.attributes)
                if attrs == {"otel.metric.overflow": True}:
                    overflow_seen = True
                else:
                    assert set(attrs) == {"source.address", "destination.port",
                                          "network.transport"}
                totals[metric.name] += point.as_int
    assert overflow_seen
    assert totals["flowkit.flow.bytes"] == sum(f["Bytes"] for f in stdout)
    assert totals["flowkit.flow.packets"] == sum(f["Packets"] for f in stdout) == 4000


# -- in-process: transports, TLS, failures --------------------------------------------------------


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.metrics = Metrics()
        settings.setdefault("otlp_retry_initial_backoff", 0.05)
        settings.setdefault("otlp_retry_max_backoff", 0.2)
        self.exporter = OtlpExporter(OtlpSettings(**settings), self.metrics, "fd00::fe")

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(f"ebpf_agent_{name}", labels) or 0.0


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**settings: Any) -> Harness:
        h = Harness(**settings)
        made.append(h)
        return h

    yield make
    for h in made:
        h.exporter.shutdown(1)


def test_tls_and_mutual_tls(receivers: Any, harness: Any, pki: Pki) -> None:
    server_creds = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(), require_client_auth=True)
    receiver = receivers(tls=server_creds)
    h = harness(otlp_endpoint=f"127.0.0.1:{receiver.port}", otlp_tls_ca_cert_path=str(pki.ca),
                otlp_tls_user_cert_path=str(pki.client_cert),
                otlp_tls_user_key_path=str(pki.client_key))
    h.exporter.export(synthetic_flows(n_flows=5))
    assert h.exporter.flush(20)
    assert len(receiver.records()) == 5
    assert h.value("otlp_sent_flows_total") == 5


@pytest.mark.parametrize("problem", ["wrong_ca", "no_client_cert"])
def test_tls_failures_are_retried_counted_and_logged_once(
    receivers: Any, harness: Any, pki: Pki, problem: str, caplog: pytest.LogCaptureFixture,
) -> None:
    server_creds = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(), require_client_auth=True)
    receiver = receivers(tls=server_creds)
    settings: dict[str, Any] = {"otlp_endpoint": f"127.0.0.1:{receiver.port}",
                                "otlp_tls_ca_cert_path": str(pki.ca)}
    if problem == "wrong_ca":
        settings.update(otlp_tls_ca_cert_path=str(pki.other_ca),
                        otlp_tls_user_cert_path=str(pki.client_cert),
                        otlp_tls_user_key_path=str(pki.client_key))
    h = harness(**settings)
    h.exporter.export(synthetic_flows(n_flows=5))
    assert not h.exporter.flush(1.5)
    assert receiver.records() == []
    errors = sum(s.value for fam in h.metrics.registry.collect() for s in fam.samples
                 if s.name == "ebpf_agent_otlp_send_errors_total")
    assert errors >= 2  # retried
    lines = [r.getMessage() for r in caplog.records if "cannot send" in r.getMessage()]
    assert len(lines) == 1
    assert "TLS is on" in lines[0]
    assert "OTLP_TLS_CA_CERT_PATH" in lines[0]
    h.exporter.shutdown(0.2)
    assert h.value("dropped_flows_total", exporter="otlp", reason="shutdown") == 5


def test_collector_down_then_up_receives_everything_in_order(receivers: Any, harness: Any) -> None:
    port = free_port()
    h = harness(otlp_endpoint=f"127.0.0.1:{port}", otlp_message_max_flows=3)
    for _ in range(3):
        h.exporter.export(synthetic_flows(n_flows=4))
    time.sleep(0.5)
    assert h.value("otlp_send_errors_total", code="UNAVAILABLE") >= 1
    receiver = receivers(port=port)
    assert h.exporter.flush(20)
    assert len(receiver.records()) == 12
    assert h.value("otlp_sent_flows_total") == 12
    assert h.value("dropped_flows_total", exporter="otlp", reason="buffer_full") == 0


def test_buffer_bound_drops_and_counts(harness: Any) -> None:
    h = harness(otlp_endpoint=f"127.0.0.1:{free_port()}", otlp_buffer_max_flows=10,
                otlp_message_max_flows=4)
    h.exporter.export(synthetic_flows(n_flows=8))  # two requests of 4: both fit
    h.exporter.export(synthetic_flows(n_flows=8))  # room for none of its requests
    assert h.value("dropped_flows_total", exporter="otlp", reason="buffer_full") == 8
    h.exporter.shutdown(0.2)
    assert h.value("dropped_flows_total", exporter="otlp", reason="shutdown") == 8


def test_refused_request_is_dropped_and_counted(receivers: Any, harness: Any) -> None:
    receiver = receivers(refuse=grpc.StatusCode.INVALID_ARGUMENT)
    h = harness(otlp_endpoint=f"127.0.0.1:{receiver.port}")
    h.exporter.export(synthetic_flows(n_flows=6))
    assert h.exporter.flush(10)
    assert h.value("dropped_flows_total", exporter="otlp", reason="rejected") == 6
    assert h.value("otlp_send_errors_total", code="INVALID_ARGUMENT") == 1


def test_partial_success_counts_the_rejected_records(receivers: Any, harness: Any) -> None:
    receiver = receivers(partial=2)
    h = harness(otlp_endpoint=f"127.0.0.1:{receiver.port}")
    h.exporter.export(synthetic_flows(n_flows=6))
    assert h.exporter.flush(10)
    assert h.value("dropped_flows_total", exporter="otlp", reason="rejected") == 2
    assert h.value("otlp_sent_flows_total") == 4


class _HttpReceiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver; with ``answer_when``, it holds every reply until a request for each
    of those paths has arrived (at most 5 s), so that those requests are in flight together."""

    def __init__(self, status: int = 200, answer_when: frozenset[str] = frozenset(),
                 close_idle: bool = False) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.status = status
        self.reply_errors: list[str] = []
        arrived = threading.Condition()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            # close_idle: answer as HTTP/1.1 (the client keeps the connection), then close it at
            # once as a collector's idle timeout would.
            protocol_version = "HTTP/1.1" if close_idle else "HTTP/1.0"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with arrived:
                    outer.requests.append(
                        (self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    arrived.notify_all()
                    arrived.wait_for(
                        lambda: answer_when <= {p for p, _, _ in outer.requests}, 5)
                reply = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                try:
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError as exc:  # the client hung up before its reply
                    outer.reply_errors.append(f"{self.path}: {exc!r}")
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_http_protobuf_with_headers(harness: Any) -> None:
    server = _HttpReceiver()
    try:
        h = harness(otlp_endpoint=f"http://127.0.0.1:{server.server_address[1]}",
                    otlp_protocol="http/protobuf", otlp_headers="x-api-key=s3cr%3Dt",
                    otlp_metrics=True)
        batch = synthetic_flows(n_flows=5)
        h.exporter.export(batch)
        assert h.exporter.flush(10)
        paths = [p for p, _, _ in server.requests]
        # Logs and metrics go out on their own requests, in no fixed order.
        assert set(paths) == {"/v1/logs", "/v1/metrics"}
        logs = [(headers, body) for path, headers, body in server.requests if path == "/v1/logs"]
        for headers, _body in logs:
            assert headers["content-type"] == "application/x-protobuf"
            assert headers["x-api-key"] == "s3cr=t"
        requests = [logs_service_pb2.ExportLogsServiceRequest.FromString(b) for _, b in logs]
        records = [record for request in requests for resource in request.resource_logs
                   for scope in resource.scope_logs for record in scope.log_records]
        assert len(records) == 5
        assert h.value("otlp_sent_flows_total") == 5
    finally:
        server.shutdown()


def test_http_logs_and_metrics_in_flight_together_are_each_sent_once(harness: Any) -> None:
    # The receiver answers neither request before it has both: the logs and metrics senders
    # must not share one HTTP connection (one would find it busy, fail, and make the other's
    # request fail after the receiver got it, which is then sent twice).
    server = _HttpReceiver(answer_when=frozenset({"/v1/logs", "/v1/metrics"}))
    try:
        h = harness(otlp_endpoint=f"http://127.0.0.1:{server.server_address[1]}",
                    otlp_protocol="http/protobuf", otlp_metrics=True)
        for _ in range(3):
            h.exporter.export(synthetic_flows(n_flows=4))
            assert h.exporter.flush(10)
        paths = collections.Counter(p for p, _, _ in server.requests)
        assert paths == {"/v1/logs": 3, "/v1/metrics": 3}
        assert server.reply_errors == []
        assert h.value("otlp_sent_flows_total") == 12
        assert h.value("otlp_sent_requests_total", signal="logs") == 3
        assert h.value("otlp_sent_requests_total", signal="metrics") == 3
        errors = [s for fam in h.metrics.registry.collect() for s in fam.samples
                  if s.name == "ebpf_agent_otlp_send_errors_total" and s.value]
        assert errors == []
    finally:
        server.shutdown()


def test_http_idle_connection_closed_by_the_collector_is_reopened_without_an_error(
    harness: Any,
) -> None:
    server = _HttpReceiver(close_idle=True)
    try:
        h = harness(otlp_endpoint=f"http://127.0.0.1:{server.server_address[1]}",
                    otlp_protocol="http/protobuf")
        for _ in range(3):
            h.exporter.export(synthetic_flows(n_flows=2))
            assert h.exporter.flush(10)
            time.sleep(0.2)  # the receiver has closed the kept-alive connection by now
        assert [p for p, _, _ in server.requests] == ["/v1/logs"] * 3
        assert h.value("otlp_sent_flows_total") == 6
        errors = [s for fam in h.metrics.registry.collect() for s in fam.samples
                  if s.name == "ebpf_agent_otlp_send_errors_total" and s.value]
        assert errors == []
    finally:
        server.shutdown()


def test_http_503_is_retried_and_400_is_dropped(harness: Any) -> None:
    server = _HttpReceiver(status=503)
    try:
        h = harness(otlp_endpoint=f"http://127.0.0.1:{server.server_address[1]}",
                    otlp_protocol="http/protobuf")
        h.exporter.export(synthetic_flows(n_flows=2))
        time.sleep(0.5)
        assert len(server.requests) >= 2  # retried
        server.status = 400
        assert h.exporter.flush(10)
        assert h.value("dropped_flows_total", exporter="otlp", reason="rejected") == 2
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "missing setting OTLP_ENDPOINT"),
        ({"OTLP_ENDPOINT": "ftp://x:1"}, "invalid settings?: .*unknown scheme 'ftp'"),
        ({"OTLP_ENDPOINT": "h:1", "OTLP_PROTOCOL": "http/json"},
         "invalid setting OTLP_PROTOCOL='http/json'"),
        ({"OTLP_ENDPOINT": "h:1", "OTLP_METRICS_ATTRIBUTES": "user.id"},
         "invalid setting OTLP_METRICS_ATTRIBUTES.*unknown metric attribute 'user.id'"),
        ({"OTLP_ENDPOINT": "h:1", "OTLP_HEADERS": "novalue"},
         "invalid setting OTLP_HEADERS.*is not key=value"),
        ({"OTLP_ENDPOINT": "h:1", "OTLP_LOGS": "false"}, "invalid settings?: .*nothing would"),
    ],
    ids=lambda v: None if isinstance(v, dict) else v.split(" ")[-1][:20],
)
def test_bad_otlp_settings_exit_2_with_one_line(env: dict[str, str], expected: str) -> None:
    import re

    result = run([], clean_env(SYNTHETIC, EXPORT="otlp", SYNTHETIC_RATE="0", **env))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.match(f"flowkit-agent: {expected}", lines[0]), lines[0]


def test_missing_extra_names_what_to_install(tmp_path: Path) -> None:
    # A directory shadowing the opentelemetry package makes the import fail like a missing extra.
    (tmp_path / "opentelemetry").mkdir()
    (tmp_path / "opentelemetry" / "__init__.py").write_text("raise ImportError('absent')\n")
    env = clean_env(SYNTHETIC, EXPORT="otlp", OTLP_ENDPOINT="127.0.0.1:4317",
                    SYNTHETIC_RATE="0", PYTHONPATH=str(tmp_path))
    result = run([], env)
    assert result.returncode != 0
    assert "pip install 'flowkit-ebpf[otlp]'" in result.stderr


def test_spool_keeps_requests_across_an_outage_and_a_restart(
    receivers: Any, tmp_path: Path
) -> None:
    port = free_port()
    spool = str(tmp_path / "otlp-spool")
    down = Harness(otlp_endpoint=f"127.0.0.1:{port}", otlp_spool_dir=spool,
                   otlp_buffer_max_flows=5)
    for _ in range(4):
        down.exporter.export(synthetic_flows(n_flows=6))  # 24 flows, beyond the memory bound
    down.exporter.shutdown(0.3)
    assert down.value("otlp_sent_flows_total") == 0
    assert down.value("dropped_flows_total", exporter="otlp", reason="buffer_full") == 0
    receiver = receivers(port=port)
    up = Harness(otlp_endpoint=f"127.0.0.1:{port}", otlp_spool_dir=spool)
    try:
        assert up.exporter.flush(20)
        assert len(receiver.records()) == 24
        assert up.value("otlp_sent_flows_total") == 24
    finally:
        up.exporter.shutdown(1)


def test_the_otlp_exporter_passes_the_conformance_kit() -> None:
    import contextlib as _contextlib

    from flowkit.testing import check_exporter
    from flowkit_plugins import otlp_exporter

    port = free_port()
    state = {"receiver": Receiver(port=port)}

    def delivered() -> int:
        return len(state["receiver"].records()) + state.get("before", 0)  # type: ignore[operator]

    @_contextlib.contextmanager
    def stalled() -> Iterator[None]:
        state["before"] = delivered()
        state["receiver"].stop()
        try:
            yield
        finally:
            state["receiver"] = Receiver(port=port)

    try:
        spec = otlp_exporter.flowkit_exporters()[0]
        settings = spec.settings_model.model_validate({  # type: ignore[union-attr]
            "otlp_endpoint": f"127.0.0.1:{port}", "otlp_retry_initial_backoff": 0.05,
            "otlp_retry_max_backoff": 0.2, "otlp_buffer_max_flows": 2000, "otlp_timeout": 2.0,
        })
        ran = check_exporter(spec, settings, delivered=delivered, stall=stalled)
        assert "bounded_memory" in ran
    finally:
        state["receiver"].stop()
