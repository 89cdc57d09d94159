"""The ``ipfix`` exporters: flows as IPFIX (RFC 7011) to a collector over UDP or TCP.

``EXPORT=ipfix+udp`` and ``EXPORT=ipfix+tcp`` are NetObserv's names; ``EXPORT=ipfix`` picks the
transport from ``IPFIX_TRANSPORT``. Records follow the templates of :mod:`flowkit.ipfix`
(IANA elements, one template per address family), encoded in C, many per message.

UDP: each batch is sent at once from the exporter's thread, in messages that fill the path MTU
(``IPFIX_MTU`` minus the IP and UDP headers). Templates go out before the first data, then
again every ``IPFIX_TEMPLATE_REFRESH`` and every ``IPFIX_TEMPLATE_REFRESH_MESSAGES`` messages,
and after a send error (the collector may have restarted). A datagram the kernel accepts counts
as exported; one it refuses (collector port unreachable, no buffer space) is tried once more,
then dropped and counted (``dropped_flows{exporter="ipfix+udp",reason="error"}``).

TCP follows flowkit's one delivery rule (:mod:`flowkit.delivery`): ``export`` only queues the
batch (bounded by ``IPFIX_BUFFER_MAX_FLOWS``, the rest counted with ``reason="buffer_full"``, or
written to the disk spool of ``IPFIX_SPOOL_DIR``); the sender thread connects, sends the templates
once per connection, then messages of up to ``IPFIX_TCP_MAX_MESSAGE`` bytes. A lost connection is
re-made with jittered exponential backoff; each connection is a new transport session
(templates again, sequence numbers from 0) and sending resumes with the first record not yet
written. At shutdown what could not be sent before the deadline is spooled or counted with
``reason="shutdown"``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flowkit import hookimpl
from flowkit import peer_settings as shared
from flowkit.accounts import ExporterAccount
from flowkit.components import ComponentContext, ExporterSpec
from flowkit.delivery import Outcome, RetryPolicy, Sender, Split
from flowkit.ratelimit import RateLimitedLog
from flowkit.settings_types import ByteSize, Duration
from flowkit.spool import FsyncPolicy, check_spool_settings, open_spool

if TYPE_CHECKING:
    from flowkit.ipfix import IpfixMessage, IpfixParams
    from flowkit.metrics import Metrics
    from flowkit.model import FlowBatch

log = logging.getLogger(__name__)

# IP + UDP headers in front of a message.
_UDP_OVERHEAD = {4: 20 + 8, 6: 40 + 8}
_HEADER_AND_SET = 16 + 4
# Longest data record: IPv6 template, IPv6 exporter address, a 15-byte interface name.
_MAX_RECORD = 108 + 16 + 1 + 15
# ... plus flowkit's enterprise elements when IPFIX_ENTERPRISE_NUMBER is set (a 32-byte DNS name).
_ENTERPRISE_RECORD = 47 + 1 + 32


class IpfixSettings(BaseModel):
    """Settings of the ``ipfix`` exporters (environment variable = field name upper-cased)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_host: str = Field(
        min_length=1,
        description="Host name or address of the IPFIX collector (required when EXPORT "
        "includes ipfix+udp, ipfix+tcp or ipfix).",
        json_schema_extra={"env_aliases": ["FLOWS_TARGET_HOST"]},
    )
    target_port: int = Field(
        ge=1,
        le=65535,
        description="UDP or TCP port of the IPFIX collector (4739 is IPFIX's registered port).",
        json_schema_extra={"env_aliases": ["FLOWS_TARGET_PORT"]},
    )
    ipfix_transport: Literal["udp", "tcp"] = Field(
        default="udp",
        description="Transport of EXPORT=ipfix: udp or tcp (ipfix+udp and ipfix+tcp set it).",
    )
    ipfix_observation_domain_id: int = Field(
        default=0, ge=0, le=2**32 - 1, description="Observation domain id of every message."
    )
    ipfix_enterprise_number: int = Field(
        default=0,
        ge=0,
        le=2**32 - 1,
        description="IANA Private Enterprise Number under which flowkit's own elements (drops, "
        "RTT, DNS, NetObserv TCP flags) are sent; 0: they are not sent.",
    )
    ipfix_mtu: int = Field(
        default=1500,
        ge=1,
        le=65535 + 48,
        description="Path MTU to the collector (UDP): messages fill it, IP and UDP headers "
        "included.",
    )
    ipfix_tcp_max_message: int = Field(
        default=65535,
        ge=1,
        le=65535,
        description="Most bytes in one IPFIX message over TCP.",
    )
    ipfix_template_refresh: Duration = Field(
        default=60.0,
        gt=0,
        description="UDP: send the templates again after this long (RFC 7011 section 8.4).",
    )
    ipfix_template_refresh_messages: int = Field(
        default=100,
        ge=0,
        description="UDP: send the templates again after this many data messages (0: only on "
        "the timer).",
    )
    ipfix_buffer_max_flows: int = Field(
        default=100_000,
        ge=1,
        description="TCP: most flows kept while the collector is unreachable; more are dropped "
        "and counted.",
    )
    ipfix_retry_initial_backoff: Duration = shared.retry_initial_backoff("a connection", "TCP: ")
    ipfix_retry_max_backoff: Duration = shared.retry_max_backoff("a connection", "TCP: ")
    ipfix_timeout: Duration = Field(
        default=10.0, gt=0, description="TCP: deadline of a connection attempt and of one send."
    )
    ipfix_spool_dir: str = shared.spool_dir("the collector is unreachable", "batches", "TCP: ")
    ipfix_spool_max_bytes: ByteSize = shared.spool_max_bytes()
    ipfix_spool_segment_bytes: ByteSize = shared.spool_segment_bytes()
    ipfix_spool_fsync: FsyncPolicy = shared.spool_fsync()

    @model_validator(mode="after")
    def _check(self) -> IpfixSettings:
        overhead = _UDP_OVERHEAD[self._family_guess()]
        record = _MAX_RECORD + (_ENTERPRISE_RECORD if self.ipfix_enterprise_number else 0)
        need = overhead + _HEADER_AND_SET + record
        if self.ipfix_transport == "udp" and self.ipfix_mtu < need:
            raise ValueError(
                f"IPFIX_MTU={self.ipfix_mtu} is too small for one IPFIX record: at least {need} "
                f"bytes are needed ({overhead} of IP/UDP headers, {_HEADER_AND_SET} of IPFIX "
                f"headers, a record of up to {record})"
            )
        if self.ipfix_mtu - overhead > 65535 and self.ipfix_transport == "udp":
            raise ValueError(f"IPFIX_MTU={self.ipfix_mtu}: an IPFIX message is at most 65535 bytes")
        if self.ipfix_tcp_max_message < _HEADER_AND_SET + record:
            raise ValueError(
                f"IPFIX_TCP_MAX_MESSAGE={self.ipfix_tcp_max_message} is too small for one IPFIX "
                f"record: at least {_HEADER_AND_SET + record} bytes are needed"
            )
        shared.check_backoff("IPFIX", self.ipfix_retry_initial_backoff,
                             self.ipfix_retry_max_backoff)
        check_spool_settings("IPFIX", self.ipfix_spool_dir, self.ipfix_spool_max_bytes,
                             self.ipfix_spool_segment_bytes)
        return self

    def _family_guess(self) -> int:
        try:
            return ipaddress.ip_address(self.target_host).version
        except ValueError:
            return 6  # a name may resolve to IPv6: assume the larger headers

    def with_transport(self, transport: Literal["udp", "tcp"]) -> IpfixSettings:
        """A copy using ``transport`` (validated again)."""
        return IpfixSettings.model_validate({**self.model_dump(), "ipfix_transport": transport})

    @property
    def target(self) -> str:
        """``host:port`` for messages (IPv6 literals in brackets)."""
        host = self.target_host
        return f"[{host}]:{self.target_port}" if ":" in host else f"{host}:{self.target_port}"


