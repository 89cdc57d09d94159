"""Agent metrics: Prometheus counters and gauges with NetObserv's names.

Components get a :class:`Metrics` through their context and create their instruments from it;
the prefix (METRICS_PREFIX, default ``ebpf_agent_``) is applied here. Tests and the CLI read
current values with :meth:`Metrics.value`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _CallbackCollector(Collector):
    """Reads values at scrape time (e.g. native counters), instead of keeping copies."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._name, self._doc, self._read = name, documentation, read

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._name, self._doc)
        family.add_metric([], float(self._read()))
        yield family


class Metrics:
    """A registry of the agent's instruments. Thread-safe (prometheus_client's own locking)."""

    def __init__(self, prefix: str = "ebpf_agent_") -> None:
        self.prefix = prefix
        self.registry = CollectorRegistry(auto_describe=True)
        self._instruments: dict[str, Any] = {}

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        """Get or create the counter ``<prefix><name>`` (without the ``_total`` suffix)."""
        return self._get(Counter, name, documentation, labelnames)  # type: ignore[no-any-return]

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        """Get or create the gauge ``<prefix><name>``."""
        return self._get(Gauge, name, documentation, labelnames)  # type: ignore[no-any-return]

    def gauge_callback(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Expose ``read()`` as the gauge ``<prefix><name>``, evaluated at scrape time."""
        full = self.prefix + name
        if full not in self._instruments:
            collector = _CallbackCollector(full, documentation, read)
            self.registry.register(collector)
            self._instruments[full] = collector

    def _get(self, cls: type, name: str, documentation: str, labelnames: Sequence[str]) -> Any:
        full = self.prefix + name
        instrument = self._instruments.get(full)
        if instrument is None:
            instrument = cls(full, documentation, list(labelnames), registry=self.registry)
            self._instruments[full] = instrument
        return instrument

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (``name`` without prefix; counters need ``_total``)."""
        sample = self.registry.get_sample_value(self.prefix + name, labels or None)
        return 0.0 if sample is None else sample


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text format) and ``/health`` (JSON) over HTTP.

    ``/health`` answers 200 when ``health()`` says ``"status": "ok"`` and 503 otherwise, so a
    Kubernetes probe or a load balancer can use it as is. Binding errors (port in use, an address
    that does not resolve) raise ``OSError`` from the constructor, before anything else starts.
    """

    def __init__(
        self,
        metrics: Metrics,
        address: str,
        port: int,
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        import socket
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import orjson
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        registry = metrics.registry
        read_health = health or (lambda: {"status": "ok"})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/metrics", "/"):
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                elif path in ("/health", "/healthz"):
                    state = read_health()
                    status = 200 if state.get("status") == "ok" else 503
                    self._send(status, "application/json", orjson.dumps(state))
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /health\n")

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape would drown the agent's log

        host = address or "0.0.0.0"  # noqa: S104 (documented default: every address)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family = infos[0][0]

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        sockaddr = infos[0][4]
        self._server = Server((str(sockaddr[0]), int(sockaddr[1])), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="flowkit-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
