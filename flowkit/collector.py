"""``flowkit-collector``: a ``pbflow.Collector`` gRPC server printing the flows it receives.

Each received flow becomes one JSON line on standard output, exactly as the ``stdout`` exporter
prints it (NetObserv keys, :func:`flowkit.model.flow_to_json_dict`), so that
``flowkit-agent`` with ``EXPORT=grpc`` piped through the collector gives the same lines as
``EXPORT=stdout`` (except the interface index, which is not on the wire).

Usage::

    flowkit-collector --port 9999                        # plain text on 127.0.0.1
    flowkit-collector --host 0.0.0.0 --port 9999 \\
        --tls-cert server.pem --tls-key server.key       # TLS
        [--tls-client-ca clients-ca.pem]                 # mutual TLS (client certificates required)

``--port 0`` picks a free port; the chosen address is always logged on standard error as
``flowkit-collector listening on HOST:PORT``. The server is also usable in-process
(:class:`CollectorServer`), which the tests and benchmarks do.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from flowkit.ratelimit import RateLimitedLog

if TYPE_CHECKING:
    import grpc

log = logging.getLogger("flowkit.collector")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_MESSAGE_BYTES = (1 << 31) - 1  # gRPC's limit
DEFAULT_MAX_RECORDS = 100_000
"""Most records one message may hold (the agent sends at most GRPC_MESSAGE_MAX_FLOWS, 10,000 by
default); a bound on what one message can make the collector do."""


@dataclass(frozen=True)
class ServerTls:
    """PEM contents for a TLS server; ``client_ca`` set means client certificates are required."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: str, key: str, client_ca: str | None = None) -> ServerTls:
        """Read the PEM files (raises ``OSError`` naming the file)."""
        return cls(
            Path(cert).read_bytes(),
            Path(key).read_bytes(),
            Path(client_ca).read_bytes() if client_ca else None,
        )