class _Counters:
    """The metrics of one IPFIX exporter. Drops go to the agent's account only (the one family
    ``dropped_flows{exporter,reason}``)."""

    def __init__(
        self, metrics: Metrics, transport: str, account: ExporterAccount | None = None
    ) -> None:
        self.account = account if account is not None else ExporterAccount(
            f"ipfix+{transport}", metrics)
        self.sent_flows = metrics.counter("ipfix_sent_flows", "Flows sent to the IPFIX collector")
        self.sent_messages = metrics.counter(
            "ipfix_sent_messages", "IPFIX messages sent (data and templates)"
        )
        self.errors = metrics.counter(
            "ipfix_send_errors", "Failed sends or connections to the IPFIX collector", ["error"]
        )

    def drop(self, reason: str, flows: int) -> None:
        self.account.dropped(flows, reason)

    def sent(self, flows: int) -> None:
        self.sent_flows.inc(flows)
        self.account.delivered(flows)


def _params(settings: IpfixSettings, agent_ip: str | None, max_message: int) -> IpfixParams:
    from flowkit.ipfix import IpfixParams

    exporter = None
    if agent_ip:
        try:
            exporter = str(ipaddress.ip_address(agent_ip))
        except ValueError:
            exporter = None
    return IpfixParams(
        domain_id=settings.ipfix_observation_domain_id,
        max_message=max_message,
        exporter_ip=exporter,
        enterprise=settings.ipfix_enterprise_number,
    )


