"""The ``kafka`` exporter: one Kafka message per flow, through librdkafka (confluent-kafka).

Settings keep NetObserv's names and defaults (``KAFKA_BROKERS``, ``KAFKA_TOPIC``, ...). Each flow
becomes one message:

* ``KAFKA_ENCODING=protobuf`` (default): the value is one serialized ``pbflow.Record``;
* ``KAFKA_ENCODING=json``: the value is the flow's NetObserv JSON object
  (:func:`flowkit.model.flow_to_json_dict`).

The key is the flow's two 16-byte addresses in sorted order (32 bytes), so both directions of a
conversation land in the same partition.

Failure behaviour: the producer never raises into the pipeline. Messages wait in librdkafka's
local queue (bounded by ``KAFKA_QUEUE_MAX_MESSAGES`` and ``KAFKA_QUEUE_MAX_BYTES``) while brokers
are away and are delivered when they return, unless they wait longer than
``KAFKA_MESSAGE_TIMEOUT``. When the queue is full, ``KAFKA_ASYNC=true`` drops the flow and counts
it (``dropped_flows{exporter="kafka",reason="buffer_full"}``); ``KAFKA_ASYNC=false`` waits for
room, so the agent's bounded batch queue absorbs the back-pressure. Broker errors become
rate-limited log lines, never tracebacks.

With ``KAFKA_SPOOL_DIR`` set, flows are kept on disk instead while no broker takes them
(:mod:`flowkit.spool`): when librdkafka reports every broker down (or gives a flow up), the
messages still waiting in its queue are taken back into the spool and later batches are appended
there; once a broker answers again the spool is replayed oldest first, each record deleted only
when librdkafka confirmed the delivery of all its messages (a message it gives up goes back to
the spool). At shutdown, what librdkafka still holds is written to the spool for the next start.

confluent-kafka (extra ``flowkit-ebpf[kafka]``) is imported by the factory only.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flowkit import hookimpl
from flowkit import peer_settings as shared
from flowkit.accounts import ExporterAccount
from flowkit.components import ComponentContext, ExporterSpec
from flowkit.model import FlowBatch
from flowkit.ratelimit import RateLimitedLog
from flowkit.settings_types import (
    Bool,
    ByteSize,
    CommaList,
    Duration,
    parse_host_port,
)
from flowkit.spool import (
    FsyncPolicy,
    Spool,
    check_spool_settings,
    decode_batch,
    encode_batch,
    open_spool,
)

if TYPE_CHECKING:
    from prometheus_client import Counter

log = logging.getLogger(__name__)

_PROTOCOL_FOR = {
    (False, False): "plaintext",
    (True, False): "ssl",
    (False, True): "sasl_plaintext",
    (True, True): "sasl_ssl",
}
_SASL_MECHANISM = {
    "plain": "PLAIN",
    "scramSHA512": "SCRAM-SHA-512",
    "scramSHA256": "SCRAM-SHA-256",  # flowkit's addition to NetObserv's two
}
# How long the background thread blocks in poll(): bounds how late a shutdown is noticed.
_POLL_INTERVAL = 0.2
# Delivery-report errors of messages purged at shutdown.
_PURGED = frozenset({"_PURGE_QUEUE", "_PURGE_INFLIGHT"})
# Delivery errors that mean "no broker took it in time", not "the broker refuses it".
_BROKER_AWAY = frozenset({"_MSG_TIMED_OUT", "_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN"})
# Errors meaning no broker can be reached; a delivery after one of them means they are back.
_UNREACHABLE = frozenset({"_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE"})


class KafkaSettings(BaseModel):
    """Settings of the ``kafka`` exporter (environment variable = field name upper-cased)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kafka_brokers: CommaList = Field(
        default_factory=list,
        description="Kafka bootstrap brokers, comma-separated host:port (required when EXPORT "
        "includes kafka).",
    )
    kafka_topic: str = Field(
        default="network-flows", min_length=1, description="Topic the flows are written to."
    )
    kafka_encoding: Literal["protobuf", "json"] = Field(
        default="protobuf",
        description="Message value: protobuf (one serialized pbflow.Record) or json (NetObserv "
        "JSON object).",
    )
    kafka_batch_messages: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Most messages sent to a partition in one request (batch.num.messages).",
    )
    kafka_batch_size: int = Field(
        default=1048576,
        ge=1,
        le=2_147_483_647,
        description="Most bytes sent to a partition in one request (batch.size).",
    )
    kafka_async: Bool = Field(
        default=True,
        description="true: never block the exporter, drop (and count) flows when the local queue "
        "is full; false: wait for room and for delivery of each batch.",
    )
    kafka_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="none", description="Compression codec: none, gzip, snappy, lz4 or zstd."
    )
    kafka_enable_tls: Bool = Field(default=False, description="Connect to the brokers with TLS.")
    kafka_tls_insecure_skip_verify: Bool = Field(
        default=False, description="Do not verify the brokers' TLS certificates."
    )
    kafka_tls_ca_cert_path: str = shared.tls_ca_cert_path("the brokers'", turns_tls_on=False)
    kafka_tls_user_cert_path: str = shared.tls_user_cert_path("KAFKA_TLS_USER_KEY_PATH")
    kafka_tls_user_key_path: str = shared.tls_user_key_path("KAFKA_TLS_USER_CERT_PATH")
    kafka_enable_sasl: Bool = Field(default=False, description="Authenticate with SASL.")
    kafka_sasl_type: Literal["plain", "scramSHA512", "scramSHA256"] = Field(
        default="plain", description="SASL mechanism: plain, scramSHA512 or scramSHA256."
    )
    kafka_sasl_client_id_path: str = Field(
        default="", description="File holding the SASL user name."
    )
    kafka_sasl_client_secret_path: str = Field(
        default="", description="File holding the SASL password."
    )
    kafka_queue_max_messages: int = Field(
        default=100_000,
        ge=1,
        le=2_147_483_647,
        description="Most flows waiting in the local producer queue (queue.buffering.max."
        "messages); beyond it flows are dropped (KAFKA_ASYNC=true) or the exporter waits.",
    )
    kafka_queue_max_bytes: int = Field(
        default=128 * 1024 * 1024,
        ge=1024,
        description="Most bytes waiting in the local producer queue (queue.buffering.max.kbytes).",
    )
    kafka_message_timeout: Duration = Field(
        default=300.0,
        gt=0,
        description="How long a flow may wait for a broker (also through an outage) before it "
        "is given up and counted as a delivery failure (message.timeout.ms).",
    )
    kafka_linger: Duration = Field(
        default=0.005,
        ge=0,
        le=900,
        description="How long the producer waits to fill a batch before sending (linger.ms).",
    )

    kafka_spool_dir: str = shared.spool_dir("no broker takes flows", "they")
    kafka_spool_max_bytes: ByteSize = shared.spool_max_bytes()
    kafka_spool_segment_bytes: ByteSize = shared.spool_segment_bytes()
    kafka_spool_fsync: FsyncPolicy = shared.spool_fsync()

    @model_validator(mode="after")
    def _check_consistency(self) -> KafkaSettings:
        if not self.kafka_brokers:
            raise ValueError(
                "KAFKA_BROKERS is required when EXPORT includes kafka "
                "(e.g. KAFKA_BROKERS=broker1:9092,broker2:9092)"
            )
        for broker in self.kafka_brokers:
            try:
                parse_host_port(broker)
            except ValueError as exc:
                raise ValueError(f"KAFKA_BROKERS: {exc}") from None
        if self.kafka_enable_tls:  # NetObserv's rule: the paths mean nothing while TLS is off
            shared.check_tls_files("KAFKA", self.kafka_tls_ca_cert_path,
                                   self.kafka_tls_user_cert_path, self.kafka_tls_user_key_path)
        if self.kafka_enable_sasl:
            for setting, path in (
                ("KAFKA_SASL_CLIENT_ID_PATH", self.kafka_sasl_client_id_path),
                ("KAFKA_SASL_CLIENT_SECRET_PATH", self.kafka_sasl_client_secret_path),
            ):
                if not path:
                    raise ValueError(f"{setting} is required when KAFKA_ENABLE_SASL is true")
                if not _read_secret(setting, path):
                    raise ValueError(f"{setting}: file {path} is empty")
        check_spool_settings(
            "KAFKA",
            self.kafka_spool_dir,
            self.kafka_spool_max_bytes,
            self.kafka_spool_segment_bytes,
        )
        return self

    def producer_config(self) -> dict[str, Any]:
        """The librdkafka configuration these settings stand for (callbacks not included)."""
        config: dict[str, Any] = {
            "bootstrap.servers": ",".join(self.kafka_brokers),
            "client.id": "flowkit-agent",
            "compression.type": self.kafka_compression,
            "batch.num.messages": self.kafka_batch_messages,
            "batch.size": self.kafka_batch_size,
            "linger.ms": self.kafka_linger * 1000.0,
            "queue.buffering.max.messages": self.kafka_queue_max_messages,
            "queue.buffering.max.kbytes": max(1, -(-self.kafka_queue_max_bytes // 1024)),
            "message.timeout.ms": max(1, round(self.kafka_message_timeout * 1000)),
            # Successes are inferred from the queue draining; only failures call back into
            # Python, which keeps the per-flow cost of the exporter low.
            "delivery.report.only.error": True,
            "log.connection.close": False,
            "security.protocol": _PROTOCOL_FOR[(self.kafka_enable_tls, self.kafka_enable_sasl)],
        }
        if self.kafka_enable_tls:
            if self.kafka_tls_ca_cert_path:
                config["ssl.ca.location"] = self.kafka_tls_ca_cert_path
            if self.kafka_tls_user_cert_path:
                config["ssl.certificate.location"] = self.kafka_tls_user_cert_path
                config["ssl.key.location"] = self.kafka_tls_user_key_path
            if self.kafka_tls_insecure_skip_verify:
                config["enable.ssl.certificate.verification"] = False
                config["ssl.endpoint.identification.algorithm"] = "none"
        if self.kafka_enable_sasl:
            config["sasl.mechanism"] = _SASL_MECHANISM[self.kafka_sasl_type]
            config["sasl.username"] = _read_secret(
                "KAFKA_SASL_CLIENT_ID_PATH", self.kafka_sasl_client_id_path
            )
            config["sasl.password"] = _read_secret(
                "KAFKA_SASL_CLIENT_SECRET_PATH", self.kafka_sasl_client_secret_path
            )
        return config


def _read_secret(setting: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"{setting}: cannot read {path}: {reason or exc}") from None


def message_keys(batch: FlowBatch) -> list[bytes]:
    """The Kafka key of every flow: its two 16-byte addresses, the smaller one first.

    Both directions of a conversation get the same key, hence the same partition.
    """
    count = len(batch)
    if count == 0:
        return []
    key = batch.array["key"]
    src = np.ascontiguousarray(key["src_ip"])
    dst = np.ascontiguousarray(key["dst_ip"])
    # Compare the addresses as two big-endian 64-bit halves: lexicographic byte order.
    src_halves = src.view(">u8")
    dst_halves = dst.view(">u8")
    src_first = (src_halves[:, 0] < dst_halves[:, 0]) | (
        (src_halves[:, 0] == dst_halves[:, 0]) & (src_halves[:, 1] <= dst_halves[:, 1])
    )
    keys = np.where(
        src_first[:, None], np.concatenate([src, dst], axis=1), np.concatenate([dst, src], axis=1)
    )
    raw = np.ascontiguousarray(keys, dtype=np.uint8).tobytes()
    return [raw[i : i + 32] for i in range(0, 32 * count, 32)]


def encode_json(batch: FlowBatch) -> list[bytes]:
    """Every flow of the batch as its NetObserv JSON object (UTF-8 bytes), encoded in C."""
    from flowkit.encoding import encode_json_each

    return encode_json_each(batch)


def encode_protobuf(batch: FlowBatch) -> list[bytes]:
    """Every flow of the batch as one serialized ``pbflow.Record``, encoded in C."""
    from flowkit.encoding import encode_records

    return encode_records(batch).split()


_BATCH_RECORD = b"B"  # spool record: a raw FlowBatch (encoded when it is replayed)
_MESSAGES_RECORD = b"M"  # spool record: Kafka messages librdkafka handed back undelivered
_NO_KEY = 0xFFFFFFFF
_SPOOL_MESSAGES_PER_RECORD = 4096


def pack_messages(messages: Sequence[tuple[bytes | None, bytes]]) -> bytes:
    """Kafka messages as one spool payload: ``M`` then ``<u32 key length|0xFFFFFFFF><key>
    <u32 value length><value>`` per message."""
    parts = [_MESSAGES_RECORD]
    for key, value in messages:
        if key is None:
            parts.append(struct.pack("<I", _NO_KEY))
        else:
            parts += [struct.pack("<I", len(key)), key]
        parts += [struct.pack("<I", len(value)), value]
    return b"".join(parts)


def unpack_messages(payload: bytes) -> list[tuple[bytes | None, bytes]]:
    """The messages of a :func:`pack_messages` payload."""
    out: list[tuple[bytes | None, bytes]] = []
    view = memoryview(payload)
    pos = 1
    while pos < len(view):
        (klen,) = struct.unpack_from("<I", view, pos)
        pos += 4
        key = None
        if klen != _NO_KEY:
            key = bytes(view[pos : pos + klen])
            pos += klen
        (vlen,) = struct.unpack_from("<I", view, pos)
        pos += 4
        out.append((key, bytes(view[pos : pos + vlen])))
        pos += vlen
    if pos != len(view):
        raise ValueError("spooled Kafka messages are truncated")
    return out


ENCODERS: dict[str, Callable[[FlowBatch], list[bytes]]] = {
    "json": encode_json,
    "protobuf": encode_protobuf,
}


class _RateLimitedLog(RateLimitedLog):
    """flowkit's rate-limited log, also used as librdkafka's ``logger``: confluent-kafka calls
    ``log(level, fmt, *args)``."""

    def log(self, level: int, fmt: str, *args: object) -> None:
        """librdkafka's log lines. Errors repeat what the error callback says: debug only."""
        if level >= logging.ERROR or not self._logger.isEnabledFor(level):
            self._logger.debug(fmt, *args)
            return
        facility = str(args[0]) if args else "librdkafka"
        self.emit(f"librdkafka-{facility}", level, "kafka: " + fmt, *args)


class KafkaExporter:
    """Writes every flow of every batch to a Kafka topic, one message per flow.

    Counters (prefix from METRICS_PREFIX): ``kafka_produced_flows`` (accepted by the local
    queue), ``kafka_delivery_failures`` (queued but given up by librdkafka), the gauge
    ``kafka_queue_flows`` and ``errors{component="exporter/kafka", error=...}`` (librdkafka error
    names such as ``_TRANSPORT`` or ``_ALL_BROKERS_DOWN``; ``queue_full``, ``encode``, ``produce``).
    """

    accounts_delivery = True
    """Flows count as exported when the broker acknowledged them (delivery report); dropped
    flows go to the agent's books with ``buffer_full``, ``encode``, ``rejected``, ``timeout``
    or ``shutdown``."""

    CHUNK_FLOWS = 4096
    """Flows encoded at once (bounds the transient memory of one export)."""

    def __init__(self, settings: KafkaSettings, context: ComponentContext) -> None:
        self.settings = settings
        self._topic = settings.kafka_topic
        self._encode = ENCODERS[settings.kafka_encoding]
        self._stop = threading.Event()
        self._purged = 0
        self._log = _RateLimitedLog(log)
        metrics = context.metrics
        self.produced: Counter = metrics.counter(
            "kafka_produced_flows", "Flows accepted by the Kafka producer queue"
        )
        account = context.account
        self.account = account if account is not None else ExporterAccount("kafka", metrics)
        self._agent_stopping = context.stop_event
        self._broker_down = False
        self._sync_lock = threading.Lock()
        self._produced_total = 0  # flows librdkafka accepted
        self._given_up = 0  # flows whose failure report was served (purged included)
        self._delivered_reported = 0
        self.delivery_failures: Counter = metrics.counter(
            "kafka_delivery_failures", "Flows the Kafka producer gave up delivering"
        )
        self._errors: Counter = metrics.counter(
            "errors", "Errors by component and kind", ["component", "error"]
        )
        config = settings.producer_config()
        config["error_cb"] = self._on_error
        config["on_delivery"] = self._on_delivery
        config["logger"] = self._log
        from confluent_kafka import Producer

        self._producer: Any = Producer(config)
        metrics.gauge_callback(
            "kafka_queue_flows", "Flows waiting in the Kafka producer queue", self.queued
        )
        # Disk spool: see the module docstring. _spooling means "batches go to the spool";
        # _undelivered collects what librdkafka hands back, written to the spool after each poll.
        self._spool: Spool | None = open_spool(
            "KAFKA",
            settings.kafka_spool_dir,
            settings.kafka_spool_max_bytes,
            settings.kafka_spool_segment_bytes,
            settings.kafka_spool_fsync,
            name="kafka",
            metrics=metrics,
            on_drop=lambda reason, flows: self.account.dropped(flows, reason),
        )
        self._spool_lock = threading.Condition()
        self._export_lock = threading.Lock()
        self._spooling = self._spool is not None and not self._spool.empty()
        self._spool_closed = False
        self._brokers_down = threading.Event()
        self._undelivered: list[tuple[bytes | None, bytes]] = []
        self._undelivered_lock = threading.Lock()
        self._poller = threading.Thread(
            target=self._poll_loop, name="flowkit-kafka-poll", daemon=True
        )
        self._poller.start()
        self._replayer: threading.Thread | None = None
        if self._spool is not None:
            self._replayer = threading.Thread(
                target=self._replay_loop, name="flowkit-kafka-spool", daemon=True
            )
            self._replayer.start()
        log.info(
            "kafka exporter: topic %s on %s, %s encoding, compression %s",
            self._topic,
            ",".join(settings.kafka_brokers),
            settings.kafka_encoding,
            settings.kafka_compression,
        )

    def _error(self, kind: str) -> None:
        self._errors.labels(component="exporter/kafka", error=kind).inc()

    # -- librdkafka callbacks (run on the thread that polls) --------------------------------
    def _on_error(self, error: Any) -> None:
        name = error.name()
        self._error(name)
        if name == "_ALL_BROKERS_DOWN" and self._spool is not None:
            self._brokers_down.set()
        level = logging.ERROR if error.fatal() else logging.WARNING
        if name in _UNREACHABLE:
            self._broker_down = True
        text = error.str()
        hint = ""
        if self.settings.kafka_enable_tls and any(
            word in text for word in ("SSL", "ssl", "certificate", "handshake")
        ):
            # librdkafka names its own settings (ssl.ca.location); say which of ours to check.
            hint = (
                " (TLS: check that KAFKA_TLS_CA_CERT_PATH signed the brokers' certificates and "
                "that they match the broker addresses; for mutual TLS, that the brokers accept "
                "KAFKA_TLS_USER_CERT_PATH / KAFKA_TLS_USER_KEY_PATH); retrying"
            )
        if self.settings.kafka_enable_sasl and "SASL" in text:
            hint = (
                f" (SASL {self.settings.kafka_sasl_type}: check the user name in "
                "KAFKA_SASL_CLIENT_ID_PATH and the password in KAFKA_SASL_CLIENT_SECRET_PATH, "
                "and that the brokers enable this mechanism); retrying"
            )
        self._log.emit(f"error-{name}", level, "kafka: %s: %s%s", name, text, hint)

    def _on_delivery(self, error: Any, message: Any) -> None:
        # Only failures are reported (delivery.report.only.error): see _sync_delivered.
        if error is None:
            return
        self._given_up += 1
        if self._spool is not None and (
            error.name() in _PURGED or error.name() in _BROKER_AWAY or error.retriable()
        ):
            # Not lost: back to the spool (written by the thread that polled, see _take_back).
            # Permanent refusals (a message too large, no authorisation) fall through: spooling
            # them would replay them forever.
            with self._undelivered_lock:
                self._undelivered.append((message.key(), message.value() or b""))
            if error.name() not in _PURGED:
                self._error(error.name())
                self._brokers_down.set()
            return
        if error.name() in _PURGED:
            self._purged += 1
            self.account.dropped(1, "shutdown")
            return
        self.delivery_failures.inc()
        name = error.name()
        self.account.dropped(1, "timeout" if name == "_MSG_TIMED_OUT" else "rejected")
        self._error(name)
        self._log.emit(
            f"delivery-{name}",
            logging.WARNING,
            "kafka: a flow could not be delivered: %s",
            error.str(),
        )

    def _sync_delivered(self) -> None:
        """Report to the books the flows the brokers acknowledged since the last call.

        Successful deliveries have no callback (one Python call per flow would cost more than
        the encoding), so they are derived: every produced flow is still in librdkafka
        (``len(producer)``), or given up (a failure report was served), or delivered. Reading
        in this order can only under-count for a moment, never over-count.
        """
        with self._sync_lock:
            produced = self._produced_total
            waiting = len(self._producer)
            delivered = produced - waiting - self._given_up
            if delivered > self._delivered_reported:
                self.account.delivered(delivered - self._delivered_reported)
                self._delivered_reported = delivered
                if self._broker_down:
                    self._broker_down = False
                    log.info("kafka: brokers %s are reachable again; delivering",
                             ",".join(self.settings.kafka_brokers))

    def _count_produced(self, flows: int) -> None:
        with self._sync_lock:
            self._produced_total += flows
        self.produced.inc(flows)

    def _poll_loop(self) -> None:
        # Serves delivery reports and error callbacks even when no batch comes in.
        while not self._stop.is_set():
            self._sync_delivered()
            try:
                self._producer.poll(_POLL_INTERVAL)
            except Exception as exc:  # a callback failed; keep serving the others
                self._log.emit("poll", logging.WARNING, "kafka: poll failed: %s", exc)
            if self._spool is not None:
                if self._brokers_down.is_set():
                    self._start_spooling()
                self._take_back()

    # -- disk spool ---------------------------------------------------------------------------
    def spooled_flows(self) -> int:
        """Flows waiting in the disk spool (0 without one)."""
        return 0 if self._spool is None else self._spool.flows

    def recovered_flows(self) -> int:
        """Flows found in the disk spool at start, left by an earlier run (0 without a spool)."""
        return 0 if self._spool is None else self._spool.recovered_flows

    def _start_spooling(self) -> None:
        """Brokers are down: batches go to the spool, and so does librdkafka's queue."""
        # Never wait for an export in progress (it may need this thread's polls); try again at
        # the next poll instead.
        if not self._export_lock.acquire(blocking=False):
            return
        try:
            self._brokers_down.clear()
            with self._spool_lock:
                if self._spooling:
                    return
                self._spooling = True
            log.warning(
                "kafka: no broker takes flows; writing them to the spool %s until one does",
                self.settings.kafka_spool_dir,
            )
            # Queued (not in-flight) messages come back as _PURGE_QUEUE delivery reports, which
            # _on_delivery hands to the spool.
            self._producer.purge(in_queue=True, in_flight=False, blocking=False)
        finally:
            self._export_lock.release()

    def _take_back(self) -> None:
        """Write the messages librdkafka handed back into the spool."""
        with self._undelivered_lock:
            messages, self._undelivered = self._undelivered, []
        if not messages or self._spool is None:
            return
        with self._spool_lock:
            self._spooling = True
            for start in range(0, len(messages), _SPOOL_MESSAGES_PER_RECORD):
                chunk = messages[start : start + _SPOOL_MESSAGES_PER_RECORD]
                self._spool.append(pack_messages(chunk), len(chunk))
            self._spool_lock.notify_all()

    def _replay_loop(self) -> None:
        """Replay the spool, oldest record first, while a broker takes flows."""
        spool = self._spool
        assert spool is not None
        probe_wait = 0.5
        reachable = False
        while not self._stop.is_set():
            with self._spool_lock:
                if not self._spooling:
                    self._spool_lock.wait(_POLL_INTERVAL)
                    continue
            if len(self._producer) or self._brokers_down.is_set():
                # librdkafka still holds older messages: they go first (or back to the spool).
                reachable = False
                self._stop.wait(_POLL_INTERVAL)
                continue
            record = spool.peek()
            if record is None:
                with self._export_lock, self._spool_lock:
                    if spool.empty() and not self._undelivered:
                        self._spooling = False
                        log.info("kafka: spool replayed; producing directly again")
                continue
            if not reachable:
                reachable = self._broker_reachable(probe_wait)
                if not reachable:
                    probe_wait = min(probe_wait * 2, 10.0)
                    self._stop.wait(probe_wait)
                    continue
                probe_wait = 0.5
            spool.begin(record)
            if self._replay(record.payload, record.flows):
                spool.ack(record)
            else:
                spool.release(record)
                reachable = False

    def _broker_reachable(self, timeout: float) -> bool:
        try:
            self._producer.list_topics(timeout=timeout)
        except Exception:
            return False
        return True

    def _replay(self, payload: bytes, flows: int) -> bool:
        """Produce one spooled record and wait until librdkafka delivered or handed back all
        of it; False if it could not be produced (the record stays in the spool)."""
        try:
            if payload[:1] == _BATCH_RECORD:
                batch = decode_batch(payload[1:])
                keys, values = message_keys(batch), self._encode(batch)
                messages: list[tuple[bytes | None, bytes]] = list(zip(keys, values, strict=True))
            else:
                messages = unpack_messages(payload)
        except ValueError as exc:
            self.account.dropped(flows, "spool_corrupt")
            self._log.emit(
                "spool-decode", logging.ERROR, "kafka: dropped a spooled record of %d flows: %s",
                flows, exc,
            )
            return True
        produce = self._producer.produce
        for index, (key, value) in enumerate(messages):
            while True:
                try:
                    produce(self._topic, value, key)
                    break
                except BufferError:
                    if self._stop.wait(0.05):
                        # Stopping: put what was not produced back; shutdown takes the rest.
                        with self._undelivered_lock:
                            self._undelivered.extend(messages[index:])
                        self._count_produced(index)
                        return True
                except Exception as exc:  # this message can never be produced (too large...)
                    self.account.dropped(1, "rejected")
                    self._produce_failed(exc)
                    break
        self._count_produced(len(messages))
        # Acknowledged only once librdkafka is done with it: failures come back to the spool.
        while len(self._producer) and not self._stop.is_set():
            self._producer.flush(_POLL_INTERVAL)
        return True

    # -- Exporter protocol -----------------------------------------------------------------
    def queued(self) -> int:
        """What librdkafka holds: flows queued or in flight, plus callbacks not yet served."""
        return len(self._producer)

    def export(self, batch: FlowBatch) -> None:
        """Queue one message per flow; never raises (failures are counted and logged).

        Large batches are encoded and queued in chunks of :attr:`CHUNK_FLOWS`, which bounds the
        memory the encoded messages take before librdkafka copies them.
        """
        count = len(batch)
        if count == 0:
            return
        if self._spool is not None:
            with self._export_lock:
                with self._spool_lock:
                    if self._spool_closed:
                        self.account.dropped(count, "shutdown")
                        return
                    if self._spooling or self._stop.is_set():
                        self._spool.append(_BATCH_RECORD + encode_batch(batch), count)
                        self._spool_lock.notify_all()
                        return
                self._export_direct(batch)
            return
        self._export_direct(batch)

    def _export_direct(self, batch: FlowBatch) -> None:
        count = len(batch)
        array = batch.array
        for start in range(0, count, self.CHUNK_FLOWS):
            if self._stop.is_set():
                self.account.dropped(count - start, "shutdown")
                return
            chunk = array[start : start + self.CHUNK_FLOWS]
            self._export_chunk(FlowBatch(chunk, batch.interfaces, batch.agent_ip))
        if not self.settings.kafka_async:
            # Synchronous mode: return once the batch is delivered (or given up by librdkafka
            # after KAFKA_MESSAGE_TIMEOUT), unless a shutdown interrupts the wait, or, with a
            # spool, the brokers are down (the queue then moves to the spool). Once the agent
            # is stopping, flush() (called with the shutdown deadline) does the waiting.
            while (len(self._producer) and not self._stop.is_set()
                   and not self._agent_stopping.is_set()):
                if self._spool is not None and self._brokers_down.is_set():
                    break
                self._producer.flush(_POLL_INTERVAL)

    def _export_chunk(self, chunk: FlowBatch) -> None:
        try:
            keys = message_keys(chunk)
            values = self._encode(chunk)
        except Exception as exc:
            self.account.dropped(len(chunk), "encode")
            self._error("encode")
            self._log.emit(
                "encode",
                logging.ERROR,
                "kafka: cannot encode %d flows: %r",
                len(chunk),
                exc,
            )
            return
        if self._spool is not None:
            self._produce_or_spool(keys, values)
        elif self.settings.kafka_async:
            self._produce_nowait(keys, values)
        else:
            self._produce_waiting_for_room(keys, values)

    def _produce_or_spool(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """With a spool, a full local queue sends the rest to the spool (never waits, never
        drops)."""
        produce = self._producer.produce
        topic = self._topic
        for index, (key, value) in enumerate(zip(keys, values, strict=True)):
            try:
                produce(topic, value, key)
            except BufferError:
                self._count_produced(index)
                with self._undelivered_lock:
                    self._undelivered.extend(zip(keys[index:], values[index:], strict=True))
                self._take_back()
                return
            except Exception as exc:
                self.account.dropped(1, "rejected")
                self._produce_failed(exc)
        self._count_produced(len(keys))

    def _produce_nowait(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        produce = self._producer.produce
        topic = self._topic
        queued = dropped = 0
        for key, value in zip(keys, values, strict=True):
            try:
                produce(topic, value, key)
                queued += 1
            except BufferError:
                dropped += 1
            except Exception as exc:  # KafkaException: e.g. message larger than allowed
                self.account.dropped(1, "rejected")
                self._produce_failed(exc)
        self._count_produced(queued)
        if dropped:
            self.account.dropped(dropped, "buffer_full")
            self._error("queue_full")
            self._log.emit(
                "queue-full",
                logging.WARNING,
                "kafka: local queue full (KAFKA_QUEUE_MAX_MESSAGES=%d), dropped %d of %d flows",
                self.settings.kafka_queue_max_messages,
                dropped,
                len(keys),
            )

    def _produce_waiting_for_room(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        produce = self._producer.produce
        topic = self._topic
        for index, (key, value) in enumerate(zip(keys, values, strict=True)):
            while True:
                try:
                    produce(topic, value, key)
                    self._count_produced(1)
                    break
                except BufferError:
                    if self._stop.wait(0.05):
                        self.account.dropped(len(keys) - index, "shutdown")
                        return
                except Exception as exc:
                    self.account.dropped(1, "rejected")
                    self._produce_failed(exc)
                    break

    def _produce_failed(self, exc: Exception) -> None:
        self._error("produce")
        self._log.emit("produce", logging.WARNING, "kafka: cannot queue a flow: %s", exc)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every queued (and spooled) flow to be delivered."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            left = deadline - time.monotonic()
            remaining = int(self._producer.flush(max(0.0, min(_POLL_INTERVAL, left))))
            if remaining == 0 and self._spool is not None and self._spooling:
                remaining = self._spool.flows  # the spool is being replayed: wait for it too
            if remaining == 0 or left <= 0:
                self._sync_delivered()
                return remaining == 0

    def shutdown(self, timeout: float) -> None:
        """Flush for up to ``timeout`` seconds, then give up what is left (counted as dropped)."""
        if self._stop.is_set():
            return
        delivered = self.flush(timeout)
        self._stop.set()
        self._poller.join(timeout=2 * _POLL_INTERVAL + 1.0)
        self._sync_delivered()
        if self._replayer is not None:
            self._replayer.join(timeout=2 * _POLL_INTERVAL + 1.0)
        if self._spool is not None:
            self._close_spool(delivered)
            return
        if delivered:
            return
        # Purged messages come back as delivery reports (_PURGE_QUEUE / _PURGE_INFLIGHT), which
        # _on_delivery counts as dropped: one count per flow, never twice.
        try:
            self._producer.purge()
            self._producer.flush(1.0)
        except Exception as exc:
            log.debug("kafka: purge at shutdown failed: %s", exc)
        self._sync_delivered()
        if self._purged:
            log.warning(
                "kafka: %d flows were still queued at shutdown and are lost (brokers unreachable?)",
                self._purged,
            )


    def _close_spool(self, delivered: bool) -> None:
        """Shutdown with a spool: what librdkafka still holds goes to the spool, kept."""
        assert self._spool is not None
        if not delivered:
            try:
                self._producer.purge()
                self._producer.flush(1.0)
            except Exception as exc:
                log.debug("kafka: purge at shutdown failed: %s", exc)
        self._take_back()
        kept = self._spool.flows
        with self._spool_lock:
            self._spool_closed = True
            self._spool.close()
        if kept:
            log.warning(
                "kafka: %d flows kept in the spool %s; they are sent at the next start",
                kept,
                self.settings.kafka_spool_dir,
            )


def _make_exporter(context: ComponentContext) -> KafkaExporter:
    settings = context.settings
    if not isinstance(settings, KafkaSettings):
        settings = KafkaSettings.model_validate(settings or {})
    return KafkaExporter(settings, context)


@hookimpl
def flowkit_exporters() -> list[ExporterSpec]:
    """The ``kafka`` exporter."""
    return [
        ExporterSpec(
            name="kafka",
            factory=_make_exporter,
            settings_model=KafkaSettings,
            requires=("confluent_kafka",),
            extra="kafka",
            description="Kafka: one message per flow (protobuf pbflow.Record or NetObserv JSON), "
            "keyed by the flow's address pair.",
        )
    ]


__all__ = [
    "ENCODERS",
    "KafkaExporter",
    "KafkaSettings",
    "encode_json",
    "encode_protobuf",
    "flowkit_exporters",
    "message_keys",
    "pack_messages",
    "unpack_messages",
]
