"""The ``grpc`` exporter: flows to a ``pbflow.Collector`` (NetObserv's gRPC protocol).

Every batch is encoded as ``pbflow.Records`` messages of at most ``GRPC_MESSAGE_MAX_FLOWS``
flows and sent with the unary ``pbflow.Collector/Send`` call to ``TARGET_HOST:TARGET_PORT``
(plain text, TLS with ``TARGET_TLS_CA_CERT_PATH``, mutual TLS adding
``TARGET_TLS_USER_CERT_PATH`` and ``TARGET_TLS_USER_KEY_PATH``).

Failure behaviour is flowkit's one buffering and retry rule (:mod:`flowkit.delivery`): this
module only encodes batches and makes single ``Send`` attempts, classified as

* delivered;
* retryable (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN,
  CANCELLED): kept and retried, oldest first, after a jittered exponential backoff between
  ``GRPC_RETRY_INITIAL_BACKOFF`` and ``GRPC_RETRY_MAX_BACKOFF``; the channel reconnects by
  itself;
* too large: split in two halves, sent at once;
* rejected for good (INVALID_ARGUMENT, UNIMPLEMENTED, PERMISSION_DENIED, UNAUTHENTICATED, ...):
  dropped (``reason="rejected"``).

The memory buffer holds ``GRPC_BUFFER_MAX_FLOWS`` flows (beyond: ``reason="buffer_full"``); with
``GRPC_SPOOL_DIR`` what cannot be delivered is kept on disk instead and replayed in order, also
after a restart (:mod:`flowkit.spool`). ``shutdown`` interrupts the backoff, sends what it can
before its deadline and spools or drops the rest (``reason="shutdown"``). Problems are logged
once when they start (a TLS verification failure names the CA setting), then at most every 30
seconds, and recovery is logged once. No tracebacks.

grpcio (extra ``flowkit-ebpf[grpc]``) is imported by the factory only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flowkit import hookimpl
from flowkit import peer_settings as shared
from flowkit.accounts import ExporterAccount
from flowkit.components import ComponentContext, ExporterSpec
from flowkit.delivery import Outcome, RetryPolicy, Sender, Split
from flowkit.pbflow import import_grpc
from flowkit.ratelimit import RateLimitedLog
from flowkit.settings_types import ByteSize, Duration
from flowkit.spool import FsyncPolicy, Spool, check_spool_settings, open_spool

if TYPE_CHECKING:
    import grpc

    from flowkit.metrics import Metrics
    from flowkit.model import FlowBatch
    from flowkit.pbflow.service import SendCallable

log = logging.getLogger(__name__)

ACCEPTED_RECORDS_KEY = "fk-accepted-records"
"""Trailing metadata of a rejected message: how many of its records the collector kept."""

_RETRYABLE = frozenset(
    {
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "INTERNAL",
        "UNKNOWN",
        "CANCELLED",
    }
)
_TLS_HINTS = (
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "Handshake failed",
    "handshake failed",
    "SSL_ERROR",
    "tls",
)


class GrpcSettings(BaseModel):
    """Settings of the ``grpc`` exporter (environment variable = field name upper-cased)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_host: str = Field(
        min_length=1,
        description="Host name or address of the pbflow collector (required when EXPORT "
        "includes grpc).",
        json_schema_extra={"env_aliases": ["FLOWS_TARGET_HOST"]},
    )
    target_port: int = Field(
        ge=1,
        le=65535,
        description="TCP port of the pbflow collector (required when EXPORT includes grpc).",
        json_schema_extra={"env_aliases": ["FLOWS_TARGET_PORT"]},
    )
    grpc_message_max_flows: int = Field(
        default=10000,
        ge=1,
        description="Most flows in one gRPC message; larger batches are split.",
    )
    target_tls_ca_cert_path: str = shared.tls_ca_cert_path("the collector's")
    target_tls_user_cert_path: str = shared.tls_user_cert_path("TARGET_TLS_USER_KEY_PATH")
    target_tls_user_key_path: str = shared.tls_user_key_path("TARGET_TLS_USER_CERT_PATH")
    grpc_timeout: Duration = Field(
        default=10.0, gt=0, description="Deadline of one Send call (e.g. 10s)."
    )
    grpc_retry_initial_backoff: Duration = shared.retry_initial_backoff("a failed Send")
    grpc_retry_max_backoff: Duration = shared.retry_max_backoff("a failed Send")
    grpc_buffer_max_flows: int = Field(
        default=100_000,
        ge=1,
        description="Most flows kept in memory while the collector is unreachable; more are "
        "dropped and counted in dropped_flows{reason=\"buffer_full\"} (with GRPC_SPOOL_DIR: "
        "written to the spool).",
    )
    grpc_spool_dir: str = shared.spool_dir("the collector is unreachable", "messages")
    grpc_spool_max_bytes: ByteSize = shared.spool_max_bytes()
    grpc_spool_segment_bytes: ByteSize = shared.spool_segment_bytes()
    grpc_spool_fsync: FsyncPolicy = shared.spool_fsync()

    @model_validator(mode="after")
    def _check_pairs(self) -> GrpcSettings:
        shared.check_tls_files("TARGET", self.target_tls_ca_cert_path,
                               self.target_tls_user_cert_path, self.target_tls_user_key_path)
        if self.target_tls_user_cert_path and not self.target_tls_ca_cert_path:
            raise ValueError("mutual TLS needs TARGET_TLS_CA_CERT_PATH as well")
        shared.check_backoff("GRPC", self.grpc_retry_initial_backoff, self.grpc_retry_max_backoff)
        check_spool_settings(
            "GRPC", self.grpc_spool_dir, self.grpc_spool_max_bytes, self.grpc_spool_segment_bytes
        )
        return self

    @property
    def target(self) -> str:
        """``host:port`` as gRPC expects it (IPv6 literals in brackets)."""
        host = self.target_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.target_port}"

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS."""
        return bool(self.target_tls_ca_cert_path)


def _channel_credentials(settings: GrpcSettings) -> grpc.ChannelCredentials:
    import grpc

    def read(path: str, setting: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {setting} file {path}: {exc.strerror}") from None

    root = read(settings.target_tls_ca_cert_path, "TARGET_TLS_CA_CERT_PATH")
    cert = key = None
    if settings.target_tls_user_cert_path:
        cert = read(settings.target_tls_user_cert_path, "TARGET_TLS_USER_CERT_PATH")
        key = read(settings.target_tls_user_key_path, "TARGET_TLS_USER_KEY_PATH")
    creds: grpc.ChannelCredentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )
    return creds


class GrpcExporter:
    """Sends flows to a pbflow collector through a :class:`~flowkit.delivery.Sender` (see the
    module docstring).

    Delivered and dropped flows are reported to ``account`` (the agent's books for this
    exporter): delivered when the collector answered OK, dropped with ``buffer_full``,
    ``rejected``, ``shutdown`` or a spool reason.
    """

    accounts_delivery = True

    def __init__(
        self, settings: GrpcSettings, metrics: Metrics, account: ExporterAccount | None = None
    ) -> None:
        grpc = import_grpc()

        from flowkit.pbflow.service import send_method

        self._grpc = grpc
        self.settings = settings
        # The channel's own reconnection backoff follows ours, so a collector that comes back is
        # found at most GRPC_RETRY_MAX_BACKOFF later.
        max_backoff_ms = max(100, int(settings.grpc_retry_max_backoff * 1000))
        initial_ms = min(max_backoff_ms, max(100, int(settings.grpc_retry_initial_backoff * 1000)))
        options: list[tuple[str, Any]] = [
            ("grpc.initial_reconnect_backoff_ms", initial_ms),
            ("grpc.min_reconnect_backoff_ms", initial_ms),
            ("grpc.max_reconnect_backoff_ms", max_backoff_ms),
            ("grpc.max_send_message_length", -1),
            ("grpc.enable_retries", 0),
        ]
        if settings.tls:
            self._channel = grpc.secure_channel(
                settings.target, _channel_credentials(settings), options=options
            )
        else:
            self._channel = grpc.insecure_channel(settings.target, options=options)
        self._send: SendCallable = send_method(self._channel)

        self.account = account if account is not None else ExporterAccount("grpc", metrics)
        self._accepted_of_rejected = 0  # set by _on_error, read by on_drop on the same thread
        self._sent_flows = metrics.counter("grpc_sent_flows", "Flows delivered to the collector")
        self._sent_messages = metrics.counter(
            "grpc_sent_messages", "pbflow.Records messages delivered to the collector"
        )
        self._send_errors = metrics.counter(
            "grpc_send_errors", "Failed Send calls by gRPC status code", ["code"]
        )
        self._problems = RateLimitedLog(log)

        def on_drop(reason: str, flows: int) -> None:
            if reason == "rejected" and self._accepted_of_rejected:
                # flowkit-collector kept part of a message it refused (malformed records).
                accepted = min(flows, self._accepted_of_rejected)
                self._accepted_of_rejected = 0
                self.account.delivered(accepted)
                flows -= accepted
            self.account.dropped(flows, reason)

        def on_delivered(flows: int) -> None:
            self._sent_flows.inc(flows)
            self.account.delivered(flows)

        spool: Spool | None = open_spool(
            "GRPC",
            settings.grpc_spool_dir,
            settings.grpc_spool_max_bytes,
            settings.grpc_spool_segment_bytes,
            settings.grpc_spool_fsync,
            name="grpc",
            metrics=metrics,
            on_drop=on_drop,
        )
        self._sender = Sender(
            "grpc",
            self._send_one,
            max_buffered_flows=settings.grpc_buffer_max_flows,
            retry=RetryPolicy(settings.grpc_retry_initial_backoff,
                              settings.grpc_retry_max_backoff),
            spool=spool,
            on_drop=on_drop,
            on_delivered=on_delivered,
            target=f"collector {settings.target}",
            buffer_setting="GRPC_BUFFER_MAX_FLOWS",
        )
        metrics.gauge_callback(
            "grpc_buffered_flows",
            "Flows waiting to be sent to the collector",
            lambda: float(self._sender.buffered_flows),
        )
        log.info(
            "grpc exporter sending to %s (%s)",
            settings.target,
            "mutual TLS"
            if settings.target_tls_user_cert_path
            else "TLS"
            if settings.tls
            else "plain text",
        )

    # -- Exporter protocol ------------------------------------------------------------------
    def export(self, batch: FlowBatch) -> None:
        """Encode the batch and queue it for sending; never waits for the collector."""
        from flowkit.encoding import encode_records_messages

        if len(batch) == 0:
            return
        # The C encoder writes each serialized pbflow.Records straight from the batch's memory.
        self._sender.offer(encode_records_messages(batch, self.settings.grpc_message_max_flows))

    def spooled_flows(self) -> int:
        """Flows waiting in the disk spool (0 without one)."""
        return self._sender.spooled_flows()

    def recovered_flows(self) -> int:
        """Flows found in the disk spool at start, left by an earlier run (0 without a spool)."""
        return self._sender.recovered_flows()

    def flush(self, timeout: float) -> bool:
        """Wait until every buffered flow was delivered (or dropped); False on timeout."""
        return self._sender.flush(timeout)

    def shutdown(self, timeout: float) -> None:
        """Send what can be sent within ``timeout``, spool or count the rest, close."""
        self._sender.shutdown(timeout)
        self._channel.close()

    # -- one attempt (called by the sender thread) --------------------------------------------
    def _send_one(self, data: bytes, flows: int) -> Outcome | Split:
        grpc = self._grpc
        try:
            self._send(data, timeout=self.settings.grpc_timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = (exc.details() if hasattr(exc, "details") else "") or ""
            name = code.name if code is not None else "UNKNOWN"
            self._send_errors.labels(code=name).inc()
            if name not in _RETRYABLE:
                self._accepted_of_rejected = _accepted_records(_trailing(exc), flows)
            return self._on_error(data, flows, name, details)
        self._sent_messages.inc()
        self._problems.recovered(
            "send", logging.INFO, "grpc collector %s is reachable again", self.settings.target
        )
        return Outcome.SENT

    def _on_error(self, data: bytes, flows: int, code: str, details: str) -> Outcome | Split:
        target = self.settings.target
        if code == "RESOURCE_EXHAUSTED" and "larger than max" in details and flows > 1:
            log.warning(
                "collector %s refused a message of %d flows as too large; sending it in "
                "two halves (lower GRPC_MESSAGE_MAX_FLOWS)",
                target,
                flows,
            )
            return Split(_halves(data))
        if code in _RETRYABLE:
            if self.settings.tls and any(hint in details for hint in _TLS_HINTS):
                self._problems.emit(
                    "send",
                    logging.ERROR,
                    "grpc: TLS connection to %s failed: the collector's certificate is not "
                    "trusted by TARGET_TLS_CA_CERT_PATH=%s or the certificate does not match "
                    "TARGET_HOST (or the collector refused our client certificate); retrying. "
                    "gRPC said: %s",
                    target,
                    self.settings.target_tls_ca_cert_path,
                    details.strip(),
                )
            else:
                self._problems.emit(
                    "send",
                    logging.ERROR,
                    "grpc: cannot send to collector %s (%s: %s); keeping flows and retrying%s",
                    target,
                    code,
                    details.strip(),
                    " (TLS is on: if the collector is up, check TARGET_TLS_CA_CERT_PATH and, "
                    "for mutual TLS, TARGET_TLS_USER_CERT_PATH / TARGET_TLS_USER_KEY_PATH)"
                    if self.settings.tls
                    else "",
                )
            return Outcome.RETRY
        self._problems.emit(
            "send",
            logging.ERROR,
            "grpc: collector %s rejected a message of %d flows (%s: %s); dropped it",
            target,
            flows,
            code,
            details.strip(),
        )
        return Outcome.REJECTED


def _halves(data: bytes) -> list[tuple[bytes, int]]:
    """A serialized ``Records`` message as two messages of half the entries each."""
    from flowkit.pbflow.flow_pb2 import Records

    entries = list(Records.FromString(data).entries)
    half = len(entries) // 2
    return [
        (Records(entries=entries[:half]).SerializeToString(), half),
        (Records(entries=entries[half:]).SerializeToString(), len(entries) - half),
    ]


def _trailing(exc: Any) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in (exc.trailing_metadata() or ())}
    except Exception:
        return {}


def _accepted_records(metadata: dict[str, str], flows: int) -> int:
    """Records of a rejected message the collector still took (``flowkit-collector`` says so in
    the trailing metadata ``fk-accepted-records`` when it isolated malformed records)."""
    try:
        return max(0, min(flows, int(metadata.get(ACCEPTED_RECORDS_KEY, "0"))))
    except ValueError:
        return 0


def _make_exporter(context: ComponentContext) -> GrpcExporter:
    settings: GrpcSettings = context.settings
    return GrpcExporter(settings, context.metrics, context.account)


@hookimpl
def flowkit_exporters() -> list[ExporterSpec]:
    return [
        ExporterSpec(
            name="grpc",
            factory=_make_exporter,
            settings_model=GrpcSettings,
            requires=("grpc", "google.protobuf"),
            extra="grpc",
            description="gRPC: pbflow.Records messages to a NetObserv-compatible collector "
            "(TARGET_HOST:TARGET_PORT), optional TLS / mutual TLS",
        )
    ]
