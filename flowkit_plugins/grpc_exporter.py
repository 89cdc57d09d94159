"""The ``grpc`` exporter: flows to a ``pbflow.Collector`` (NetObserv's gRPC protocol).

Every batch is encoded as ``pbflow.Records`` messages of at most ``GRPC_MESSAGE_MAX_FLOWS``
flows and sent with the unary ``pbflow.Collector/Send`` call to ``TARGET_HOST:TARGET_PORT``
(plain text, TLS with ``TARGET_TLS_CA_CERT_PATH``, mutual TLS adding
``TARGET_TLS_USER_CERT_PATH`` and ``TARGET_TLS_USER_KEY_PATH``).

Failure behaviour:

* ``export`` never waits for the network: it encodes the batch and appends it to a buffer that a
  sender thread drains in order. The buffer holds at most ``GRPC_BUFFER_MAX_FLOWS`` flows; flows
  that do not fit are dropped and counted (``grpc_dropped_flows{reason="buffer_full"}``).
* A call failing with a transient status (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
  ABORTED, INTERNAL, UNKNOWN, CANCELLED) is retried, oldest message first, after a jittered
  exponential backoff between ``GRPC_RETRY_INITIAL_BACKOFF`` and ``GRPC_RETRY_MAX_BACKOFF``.
  The channel reconnects by itself; nothing is lost while the collector is away, up to the
  buffer bound. A message the collector finds too large is split in two and retried.
* A call the collector rejects for good (INVALID_ARGUMENT, UNIMPLEMENTED, PERMISSION_DENIED,
  UNAUTHENTICATED, ...) drops that message (``reason="rejected"``).
* Problems are logged once when they start (a TLS verification failure names the CA setting),
  then at most every 30 seconds, and recovery is logged once. No tracebacks.
* ``shutdown`` interrupts the backoff, sends what it can before its deadline and counts the rest
  (``reason="shutdown"``).

With ``GRPC_SPOOL_DIR`` set, the exporter keeps what it cannot deliver on disk instead
(:mod:`flowkit.spool`): on the first retryable failure the memory buffer is written to the spool,
and later batches are appended there while the collector is away; once a call succeeds again the
spool is replayed oldest first and each record deleted when the collector accepted it, then
batches go through memory again. A spool left by an earlier run is replayed first. At shutdown,
what is undelivered is written to the spool (kept for the next start) instead of being dropped.
Over ``GRPC_SPOOL_MAX_BYTES`` the oldest segments are dropped (``reason="spool_full"``).

grpcio (extra ``flowkit[grpc]``) is imported by the factory only.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flowkit import hookimpl
from flowkit.components import ComponentContext, ExporterSpec
from flowkit.pbflow import import_grpc
from flowkit.ratelimit import RateLimitedLog
from flowkit.settings_types import ByteSize, Duration
from flowkit.spool import Spool, SpoolRecord, check_spool_settings, open_spool

if TYPE_CHECKING:
    import grpc

    from flowkit.metrics import Metrics
    from flowkit.model import FlowBatch
    from flowkit.pbflow.service import SendCallable

log = logging.getLogger(__name__)

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


def _readable_file(value: str, setting: str) -> str:
    if not value:
        return value
    try:
        with open(value, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read {setting} file {value}: {exc.strerror}") from None
    return value


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
    target_tls_ca_cert_path: str = Field(
        default="",
        description="PEM file of the CA that signed the collector's certificate; enables TLS.",
    )
    target_tls_user_cert_path: str = Field(
        default="",
        description="PEM client certificate for mutual TLS (with TARGET_TLS_USER_KEY_PATH).",
    )
    target_tls_user_key_path: str = Field(
        default="",
        description="PEM private key of TARGET_TLS_USER_CERT_PATH, for mutual TLS.",
    )
    grpc_timeout: Duration = Field(
        default=10.0, gt=0, description="Deadline of one Send call (e.g. 10s)."
    )
    grpc_retry_initial_backoff: Duration = Field(
        default=0.5, gt=0, description="Wait before the first retry of a failed Send (doubles)."
    )
    grpc_retry_max_backoff: Duration = Field(
        default=30.0, gt=0, description="Longest wait between two retries of a failed Send."
    )
    grpc_buffer_max_flows: int = Field(
        default=100_000,
        ge=1,
        description="Most flows kept in memory while the collector is unreachable; more are "
        "dropped and counted in grpc_dropped_flows (with GRPC_SPOOL_DIR: written to the spool).",
    )
    grpc_spool_dir: str = Field(
        default="",
        description="Absolute path of a directory for an on-disk spool: while the collector is "
        "unreachable, messages are written there and replayed in order once it is back, also "
        "after a restart. Empty: no spool.",
    )
    grpc_spool_max_bytes: ByteSize = Field(
        default=1 << 30,
        ge=0,
        description="Most bytes the spool takes on disk (e.g. 512MiB); beyond it the oldest "
        "segments are dropped and counted (reason spool_full).",
    )
    grpc_spool_segment_bytes: ByteSize = Field(
        default=16 << 20,
        ge=0,
        description="Size at which the spool starts a new segment file (the unit the budget "
        "drops).",
    )
    grpc_spool_fsync: Literal["always", "segment", "never"] = Field(
        default="segment",
        description="When spooled data is forced to disk: always (every record), segment (when a "
        "segment is complete and at stop) or never (left to the kernel).",
    )

    @field_validator("target_tls_ca_cert_path")
    @classmethod
    def _check_ca(cls, value: str) -> str:
        return _readable_file(value, "TARGET_TLS_CA_CERT_PATH")

    @field_validator("target_tls_user_cert_path")
    @classmethod
    def _check_cert(cls, value: str) -> str:
        return _readable_file(value, "TARGET_TLS_USER_CERT_PATH")

    @field_validator("target_tls_user_key_path")
    @classmethod
    def _check_key(cls, value: str) -> str:
        return _readable_file(value, "TARGET_TLS_USER_KEY_PATH")

    @model_validator(mode="after")
    def _check_pairs(self) -> GrpcSettings:
        if bool(self.target_tls_user_cert_path) != bool(self.target_tls_user_key_path):
            raise ValueError(
                "TARGET_TLS_USER_CERT_PATH and TARGET_TLS_USER_KEY_PATH go together: set both "
                "for mutual TLS, or neither"
            )
        if self.target_tls_user_cert_path and not self.target_tls_ca_cert_path:
            raise ValueError("mutual TLS needs TARGET_TLS_CA_CERT_PATH as well")
        if self.grpc_retry_max_backoff < self.grpc_retry_initial_backoff:
            raise ValueError(
                "GRPC_RETRY_MAX_BACKOFF must not be shorter than GRPC_RETRY_INITIAL_BACKOFF"
            )
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


class _Pending:
    """One encoded ``Records`` message waiting to be sent."""

    __slots__ = ("data", "flows")

    def __init__(self, data: bytes, flows: int) -> None:
        self.data = data
        self.flows = flows


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
    """Sends flows to a pbflow collector from a background thread (see the module docstring)."""

    def __init__(self, settings: GrpcSettings, metrics: Metrics) -> None:
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

        dropped = metrics.counter(
            "grpc_dropped_flows", "Flows the grpc exporter could not deliver", ["reason"]
        )
        self._dropped_full = dropped.labels(reason="buffer_full")
        self._dropped_rejected = dropped.labels(reason="rejected")
        self._dropped_shutdown = dropped.labels(reason="shutdown")
        self._sent_flows = metrics.counter("grpc_sent_flows", "Flows delivered to the collector")
        self._sent_messages = metrics.counter(
            "grpc_sent_messages", "pbflow.Records messages delivered to the collector"
        )
        self._send_errors = metrics.counter(
            "grpc_send_errors", "Failed Send calls by gRPC status code", ["code"]
        )
        self._lock = threading.Condition()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._buffered_flows = 0
        self._dropped = dropped
        self._spool: Spool | None = open_spool(
            "GRPC",
            settings.grpc_spool_dir,
            settings.grpc_spool_max_bytes,
            settings.grpc_spool_segment_bytes,
            settings.grpc_spool_fsync,
            name="grpc",
            metrics=metrics,
            on_drop=lambda reason, flows: dropped.labels(reason=reason).inc(flows),
        )
        # True while the spool holds messages that must go before anything new: new batches are
        # then appended to the spool, not to the memory buffer.
        self._spooling = self._spool is not None and not self._spool.empty()
        metrics.gauge_callback(
            "grpc_buffered_flows",
            "Flows waiting to be sent to the collector",
            lambda: float(self._buffered_flows),
        )
        self._in_flight = False
        self._sending: _Pending | None = None  # the memory message being sent
        self._head_spilled: _Pending | None = None  # ... when export moved it to the spool
        self._closing = threading.Event()  # no more exports; sender stops once the buffer is empty
        self._abort = threading.Event()  # stop now, even with flows left
        self._problems = RateLimitedLog(log)
        self._thread = threading.Thread(target=self._run, name="flowkit-grpc-sender", daemon=True)
        self._thread.start()
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

        total = len(batch)
        if total == 0:
            return
        if self._spool is not None and not self._abort.is_set():
            with self._lock:
                room = self.settings.grpc_buffer_max_flows - self._buffered_flows
                if self._spooling or room < total or self._closing.is_set():
                    self._to_spool(batch)
                    return
        if self._closing.is_set():
            self._dropped_shutdown.inc(total)
            return
        with self._lock:
            room = self.settings.grpc_buffer_max_flows - self._buffered_flows
        keep = min(total, max(0, room))
        if keep < total:
            self._dropped_full.inc(total - keep)
            self._problems.emit(
                "overflow",
                logging.ERROR,
                "grpc exporter buffer is full (GRPC_BUFFER_MAX_FLOWS=%d): dropped %d flows",
                self.settings.grpc_buffer_max_flows,
                total - keep,
            )
        else:
            self._problems.recovered(
                "overflow", logging.INFO, "grpc exporter buffer has room again"
            )
        if keep == 0:
            return
        # The C encoder writes each serialized pbflow.Records straight from the batch's memory.
        messages = [
            _Pending(data, flows)
            for data, flows in encode_records_messages(
                batch, self.settings.grpc_message_max_flows, stop=keep
            )
        ]
        with self._lock:
            self._pending.extend(messages)
            self._buffered_flows += keep
            self._lock.notify_all()

    def _to_spool(self, batch: FlowBatch) -> None:
        """Append the batch's messages to the spool (caller holds the lock)."""
        from flowkit.encoding import encode_records_messages

        assert self._spool is not None
        if not self._spooling:
            # The memory buffer is older than this batch: it goes first.
            self._spill(from_export=True)
            self._spooling = True
            log.warning(
                "grpc exporter: writing flows to the spool %s until collector %s takes them",
                self.settings.grpc_spool_dir,
                self.settings.target,
            )
        for data, flows in encode_records_messages(batch, self.settings.grpc_message_max_flows):
            self._spool.append(data, flows)
        self._lock.notify_all()

    def _spill(self, from_export: bool = False) -> None:
        """Move the memory buffer into the spool, oldest first (caller holds the lock).

        From ``export``, the message the sender is sending may be moved too: the sender then
        acknowledges it in the spool (where it is first) once the call ends, unless it is to be
        retried (it is then replayed from the spool).
        """
        assert self._spool is not None
        if not self._pending:
            return
        if from_export and self._in_flight and self._sending is self._pending[0]:
            self._head_spilled = self._sending
        if not self._spooling and not from_export:
            self._spooling = True
            log.warning(
                "grpc exporter: collector %s unreachable; writing flows to the spool %s",
                self.settings.target,
                self.settings.grpc_spool_dir,
            )
        while self._pending:
            item = self._pending.popleft()
            self._buffered_flows -= item.flows
            self._spool.append(item.data, item.flows)

    def spooled_flows(self) -> int:
        """Flows waiting in the disk spool (0 without one)."""
        return 0 if self._spool is None else self._spool.flows

    def recovered_flows(self) -> int:
        """Flows found in the disk spool at start, left by an earlier run (0 without a spool)."""
        return 0 if self._spool is None else self._spool.recovered_flows

    def _spool_waiting(self) -> bool:
        return self._spooling and self._spool is not None and not self._spool.empty()

    def flush(self, timeout: float) -> bool:
        """Wait until every buffered flow was delivered (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending or self._in_flight or self._spool_waiting():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._abort.is_set():
                    return False
                self._lock.wait(min(remaining, 0.5))
        return True

    def shutdown(self, timeout: float) -> None:
        """Send what can be sent within ``timeout``, count the rest as dropped, close."""
        deadline = time.monotonic() + timeout
        self._closing.set()
        self.flush(max(0.0, deadline - time.monotonic()))
        self._abort.set()
        with self._lock:
            self._lock.notify_all()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            if self._spool is not None and not self._in_flight:
                self._spill()
            left = self._buffered_flows
            self._pending.clear()
            self._buffered_flows = 0
        if self._spool is not None:
            kept = self._spool.flows
            self._spool.close()
            if kept:
                log.warning(
                    "grpc exporter stopped with %d flows kept in the spool %s; they are sent "
                    "at the next start",
                    kept,
                    self.settings.grpc_spool_dir,
                )
        if left:
            self._dropped_shutdown.inc(left)
            log.warning(
                "grpc exporter stopped with %d flows not delivered to %s",
                left,
                self.settings.target,
            )
        self._channel.close()

    # -- sender thread ----------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._abort.is_set():
            record: SpoolRecord | None = None
            with self._lock:
                while not self._abort.is_set():
                    if self._pending:
                        break
                    if self._spooling and self._spool is not None:
                        record = self._spool.peek()
                        if record is not None:
                            break
                        self._spooling = False  # replayed everything: back to memory
                        log.info("grpc exporter: spool replayed, sending from memory again")
                        self._lock.notify_all()
                    if self._closing.is_set():
                        return
                    self._lock.wait(0.5)
                if self._abort.is_set():
                    return
                item = self._pending[0] if record is None else None
                self._sending = item
                self._in_flight = True
            try:
                if record is not None:
                    outcome = self._send_spooled(record)
                else:
                    assert item is not None
                    outcome = self._send_one(item)
                    with self._lock:
                        spilled = self._head_spilled is item
                        self._head_spilled = None
                    if spilled:
                        if outcome != "retry":
                            self._ack_spilled(item, outcome)
                    elif outcome == "retry" and self._spool is not None:
                        with self._lock:
                            self._spill()
            finally:
                with self._lock:
                    self._in_flight = False
                    self._sending = None
                    self._lock.notify_all()
            if outcome == "retry":
                attempt += 1
                self._abort.wait(self._backoff(attempt))
            else:
                attempt = 0

    def _ack_spilled(self, item: _Pending, outcome: str) -> None:
        """``item`` was moved to the spool while being sent, and the call ended for good."""
        assert self._spool is not None
        record = self._spool.peek()
        if record is not None and record.payload == item.data:
            self._spool.ack(record)
        if outcome == "split":
            with self._lock:
                self._pending.appendleft(item)
                self._buffered_flows += item.flows
                self._split_head(item)

    def _send_spooled(self, record: SpoolRecord) -> str:
        """Send one spooled message; acknowledge it unless it is to be retried."""
        assert self._spool is not None
        spool = self._spool
        item = _Pending(record.payload, record.flows)
        spool.begin(record)
        outcome = self._send_one(item, spooled=True)
        if outcome == "retry":
            spool.release(record)
            return outcome
        if outcome == "split":
            # The halves go first through memory (they are older than the rest of the spool).
            with self._lock:
                self._pending.appendleft(item)
                self._buffered_flows += item.flows
                self._split_head(item)
        spool.ack(record)
        return outcome

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        step: float = s.grpc_retry_initial_backoff * 2.0 ** min(attempt - 1, 32)
        ceiling = min(s.grpc_retry_max_backoff, step)
        # "Equal jitter": never less than half the step, so retries stay spread but bounded.
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - not cryptographic

    def _done(self, item: _Pending) -> None:
        with self._lock:
            if self._pending and self._pending[0] is item:
                self._pending.popleft()
                self._buffered_flows -= item.flows
            self._lock.notify_all()

    def _send_one(self, item: _Pending, spooled: bool = False) -> str:
        grpc = self._grpc
        try:
            self._send(item.data, timeout=self.settings.grpc_timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = (exc.details() if hasattr(exc, "details") else "") or ""
            name = code.name if code is not None else "UNKNOWN"
            self._send_errors.labels(code=name).inc()
            return self._on_error(item, name, details, spooled)
        self._sent_flows.inc(item.flows)
        self._sent_messages.inc()
        if not spooled:
            self._done(item)
        self._problems.recovered(
            "send", logging.INFO, "grpc collector %s is reachable again", self.settings.target
        )
        return "sent"

    def _on_error(self, item: _Pending, code: str, details: str, spooled: bool = False) -> str:
        target = self.settings.target
        if code == "RESOURCE_EXHAUSTED" and "larger than max" in details and item.flows > 1:
            if not spooled:
                self._split_head(item)
            log.warning(
                "collector %s refused a message of %d flows as too large; sending it in "
                "two halves (lower GRPC_MESSAGE_MAX_FLOWS)",
                target,
                item.flows,
            )
            return "split"
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
            return "retry"
        self._dropped_rejected.inc(item.flows)
        if not spooled:
            self._done(item)
        self._problems.emit(
            "send",
            logging.ERROR,
            "grpc: collector %s rejected a message of %d flows (%s: %s); dropped it",
            target,
            item.flows,
            code,
            details.strip(),
        )
        return "dropped"

    def _split_head(self, item: _Pending) -> None:
        from flowkit.pbflow.flow_pb2 import Records

        entries = list(Records.FromString(item.data).entries)
        half = len(entries) // 2
        first = _Pending(Records(entries=entries[:half]).SerializeToString(), half)
        second = _Pending(Records(entries=entries[half:]).SerializeToString(), len(entries) - half)
        with self._lock:
            if self._pending and self._pending[0] is item:
                self._pending.popleft()
                self._pending.appendleft(second)
                self._pending.appendleft(first)


def _make_exporter(context: ComponentContext) -> GrpcExporter:
    settings: GrpcSettings = context.settings
    return GrpcExporter(settings, context.metrics)


@hookimpl
def flowkit_exporters() -> list[ExporterSpec]:
    return [
        ExporterSpec(
            name="grpc",
            factory=_make_exporter,
            settings_model=GrpcSettings,
            description="gRPC: pbflow.Records messages to a NetObserv-compatible collector "
            "(TARGET_HOST:TARGET_PORT), optional TLS / mutual TLS",
        )
    ]