class CollectorServer:
    """A running ``pbflow.Collector`` server calling ``on_records`` for every message.

    ``on_records`` gets the decoded ``Records`` message, or with ``raw=True`` its bytes (what
    :class:`JsonLinesPrinter` takes, decoding one record at a time). It runs on the server's
    worker threads (up to ``workers`` at once); raise nothing from it, or abort through the
    context. Use as a context manager or call :meth:`stop`.
    """

    def __init__(
        self,
        on_records: Callable[[Any, grpc.ServicerContext], None],
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ServerTls | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        workers: int = 4,
        raw: bool = False,
    ) -> None:
        from flowkit.pbflow import import_grpc
        from flowkit.pbflow.service import collector_handler, collector_raw_handler

        grpc = import_grpc()

        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fk-collector"),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        handler = collector_raw_handler(on_records) if raw else collector_handler(on_records)
        self._server.add_generic_rpc_handlers((handler,))
        bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        address = f"{bind_host}:{port}"
        if tls is None:
            bound = self._server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(tls.key, tls.cert)],
                root_certificates=tls.client_ca,
                require_client_auth=tls.client_ca is not None,
            )
            bound = self._server.add_secure_port(address, credentials)
        if not bound:
            raise OSError(f"cannot listen on {address}")
        self.host = host
        self.port: int = bound
        self._server.start()

    @property
    def address(self) -> str:
        """``host:port`` the server listens on."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops; False if ``timeout`` passed first."""
        result: bool = self._server.wait_for_termination(timeout)
        return not result

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting calls; let running ones finish for ``grace`` seconds."""
        self._server.stop(grace).wait()

    def __enter__(self) -> CollectorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(None)


class MalformedMessage(ValueError):
    """The bytes are not a ``pbflow.Records`` message (broken framing)."""


class TooManyRecords(ValueError):
    """A message holds more records than the collector accepts."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    end = len(data)
    while True:
        if pos >= end or shift > 63:
            raise MalformedMessage("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def record_spans(data: bytes, max_records: int) -> list[tuple[int, int]]:
    """(start, end) of every ``entries`` record in a serialized ``Records`` message.

    Only the framing is read (tags and lengths), so this costs nothing per byte of a record and
    stops at once past ``max_records`` (:class:`TooManyRecords`); broken framing raises
    :class:`MalformedMessage`. Fields other than ``entries`` are skipped, as protobuf does.
    """
    spans: list[tuple[int, int]] = []
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, pos = _varint(data, pos)
            stop = pos + length
            if stop > end:
                raise MalformedMessage(f"field {field} runs past the end of the message")
            if field == 1:
                if len(spans) >= max_records:
                    raise TooManyRecords(f"more than {max_records} records in one message")
                spans.append((pos, stop))
            pos = stop
        elif wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise MalformedMessage(f"field {field} has wire type {wire_type}")
        if field == 0 or pos > end:
            raise MalformedMessage("invalid field number or truncated field")
    return spans


class JsonLinesPrinter:
    """Writes every flow of received messages as a JSON line (thread-safe).

    Takes the raw bytes of each message (``CollectorServer(..., raw=True)``): the framing is
    checked first (at most ``max_records`` records, else the whole message is refused), then
    records are decoded and printed one chunk at a time, so memory stays a small multiple of
    the message size whatever it holds. A record that does not decode or convert (a malformed
    address, ...) is skipped and counted; the call then fails with INVALID_ARGUMENT, which the
    agent's exporter treats as permanent, carrying the number of records accepted in the
    trailing metadata ``fk-accepted-records`` so that both sides count the same flows.
    """

    CHUNK = 1024
    """Records converted and written at once."""

    def __init__(
        self,
        stream: IO[bytes],
        on_closed: Callable[[], None] | None = None,
        max_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._closed = False
        self._on_closed = on_closed
        self._max_records = max_records
        self._problems = RateLimitedLog(log)
        self.flows = 0
        self.rejected_records = 0
        self.rejected_messages = 0

    @property
    def closed(self) -> bool:
        """Whether the reader of the stream went away."""
        return self._closed

    def __call__(self, message: bytes, context: Any = None) -> None:
        try:
            spans = record_spans(message, self._max_records)
        except (MalformedMessage, TooManyRecords) as exc:
            self._reject_message(context, exc)
            return
        accepted = malformed = 0
        first_error = ""
        for start in range(0, len(spans), self.CHUNK):
            lines, bad, error = _convert(message, spans[start : start + self.CHUNK], start)
            malformed += bad
            first_error = first_error or error
            if not self._write(lines, len(spans[start : start + self.CHUNK]) - bad):
                return
            accepted += len(spans[start : start + self.CHUNK]) - bad
        if malformed:
            with self._lock:
                self.rejected_records += malformed
            detail = (f"{malformed} of {len(spans)} records are malformed ({first_error}); "
                      f"the other {accepted} were accepted")
            self._problems.emit("record", logging.WARNING, "rejected %s", detail)
            if context is not None:
                import grpc

                context.set_trailing_metadata((("fk-accepted-records", str(accepted)),))
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail)

    def _write(self, lines: bytes, flows: int) -> bool:
        with self._lock:
            if self._closed:
                return False
            try:
                self._stream.write(lines)
                self._stream.flush()
            except BrokenPipeError:
                self._closed = True
                if self._on_closed is not None:
                    self._on_closed()
                return False
            self.flows += flows
        return True

    def _reject_message(self, context: Any, exc: Exception) -> None:
        with self._lock:
            self.rejected_messages += 1
        detail = (f"not a pbflow.Records message: {exc}" if isinstance(exc, MalformedMessage)
                  else f"{exc} (flowkit-collector --max-records)")
        self._problems.emit("message", logging.WARNING, "rejected a message: %s", detail)
        if context is not None:
            import grpc

            context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail)


