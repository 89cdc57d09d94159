"""The ``otlp`` exporter: flows to an OpenTelemetry collector as OTLP logs (and metrics).

Each flow becomes one log record (:mod:`flowkit.otlp` lists the attributes); with
``OTLP_METRICS=true`` every batch also yields ``flowkit.flow.bytes`` / ``flowkit.flow.packets``
delta sums broken down by ``OTLP_METRICS_ATTRIBUTES``, at most ``OTLP_METRICS_MAX_SERIES``
series plus one overflow series. Requests go over gRPC (``OTLP_PROTOCOL=grpc``, the
``LogsService/Export`` and ``MetricsService/Export`` calls) or HTTP (``http/protobuf``, POST
``/v1/logs`` and ``/v1/metrics``), plain text or TLS, with ``OTLP_HEADERS``.

Failure behaviour is flowkit's one delivery rule (:mod:`flowkit.delivery`, as the ``grpc``
exporter): ``export`` encodes and queues, never waiting for the collector; the queue holds at most
``OTLP_BUFFER_MAX_FLOWS`` flows, more are dropped and counted
(``dropped_flows{exporter="otlp",reason="buffer_full"}``) or written to the disk spool of
``OTLP_SPOOL_DIR``;
a sender thread delivers requests in order and retries the transient failures OTLP defines (gRPC
UNAVAILABLE, ...; HTTP 429, 502, 503, 504, connection errors) after a jittered exponential
backoff; a permanent refusal drops the request (``reason="rejected"``), as do records a
collector reports as rejected in a partial success; ``shutdown`` interrupts the backoff, sends
until its deadline and spools or counts the rest (``reason="shutdown"``).

``opentelemetry-proto`` and ``grpcio`` (extra ``flowkit-ebpf[otlp]``) are imported by the factory.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flowkit import hookimpl
from flowkit import peer_settings as shared
from flowkit.accounts import ExporterAccount
from flowkit.components import ComponentContext, ExporterSpec
from flowkit.delivery import Outcome, RetryPolicy, Sender, Split
from flowkit.ratelimit import RateLimitedLog
from flowkit.settings_types import Bool, ByteSize, CommaList, Duration
from flowkit.spool import FsyncPolicy, check_spool_settings, open_spool

if TYPE_CHECKING:
    from flowkit.metrics import Metrics
    from flowkit.model import FlowBatch

log = logging.getLogger(__name__)

_LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
_METRICS_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
# OTLP/gRPC: the codes a client retries (the specification's list).
_RETRYABLE_GRPC = frozenset(
    {"CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS",
     "RESOURCE_EXHAUSTED"}
)
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_METRIC_ATTRIBUTES = (
    "source.address",
    "source.port",
    "destination.address",
    "destination.port",
    "network.transport",
    "network.type",
    "network.io.direction",
    "network.interface.name",
    "flowkit.dscp",
    "flowkit.ethernet.type",
    "flowkit.interface.index",
)


def parse_headers(text: str) -> list[tuple[str, str]]:
    """``key1=value1,key2=value2`` (OTEL_EXPORTER_OTLP_HEADERS syntax, values URL-encoded)."""
    headers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or not key or any(c in key for c in " \t:\r\n"):
            raise ValueError(f"OTLP_HEADERS: {item!r} is not key=value")
        headers.append((key, urllib.parse.unquote(value.strip())))
    return headers


class OtlpSettings(BaseModel):
    """Settings of the ``otlp`` exporter (environment variable = field name upper-cased)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    otlp_endpoint: str = Field(
        min_length=1,
        description="Collector address: host:port (gRPC default port 4317, HTTP 4318), or a URL "
        "http://host:port or https://host:port (https turns TLS on).",
    )
    otlp_protocol: Literal["grpc", "http/protobuf"] = Field(
        default="grpc", description="grpc or http/protobuf."
    )
    otlp_headers: str = Field(
        default="",
        description="Extra request headers / gRPC metadata: key=value,key2=value2 "
        "(values URL-encoded), e.g. authorization=Bearer%20TOKEN.",
    )
    otlp_tls_ca_cert_path: str = shared.tls_ca_cert_path("the collector's")
    otlp_tls_user_cert_path: str = shared.tls_user_cert_path("OTLP_TLS_USER_KEY_PATH")
    otlp_tls_user_key_path: str = shared.tls_user_key_path("OTLP_TLS_USER_CERT_PATH")
    otlp_timeout: Duration = Field(default=10.0, gt=0, description="Deadline of one request.")
    otlp_retry_initial_backoff: Duration = shared.retry_initial_backoff("a request")
    otlp_retry_max_backoff: Duration = shared.retry_max_backoff("a request")
    otlp_buffer_max_flows: int = Field(
        default=100_000, ge=1, description="Most flows queued for the collector; more are dropped "
        "and counted."
    )
    otlp_message_max_flows: int = Field(
        default=1000, ge=1, description="Most log records in one request."
    )
    otlp_logs: Bool = Field(default=True, description="Send one log record per flow.")
    otlp_metrics: Bool = Field(
        default=False, description="Also send bytes and packets sums per batch (OTLP metrics)."
    )
    otlp_metrics_attributes: CommaList = Field(
        default_factory=lambda: ["source.address", "destination.address", "network.transport"],
        description="Attributes the metrics are broken down by: " + ", ".join(_METRIC_ATTRIBUTES)
        + " (empty: one series).",
    )
    otlp_metrics_max_series: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Most series per batch (the largest by bytes); the rest is summed into one "
        "series with otel.metric.overflow=true.",
    )
    otlp_service_name: str = Field(
        default="flowkit-agent", description="service.name resource attribute."
    )
    otlp_spool_dir: str = shared.spool_dir("the collector is unreachable", "requests")
    otlp_spool_max_bytes: ByteSize = shared.spool_max_bytes()
    otlp_spool_segment_bytes: ByteSize = shared.spool_segment_bytes()
    otlp_spool_fsync: FsyncPolicy = shared.spool_fsync()

    @field_validator("otlp_headers")
    @classmethod
    def _check_headers(cls, value: str) -> str:
        parse_headers(value)
        return value

    @field_validator("otlp_metrics_attributes")
    @classmethod
    def _check_attributes(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in _METRIC_ATTRIBUTES:
                raise ValueError(
                    f"unknown metric attribute {name!r}; use some of "
                    + ", ".join(_METRIC_ATTRIBUTES)
                )
        return value

    @model_validator(mode="after")
    def _check(self) -> OtlpSettings:
        self.address  # noqa: B018 - validates the endpoint
        shared.check_tls_files("OTLP", self.otlp_tls_ca_cert_path, self.otlp_tls_user_cert_path,
                               self.otlp_tls_user_key_path)
        if self.otlp_tls_user_cert_path and not self.tls:
            raise ValueError("mutual TLS needs OTLP_TLS_CA_CERT_PATH (or an https:// endpoint)")
        if not self.otlp_logs and not self.otlp_metrics:
            raise ValueError("OTLP_LOGS=false needs OTLP_METRICS=true: nothing would be sent")
        shared.check_backoff("OTLP", self.otlp_retry_initial_backoff, self.otlp_retry_max_backoff)
        check_spool_settings("OTLP", self.otlp_spool_dir, self.otlp_spool_max_bytes,
                             self.otlp_spool_segment_bytes)
        return self

    @property
    def address(self) -> tuple[str, int, str]:
        """(host, port, scheme) of the endpoint; scheme is "", "http" or "https"."""
        text = self.otlp_endpoint.strip()
        scheme = ""
        if "://" in text:
            scheme, _, text = text.partition("://")
            scheme = scheme.lower()
            if scheme not in ("http", "https"):
                raise ValueError(f"OTLP_ENDPOINT: unknown scheme {scheme!r} (http or https)")
            text = text.rstrip("/")
        parsed = urllib.parse.urlsplit("//" + text)
        try:
            port = parsed.port
        except ValueError:
            raise ValueError(f"OTLP_ENDPOINT={self.otlp_endpoint!r}: bad port") from None
        host = parsed.hostname
        if not host or parsed.path:
            raise ValueError(f"OTLP_ENDPOINT={self.otlp_endpoint!r} is not host:port or a URL")
        if port is None:
            port = 4317 if self.otlp_protocol == "grpc" else 4318
        return host, port, scheme

    @property
    def tls(self) -> bool:
        """Whether requests use TLS."""
        return bool(self.otlp_tls_ca_cert_path) or self.address[2] == "https"

    @property
    def target(self) -> str:
        host, port, _ = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Outcome:
    SENT, RETRY, REJECTED = "sent", "retry", "rejected"


class _GrpcTransport:
    def __init__(self, settings: OtlpSettings, proto: Any) -> None:
        from flowkit.pbflow import import_grpc

        grpc = import_grpc()
        self._grpc = grpc
        self._settings = settings
        max_ms = max(100, int(settings.otlp_retry_max_backoff * 1000))
        initial_ms = min(max_ms, max(100, int(settings.otlp_retry_initial_backoff * 1000)))
        options = [
            ("grpc.initial_reconnect_backoff_ms", initial_ms),
            ("grpc.min_reconnect_backoff_ms", initial_ms),
            ("grpc.max_reconnect_backoff_ms", max_ms),
            ("grpc.max_send_message_length", -1),
            ("grpc.enable_retries", 0),
        ]
        if settings.tls:
            root = Path(settings.otlp_tls_ca_cert_path).read_bytes() if \
                settings.otlp_tls_ca_cert_path else None
            cert = key = None
            if settings.otlp_tls_user_cert_path:
                cert = Path(settings.otlp_tls_user_cert_path).read_bytes()
                key = Path(settings.otlp_tls_user_key_path).read_bytes()
            creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                                 certificate_chain=cert)
            self._channel = grpc.secure_channel(settings.target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(settings.target, options=options)
        self._calls = {
            "logs": self._channel.unary_unary(
                _LOGS_METHOD,
                request_serializer=None,
                response_deserializer=proto.logs_service.ExportLogsServiceResponse.FromString,
            ),
            "metrics": self._channel.unary_unary(
                _METRICS_METHOD,
                request_serializer=None,
                response_deserializer=proto.metrics_service.ExportMetricsServiceResponse.FromString,
            ),
        }
        self._metadata = parse_headers(settings.otlp_headers) or None

    def send(self, kind: str, data: bytes) -> tuple[str, str, Any]:
        grpc = self._grpc
        try:
            response = self._calls[kind](
                data, timeout=self._settings.otlp_timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = code.name if code is not None else "UNKNOWN"
            details = (exc.details() if hasattr(exc, "details") else "") or ""
            outcome = _Outcome.RETRY if name in _RETRYABLE_GRPC else _Outcome.REJECTED
            return outcome, name, details
        return _Outcome.SENT, "OK", response

    def close(self) -> None:
        self._channel.close()


class _HttpTransport:
    def __init__(self, settings: OtlpSettings, proto: Any) -> None:
        self._settings = settings
        self._proto = proto
        self._headers = dict(parse_headers(settings.otlp_headers))
        self._headers["content-type"] = "application/x-protobuf"
        self._context: ssl.SSLContext | None = None
        if settings.tls:
            self._context = ssl.create_default_context(
                cafile=settings.otlp_tls_ca_cert_path or None
            )
            if settings.otlp_tls_user_cert_path:
                self._context.load_cert_chain(settings.otlp_tls_user_cert_path,
                                              settings.otlp_tls_user_key_path)
        # One keep-alive connection per signal: the logs and metrics senders run on their own
        # threads, and an http.client connection carries one request at a time (sharing one made
        # a busy connection fail the other signal's request after the collector had it, which
        # was then sent twice). The lock keeps it one request per connection whoever calls.
        self._connections: dict[str, http.client.HTTPConnection] = {}
        self._locks = {"logs": threading.Lock(), "metrics": threading.Lock()}

    def _connection(self, kind: str) -> http.client.HTTPConnection:
        connection = self._connections.get(kind)
        if connection is None:
            host, port, _ = self._settings.address
            timeout = self._settings.otlp_timeout
            if self._context is not None:
                connection = http.client.HTTPSConnection(host, port, timeout=timeout,
                                                         context=self._context)
            else:
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
            self._connections[kind] = connection
        return connection

    def _post(self, kind: str, path: str, data: bytes) -> tuple[http.client.HTTPResponse, bytes]:
        connection = self._connection(kind)
        reused = connection.sock is not None
        try:
            connection.request("POST", path, body=data, headers=self._headers)
            response = connection.getresponse()
        except (ConnectionResetError, BrokenPipeError):
            # A kept-alive connection the collector closed while idle fails the next request
            # before the collector read it: send it once more on a new connection at once.
            if not reused:
                raise
            self._close(kind)
            connection = self._connection(kind)
            connection.request("POST", path, body=data, headers=self._headers)
            response = connection.getresponse()
        return response, response.read()

    def send(self, kind: str, data: bytes) -> tuple[str, str, Any]:
        path = "/v1/logs" if kind == "logs" else "/v1/metrics"
        with self._locks[kind]:
            try:
                response, body = self._post(kind, path, data)
            except (OSError, http.client.HTTPException) as exc:
                # No complete response: the request may or may not have reached the collector;
                # the sender sends it again (at-least-once).
                self._close(kind)
                name = "TLS" if isinstance(exc, ssl.SSLError) else type(exc).__name__
                return _Outcome.RETRY, name, str(exc)
        if response.status == 200:
            message = (self._proto.logs_service.ExportLogsServiceResponse
                       if kind == "logs"
                       else self._proto.metrics_service.ExportMetricsServiceResponse)
            try:
                return _Outcome.SENT, "OK", message.FromString(body)
            except Exception:  # an empty or non-protobuf 200 body: delivered all the same
                return _Outcome.SENT, "OK", None
        outcome = _Outcome.RETRY if response.status in _RETRYABLE_HTTP else _Outcome.REJECTED
        return outcome, f"HTTP {response.status}", body[:200].decode("utf-8", "replace")

    def _close(self, kind: str) -> None:
        connection = self._connections.pop(kind, None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        for kind in list(self._connections):
            self._close(kind)


class OtlpExporter:
    """Sends flows to an OTLP collector through :class:`~flowkit.delivery.Sender` (see the
    module docstring).

    The signal that carries the flow accounting (logs, or metrics when ``OTLP_LOGS=false``) has
    the spool; with both signals on, metrics requests go through a second sender without spool,
    whose losses are counted in ``otlp_dropped_metric_requests`` (the flows are accounted for
    by the logs).
    """

    accounts_delivery = True
    """Flows count as exported when the collector accepted them; drops go to the books."""

    def __init__(
        self,
        settings: OtlpSettings,
        metrics: Metrics,
        agent_ip: str | None,
        account: ExporterAccount | None = None,
    ) -> None:
        from flowkit import otlp

        self._proto = otlp.import_otlp_proto()
        self._otlp = otlp
        self.settings = settings
        attributes: dict[str, str | list[str]] = {
            "service.name": settings.otlp_service_name,
            "host.name": socket.gethostname(),
        }
        if agent_ip:
            attributes["host.ip"] = [agent_ip]
        self._resource = otlp.OtlpResource(attributes)
        self._framing = self._resource.framing(self._proto)
        self._transport: _GrpcTransport | _HttpTransport = (
            _GrpcTransport(settings, self._proto)
            if settings.otlp_protocol == "grpc"
            else _HttpTransport(settings, self._proto)
        )
        self.account = account if account is not None else ExporterAccount("otlp", metrics)
        sent_flows = metrics.counter("otlp_sent_flows", "Flows delivered to the collector")

        def on_delivered(flows: int) -> None:
            sent_flows.inc(flows)
            self.account.delivered(flows)

        self._sent_flows = sent_flows
        self._sent_requests = metrics.counter("otlp_sent_requests", "OTLP requests delivered",
                                              ["signal"])
        self._errors = metrics.counter("otlp_send_errors", "Failed OTLP requests by status",
                                       ["code"])
        dropped_metrics = metrics.counter(
            "otlp_dropped_metric_requests",
            "Metrics requests not delivered while logs carry the flows", ["reason"])
        self._problems = RateLimitedLog(log)
        self._last_metrics_ns = time.time_ns()

        def on_drop(reason: str, flows: int) -> None:
            self.account.dropped(flows, reason)

        spool = open_spool(
            "OTLP",
            settings.otlp_spool_dir,
            settings.otlp_spool_max_bytes,
            settings.otlp_spool_segment_bytes,
            settings.otlp_spool_fsync,
            name="otlp",
            metrics=metrics,
            on_drop=on_drop,
        )
        retry = RetryPolicy(settings.otlp_retry_initial_backoff, settings.otlp_retry_max_backoff)
        target = f"collector {settings.target}"
        self._logs: Sender | None = None
        self._metrics: Sender | None = None
        if settings.otlp_logs:
            self._logs = Sender(
                "otlp", lambda data, flows: self._send_one("logs", data, flows),
                max_buffered_flows=settings.otlp_buffer_max_flows, retry=retry, spool=spool,
                on_drop=on_drop, on_delivered=on_delivered, target=target,
                buffer_setting="OTLP_BUFFER_MAX_FLOWS",
            )
        if settings.otlp_metrics:
            carries = self._logs is None
            self._metrics = Sender(
                "otlp-metrics", lambda data, flows: self._send_one("metrics", data, flows),
                max_buffered_flows=settings.otlp_buffer_max_flows, retry=retry,
                spool=spool if carries else None,
                on_drop=on_drop if carries
                else (lambda reason, flows: dropped_metrics.labels(reason=reason).inc()),
                on_delivered=on_delivered if carries else (lambda flows: None),
                target=target, buffer_setting="OTLP_BUFFER_MAX_FLOWS",
            )
        metrics.gauge_callback(
            "otlp_buffered_flows", "Flows waiting for the OTLP collector",
            lambda: float((self._logs or self._metrics).buffered_flows),  # type: ignore[union-attr]
        )
        log.info("otlp exporter sending %s to %s over %s (%s)",
                 "+".join(s for s, on in (("logs", settings.otlp_logs),
                                          ("metrics", settings.otlp_metrics)) if on),
                 settings.target, settings.otlp_protocol, "TLS" if settings.tls else "plain text")

    # -- Exporter protocol ------------------------------------------------------------------
    def export(self, batch: FlowBatch) -> None:
        """Encode the batch into requests and queue them; never waits for the collector."""
        total = len(batch)
        if total == 0:
            return
        s = self.settings
        otlp = self._otlp
        if self._logs is not None:
            records = otlp.encode_log_records(batch)
            payloads = []
            begin = 0
            for first in range(0, total, s.otlp_message_max_flows):
                last = min(first + s.otlp_message_max_flows, total)
                end = records.ends[last - 1]
                payloads.append((otlp.wrap_log_records(records.data[begin:end], *self._framing),
                                 last - first))
                begin = end
            self._logs.offer(payloads)
        if self._metrics is not None:
            series = otlp.aggregate(batch, s.otlp_metrics_attributes, s.otlp_metrics_max_series)
            now = time.time_ns()
            data = otlp.metrics_request(series, self._resource, self._last_metrics_ns, now)
            self._last_metrics_ns = now
            self._metrics.offer([(data, total)])

    def _senders(self) -> list[Sender]:
        return [x for x in (self._logs, self._metrics) if x is not None]

    def spooled_flows(self) -> int:
        """Flows waiting in the disk spool (0 without one)."""
        return sum(x.spooled_flows() for x in self._senders())

    def recovered_flows(self) -> int:
        """Flows found in the disk spool at start, left by an earlier run (0 without a spool)."""
        return sum(x.recovered_flows() for x in self._senders())

    def flush(self, timeout: float) -> bool:
        """Wait until every queued request was delivered (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        return all(x.flush(max(0.0, deadline - time.monotonic())) for x in self._senders())

    def shutdown(self, timeout: float) -> None:
        """Send what can be sent within ``timeout``, spool or count the rest, close."""
        deadline = time.monotonic() + timeout
        for sender in self._senders():
            sender.shutdown(max(0.1, deadline - time.monotonic()))
        self._transport.close()

    # -- one attempt (called by a sender thread) ----------------------------------------------
    def _send_one(self, kind: str, data: bytes, flows: int) -> Outcome | Split:
        # The parts of a partial success (see below): delivered, and rejected by the collector.
        if data == b"":
            return Outcome.SENT
        if data == b"R":
            return Outcome.REJECTED
        outcome, code, detail = self._transport.send(kind, data)
        target = self.settings.target
        if outcome == _Outcome.SENT:
            self._sent_requests.labels(signal=kind).inc()
            self._problems.recovered("send", logging.INFO, "otlp collector %s is reachable "
                                     "again", target)
            partial = getattr(detail, "partial_success", None)
            rejected = 0
            if partial is not None and kind == "logs":
                rejected = min(flows, int(partial.rejected_log_records))
            if rejected and partial is not None:
                self._problems.emit("partial", logging.WARNING,
                                    "otlp: collector %s rejected %d of %d log records: %s",
                                    target, rejected, flows, partial.error_message)
                return Split([(b"", flows - rejected), (b"R", rejected)])
            return Outcome.SENT
        self._errors.labels(code=code).inc()
        if outcome == _Outcome.RETRY:
            hint = ""
            if self.settings.tls:
                hint = (" (TLS is on: if the collector is up, check that OTLP_TLS_CA_CERT_PATH "
                        "signed its certificate and that it matches the endpoint's host; for "
                        "mutual TLS, OTLP_TLS_USER_CERT_PATH / OTLP_TLS_USER_KEY_PATH)")
            self._problems.emit("send", logging.ERROR,
                                "otlp: cannot send to collector %s (%s: %s); keeping flows and "
                                "retrying%s", target, code, detail.strip()[:300], hint)
            return Outcome.RETRY
        self._problems.emit("send", logging.ERROR,
                            "otlp: collector %s refused a %s request of %d flows (%s: %s); "
                            "dropped it", target, kind, flows, code, detail.strip()[:300])
        return Outcome.REJECTED


def _make_exporter(context: ComponentContext) -> OtlpExporter:
    settings: OtlpSettings = context.settings
    return OtlpExporter(settings, context.metrics, context.config.agent_ip, context.account)


@hookimpl
def flowkit_exporters() -> list[ExporterSpec]:
    """The ``otlp`` exporter."""
    return [
        ExporterSpec(
            name="otlp",
            factory=_make_exporter,
            settings_model=OtlpSettings,
            requires=("opentelemetry.proto", "grpc"),
            extra="otlp",
            description="OpenTelemetry: one OTLP log record per flow (and optional bytes/packets "
            "metrics) over gRPC or HTTP/protobuf to OTLP_ENDPOINT",
        )
    ]