def _resolve(settings: IpfixSettings, kind: socket.SocketKind) -> tuple[int, tuple[str, int]]:
    infos = socket.getaddrinfo(settings.target_host, settings.target_port, type=kind)
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))


class UdpIpfixExporter:
    """IPFIX over UDP, sent from the exporter's thread (see the module docstring)."""

    accounts_delivery = True  # flows count as exported once the kernel took their datagram

    def __init__(
        self, settings: IpfixSettings, metrics: Metrics, account: ExporterAccount | None = None
    ) -> None:
        self.settings = settings
        self._counters = _Counters(metrics, "udp", account)
        self._problems = RateLimitedLog(log)
        family, self._address = _resolve(settings, socket.SOCK_DGRAM)
        overhead = _UDP_OVERHEAD[6 if family == socket.AF_INET6 else 4]
        self._max_message = min(65535, settings.ipfix_mtu - overhead)
        self._socket = socket.socket(family, socket.SOCK_DGRAM)
        self._socket.connect(self._address)
        self._sequence = 0
        self._params: IpfixParams | None = None
        self._templates_due = True
        self._templates_at = 0.0
        self._messages_since_templates = 0
        self._lock = threading.Lock()
        log.info("ipfix exporter sending to %s over UDP (messages up to %d bytes)",
                 settings.target, self._max_message)

    def export(self, batch: FlowBatch) -> None:
        """Encode and send the batch now; refused datagrams are retried once, then counted."""
        from flowkit.ipfix import encode_messages

        if len(batch) == 0:
            return
        with self._lock:
            params = _params(self.settings, batch.agent_ip, self._max_message)
            if params != self._params:
                self._params, self._templates_due = params, True
            now = time.time()
            try:
                messages = encode_messages(
                    batch, params, export_time=int(now), sequence=self._sequence
                )
            except ValueError as exc:  # a record larger than a message (huge interface name)
                self._counters.drop("encode", len(batch))
                self._problems.emit("encode", logging.ERROR, "ipfix: %s; dropped", exc)
                return
            for message in messages:
                self._maybe_send_templates(now)
                if self._send(message.data):
                    self._counters.sent(message.records)
                    self._messages_since_templates += 1
                else:
                    self._counters.drop("error", message.records)
                # Records that could not be sent still advance the sequence number: the
                # collector sees the gap as loss, which it is.
                self._sequence = (self._sequence + message.records) & 0xFFFF_FFFF

    def _maybe_send_templates(self, now: float) -> None:
        from flowkit.ipfix import template_message

        s = self.settings
        due = (
            self._templates_due
            or now - self._templates_at >= s.ipfix_template_refresh
            or (
                s.ipfix_template_refresh_messages
                and self._messages_since_templates >= s.ipfix_template_refresh_messages
            )
        )
        if not due or self._params is None:
            return
        data = template_message(self._params, export_time=int(now), sequence=self._sequence)
        if self._send(data):
            self._templates_due = False
            self._templates_at = now
            self._messages_since_templates = 0

    def _send(self, data: bytes) -> bool:
        for attempt in (1, 2):
            try:
                self._socket.send(data)
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, "OSError")
                self._counters.errors.labels(error=name).inc()
                self._templates_due = True  # the collector may have restarted
                if attempt == 2:
                    self._problems.emit(
                        "send",
                        logging.ERROR,
                        "ipfix: cannot send to collector %s over UDP (%s); dropping messages "
                        "until it works again",
                        self.settings.target,
                        exc.strerror or name,
                    )
                continue
            self._counters.sent_messages.inc()
            if attempt == 1:
                self._problems.recovered(
                    "send", logging.INFO, "ipfix: collector %s reachable again",
                    self.settings.target,
                )
            return True
        return False

    def flush(self, timeout: float) -> bool:
        """Nothing is held back: every export is sent at once."""
        return True

    def shutdown(self, timeout: float) -> None:
        """Close the socket (nothing is buffered)."""
        self._socket.close()