def _convert(message: bytes, spans: list[tuple[int, int]], first: int) -> tuple[bytes, int, str]:
    """JSON lines of the records at ``spans``; (lines, malformed count, first error)."""
    import orjson

    from flowkit.pbflow.convert import Record, record_to_json_dict

    out: list[bytes] = []
    bad = 0
    error = ""
    for index, (start, stop) in enumerate(spans, first):
        try:
            out.append(orjson.dumps(record_to_json_dict(Record.FromString(message[start:stop]))))
        except Exception as exc:  # DecodeError, a malformed address, ...: skip this record
            bad += 1
            error = error or f"record {index}: {' '.join(str(exc).split()) or type(exc).__name__}"
    out.append(b"")
    return b"\n".join(out) if len(out) > 1 else b"", bad, error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowkit-collector",
        description="Receive flows over gRPC (pbflow.Collector) and print them as JSON lines.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=9999,
        help="TCP port to listen on; 0 picks a free one (default 9999)",
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="server certificate (enables TLS)")
    parser.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="CA for client certificates: enables mutual TLS (clients must "
        "present a certificate it signed)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest message accepted (default 64 MiB)",
    )
    parser.add_argument(
        "--max-records",
        type=int,
        default=DEFAULT_MAX_RECORDS,
        help=f"most records in one message; larger messages are refused (default "
        f"{DEFAULT_MAX_RECORDS})",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``flowkit-collector``; returns the exit status (2 for bad options)."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.exit(2, "flowkit-collector: --tls-cert and --tls-key go together\n")
    if args.tls_client_ca and not args.tls_cert:
        parser.exit(2, "flowkit-collector: --tls-client-ca needs --tls-cert and --tls-key\n")
    if not 0 <= args.port <= 65535:
        parser.exit(2, f"flowkit-collector: invalid --port {args.port}\n")
    if not 1024 <= args.max_message_bytes <= MAX_MESSAGE_BYTES:
        parser.exit(2, f"flowkit-collector: invalid --max-message-bytes {args.max_message_bytes}: "
                    f"use 1024 to {MAX_MESSAGE_BYTES}\n")
    if args.max_records < 1:
        parser.exit(2, f"flowkit-collector: invalid --max-records {args.max_records}: use at "
                    "least 1\n")
    tls = None
    if args.tls_cert:
        try:
            tls = ServerTls.from_files(args.tls_cert, args.tls_key, args.tls_client_ca)
        except OSError as exc:
            parser.exit(2, f"flowkit-collector: cannot read {exc.filename}: {exc.strerror}\n")
    # gRPC's C core logs its own line before a failed bind (and more): keep to ours.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        from flowkit.pbflow import import_grpc

        import_grpc()
    except ImportError:
        parser.exit(2, "flowkit-collector: needs grpcio; install flowkit-ebpf[grpc]\n")

    stop = threading.Event()
    if sys.stdout is None:
        parser.exit(2, "flowkit-collector: standard output is closed\n")
    printer = JsonLinesPrinter(sys.stdout.buffer, on_closed=stop.set,
                               max_records=args.max_records)
    try:
        server = CollectorServer(printer, args.host, args.port, tls, args.max_message_bytes,
                                 raw=True)
    except (OSError, RuntimeError) as exc:
        parser.exit(2, f"flowkit-collector: cannot listen on {args.host}:{args.port}: {exc}\n")

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "flowkit-collector listening on %s (%s)",
        server.address,
        "mutual TLS" if tls and tls.client_ca else "TLS" if tls else "plain text",
    )
    while not stop.wait(1.0):
        pass
    server.stop(2.0)
    log.info("flowkit-collector stopped after %d flows (%d malformed records and %d messages "
             "rejected)", printer.flows, printer.rejected_records, printer.rejected_messages)
    if printer.closed:
        # Standard output went away: silence the interpreter's final flush of it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0


if __name__ == "__main__":
    sys.exit(main())
