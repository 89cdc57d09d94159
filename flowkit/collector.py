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

if TYPE_CHECKING:
    import grpc

    from flowkit.pbflow.flow_pb2 import Records

log = logging.getLogger("flowkit.collector")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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

    ``on_records`` runs on the server's worker threads (up to ``workers`` at once); raise
    nothing from it, or abort through the context. Use as a context manager or call
    :meth:`stop`.
    """

    def __init__(
        self,
        on_records: Callable[[Records, grpc.ServicerContext], None],
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ServerTls | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        workers: int = 4,
    ) -> None:
        from flowkit.pbflow import import_grpc
        from flowkit.pbflow.service import collector_handler

        grpc = import_grpc()

        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fk-collector"),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._server.add_generic_rpc_handlers((collector_handler(on_records),))
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


class JsonLinesPrinter:
    """Writes every flow of received messages as a JSON line (thread-safe)."""

    def __init__(self, stream: IO[bytes], on_closed: Callable[[], None] | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._closed = False
        self._on_closed = on_closed
        self.flows = 0

    @property
    def closed(self) -> bool:
        """Whether the reader of the stream went away."""
        return self._closed

    def __call__(self, message: Records, context: Any = None) -> None:
        import orjson

        from flowkit.pbflow.convert import record_to_json_dict

        lines = b"".join(
            orjson.dumps(record_to_json_dict(record)) + b"\n" for record in message.entries
        )
        with self._lock:
            if self._closed:
                return
            try:
                self._stream.write(lines)
                self._stream.flush()
            except BrokenPipeError:
                self._closed = True
                if self._on_closed is not None:
                    self._on_closed()
                return
            self.flows += len(message.entries)


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
    tls = None
    if args.tls_cert:
        try:
            tls = ServerTls.from_files(args.tls_cert, args.tls_key, args.tls_client_ca)
        except OSError as exc:
            parser.exit(2, f"flowkit-collector: cannot read {exc.filename}: {exc.strerror}\n")
    try:
        from flowkit.pbflow import import_grpc

        import_grpc()
    except ImportError:
        parser.exit(2, "flowkit-collector: needs grpcio; install flowkit-ebpf[grpc]\n")

    stop = threading.Event()
    printer = JsonLinesPrinter(sys.stdout.buffer, on_closed=stop.set)
    try:
        server = CollectorServer(printer, args.host, args.port, tls, args.max_message_bytes)
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
    log.info("flowkit-collector stopped after %d flows", printer.flows)
    if printer.closed:
        # Standard output went away: silence the interpreter's final flush of it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0


if __name__ == "__main__":
    sys.exit(main())