class TcpIpfixExporter:
    """IPFIX over TCP through a :class:`~flowkit.delivery.Sender` (see the module docstring).

    The payloads the sender buffers (and spools) are whole batches in the spool's raw format,
    not IPFIX messages: sequence numbers and templates belong to a connection, so messages are
    encoded when they are written.
    """

    accounts_delivery = True  # flows count as exported once the collector's kernel took them

    def __init__(
        self, settings: IpfixSettings, metrics: Metrics, account: ExporterAccount | None = None
    ) -> None:
        self.settings = settings
        self._counters = _Counters(metrics, "tcp", account)
        self._problems = RateLimitedLog(log)
        self._socket: socket.socket | None = None
        self._sequence = 0
        self._session_params: IpfixParams | None = None
        spool = open_spool(
            "IPFIX",
            settings.ipfix_spool_dir,
            settings.ipfix_spool_max_bytes,
            settings.ipfix_spool_segment_bytes,
            settings.ipfix_spool_fsync,
            name="ipfix",
            metrics=metrics,
            on_drop=self._counters.drop,
        )
        self._sender = Sender(
            "ipfix",
            self._send_one,
            max_buffered_flows=settings.ipfix_buffer_max_flows,
            retry=RetryPolicy(settings.ipfix_retry_initial_backoff,
                              settings.ipfix_retry_max_backoff),
            spool=spool,
            on_drop=self._counters.drop,
            on_delivered=self._counters.sent,
            target=f"collector {settings.target}",
            buffer_setting="IPFIX_BUFFER_MAX_FLOWS",
        )
        metrics.gauge_callback(
            "ipfix_buffered_flows",
            "Flows waiting to be sent to the IPFIX collector (TCP)",
            lambda: float(self._sender.buffered_flows),
        )
        log.info("ipfix exporter sending to %s over TCP", settings.target)

    # -- Exporter protocol ------------------------------------------------------------------
    def export(self, batch: FlowBatch) -> None:
        """Queue the batch (bounded, or spooled); never waits for the collector."""
        from flowkit.spool import encode_batch

        if len(batch):
            self._sender.offer([(encode_batch(batch), len(batch))])

    def spooled_flows(self) -> int:
        """Flows waiting in the disk spool (0 without one)."""
        return self._sender.spooled_flows()

    def recovered_flows(self) -> int:
        """Flows found in the disk spool at start, left by an earlier run (0 without a spool)."""
        return self._sender.recovered_flows()

    def flush(self, timeout: float) -> bool:
        """Wait until every buffered flow was sent; False on timeout."""
        return self._sender.flush(timeout)

    def shutdown(self, timeout: float) -> None:
        """Send what can be sent within ``timeout``; spool or count the rest; close."""
        self._sender.shutdown(timeout)
        self._disconnect()

    # -- one attempt (called by the sender thread) --------------------------------------------
    def _send_one(self, payload: bytes, flows: int) -> Outcome | Split:
        """Write one batch; after a failure part-way, report the written part as a part."""
        from flowkit.ipfix import encode_messages
        from flowkit.spool import decode_batch

        if not payload:  # the written part of a batch that failed part-way (see below)
            return Outcome.SENT
        try:
            batch = decode_batch(payload)
        except ValueError as exc:
            self._problems.emit("decode", logging.ERROR, "ipfix: unreadable batch: %s", exc)
            return Outcome.REJECTED
        params = _params(self.settings, batch.agent_ip, self.settings.ipfix_tcp_max_message)
        if self._socket is not None and params != self._session_params:
            self._disconnect()  # other templates: a new session announces them
        if self._socket is None and not self._connect(params):
            return Outcome.RETRY
        try:
            messages = encode_messages(
                batch, params, export_time=int(time.time()), sequence=self._sequence
            )
        except ValueError as exc:
            self._problems.emit("encode", logging.ERROR, "ipfix: %s; dropped", exc)
            return Outcome.REJECTED
        written = 0
        for message in messages:
            if not self._write(message):
                if not written:
                    return Outcome.RETRY
                # The collector has the first `written` flows: they count as delivered (the
                # empty part), the rest is sent again on the next connection.
                from flowkit.model import FlowBatch
                from flowkit.spool import encode_batch

                rest = FlowBatch(batch.array[written:], batch.interfaces, batch.agent_ip)
                return Split([(b"", written), (encode_batch(rest), len(rest))])
            self._sequence = (self._sequence + message.records) & 0xFFFF_FFFF
            self._counters.sent_messages.inc()
            written += message.records
        return Outcome.SENT

    def _connect(self, params: IpfixParams) -> bool:
        from flowkit.ipfix import template_message

        s = self.settings
        try:
            family, address = _resolve(s, socket.SOCK_STREAM)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(s.ipfix_timeout)
            try:
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(template_message(params, export_time=int(time.time()), sequence=0))
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            self._failed("connect", exc)
            return False
        self._socket = sock
        self._sequence = 0
        self._session_params = params
        self._counters.sent_messages.inc()
        if not self._problems.recovered(
            "send", logging.INFO, "ipfix: connected to collector %s again", s.target
        ):
            log.info("ipfix: connected to collector %s", s.target)
        return True

    def _write(self, message: IpfixMessage) -> bool:
        sock = self._socket
        if sock is None:
            return False
        try:
            # A collector never writes to us: readable means it closed or reset the connection,
            # and anything written now would be lost.
            readable, _, _ = select.select([sock], [], [], 0)
            if readable and not sock.recv(1, socket.MSG_PEEK):
                raise ConnectionResetError(errno.ECONNRESET, "the collector closed the connection")
            sock.sendall(message.data)
        except OSError as exc:
            self._failed("send", exc)
            self._disconnect()
            return False
        return True

    def _failed(self, what: str, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        self._counters.errors.labels(error=name).inc()
        self._problems.emit(
            "send",
            logging.ERROR,
            "ipfix: cannot %s to collector %s over TCP (%s); keeping flows and retrying",
            "connect" if what == "connect" else "send",
            self.settings.target,
            exc.strerror or str(exc) or name,
        )

    def _disconnect(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            finally:
                self._socket = None


def _factory(transport: Literal["udp", "tcp"] | None) -> object:
    def make(context: ComponentContext) -> UdpIpfixExporter | TcpIpfixExporter:
        settings: IpfixSettings = context.settings
        if transport is not None and settings.ipfix_transport != transport:
            settings = settings.with_transport(transport)
        if settings.ipfix_transport == "tcp":
            return TcpIpfixExporter(settings, context.metrics, context.account)
        return UdpIpfixExporter(settings, context.metrics, context.account)

    return make


@hookimpl
def flowkit_exporters() -> list[ExporterSpec]:
    """``ipfix+udp``, ``ipfix+tcp`` (NetObserv's names) and ``ipfix`` (IPFIX_TRANSPORT)."""
    return [
        ExporterSpec(
            name="ipfix+udp",
            factory=_factory("udp"),  # type: ignore[arg-type]
            settings_model=IpfixSettings,
            description="IPFIX (RFC 7011) over UDP to TARGET_HOST:TARGET_PORT",
        ),
        ExporterSpec(
            name="ipfix+tcp",
            factory=_factory("tcp"),  # type: ignore[arg-type]
            settings_model=IpfixSettings,
            description="IPFIX (RFC 7011) over TCP to TARGET_HOST:TARGET_PORT",
        ),
        ExporterSpec(
            name="ipfix",
            factory=_factory(None),  # type: ignore[arg-type]
            settings_model=IpfixSettings,
            description="IPFIX (RFC 7011) over IPFIX_TRANSPORT (udp or tcp)",
        ),
    ]
