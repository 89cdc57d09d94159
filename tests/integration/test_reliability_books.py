"""Conservation for the exporters test_conservation.py does not run: OTLP, Parquet, IPFIX.

A real ``flowkit-agent`` (synthetic tracer: a known number of flows) exports into a sink that
fails part of the time: an OTLP/HTTP receiver that refuses every other request, a Parquet
directory on a file system that fills up, an IPFIX/TCP collector (the PyPI ``ipfix`` decoder)
that comes up late. The agent's final JSON line must balance
(evicted == exported + sum(dropped by reason)), and what it says it exported must be exactly
what the sink holds.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

try:
    from .fk_cli_helpers import SYNTHETIC, AgentProcess, clean_env
except ImportError:
    from fk_cli_helpers import SYNTHETIC, AgentProcess, clean_env  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

COLLECTOR = str(Path(__file__).with_name("ipfix_collector.py"))


def final_books(stderr_lines: list[str]) -> dict[str, Any]:
    """The ``flows`` field of the final JSON line, every count an integer, balanced."""
    for line in stderr_lines:
        with contextlib.suppress(orjson.JSONDecodeError):
            entry = orjson.loads(line)
            if str(entry.get("msg", "")).startswith("flowkit agent stopped: "):
                books: dict[str, Any] = entry["flows"]
                for name, account in books["exporters"].items():
                    counts = [account["exported"], *account["dropped"].values()]
                    assert all(isinstance(n, int) for n in counts), account
                    assert sum(counts) == books["evicted"], f"{name} unbalanced: {books}"
                return books
    raise AssertionError("no final 'flowkit agent stopped' line:\n" + "".join(stderr_lines))


def run_until_done(env: dict[str, str], records: int) -> AgentProcess:
    """Run the agent until the synthetic tracer produced ``records`` packets and the last of
    them was evicted, then stop it (SIGTERM) and return it."""
    with AgentProcess([], env) as agent:
        agent.wait_for_log("flowkit agent started")
        time.sleep(records / 1000 + 1.0)  # SYNTHETIC_RATE=1000, then a few evictions more
        assert agent.stop() == 0
    assert "Traceback" not in "".join(agent.stderr_lines)
    return agent


class FlakyOtlpReceiver(http.server.ThreadingHTTPServer):
    """OTLP/HTTP logs receiver that accepts odd requests and refuses even ones (400, which the
    exporter treats as permanent), counting the log records of each kind."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

        self.accepted = 0
        self.refused = 0
        self.requests = 0
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
                records = sum(len(scope.log_records) for resource in request.resource_logs
                              for scope in resource.scope_logs)
                with lock:
                    outer.requests += 1
                    ok = outer.requests % 2 == 1
                    if ok:
                        outer.accepted += records
                    else:
                        outer.refused += records
                reply = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()
                self.send_response(200 if ok else 400)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()


def test_otlp_books_match_what_a_receiver_refusing_every_other_request_took() -> None:
    pytest.importorskip("opentelemetry.proto")
    receiver = FlakyOtlpReceiver()
    try:
        records = 1500
        env = clean_env(SYNTHETIC, EXPORT="otlp", OTLP_PROTOCOL="http/protobuf",
                        OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.server_address[1]}",
                        OTLP_MESSAGE_MAX_FLOWS="4", SYNTHETIC_FLOWS="10",
                        SYNTHETIC_RATE="1000", SYNTHETIC_MAX_RECORDS=str(records),
                        CACHE_ACTIVE_TIMEOUT="100ms")
        agent = run_until_done(env, records)
    finally:
        receiver.shutdown()
        receiver.server_close()
    books = final_books(agent.stderr_lines)
    otlp = books["exporters"]["otlp"]
    assert receiver.accepted > 0
    assert receiver.refused > 0
    assert otlp["exported"] == receiver.accepted
    assert otlp["dropped"] == {"rejected": receiver.refused}
    assert books["evicted"] == receiver.accepted + receiver.refused


@contextlib.contextmanager
def small_filesystem(size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted for the test (unmounted and removed on exit)."""
    mountpoint = Path(tempfile.mkdtemp(prefix="fk-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "flowkit-test", str(mountpoint)],
                   check=True, capture_output=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True)
        mountpoint.rmdir()


def test_parquet_books_match_the_files_when_the_disk_fills_up() -> None:
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    records = 3000
    with small_filesystem("96k") as root:
        env = clean_env(SYNTHETIC, EXPORT="parquet", PARQUET_DIRECTORY=str(root / "flows"),
                        PARQUET_ROW_GROUP_SIZE="1024", PARQUET_MAX_FILE_AGE="200ms",
                        PARQUET_COMPRESSION="none", SYNTHETIC_FLOWS="20",
                        SYNTHETIC_RATE="1000", SYNTHETIC_MAX_RECORDS=str(records),
                        CACHE_ACTIVE_TIMEOUT="100ms")
        agent = run_until_done(env, records)
        rows = 0
        for path in sorted(root.rglob("*.parquet")):
            rows += pq.ParquetFile(path).metadata.num_rows
    books = final_books(agent.stderr_lines)
    parquet = books["exporters"]["parquet"]
    assert parquet["exported"] == rows
    assert rows > 0
    assert sum(parquet["dropped"].values()) > 0, books  # the disk did fill up


def test_ipfix_tcp_books_match_a_collector_that_comes_up_late(tmp_path: Path) -> None:
    """The collector is down for the first part of the run (a small buffer overflows: drops
    counted as buffer_full), then up: every flow the agent counts as exported is a record the
    collector decoded, and the books balance."""
    pytest.importorskip("ipfix")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    records = 3000
    env = clean_env(SYNTHETIC, EXPORT="ipfix+tcp", TARGET_HOST="127.0.0.1", TARGET_PORT=str(port),
                    IPFIX_BUFFER_MAX_FLOWS="20", IPFIX_RETRY_INITIAL_BACKOFF="50ms",
                    IPFIX_RETRY_MAX_BACKOFF="200ms", SYNTHETIC_FLOWS="10",
                    SYNTHETIC_RATE="1000", SYNTHETIC_MAX_RECORDS=str(records),
                    CACHE_ACTIVE_TIMEOUT="100ms", SHUTDOWN_TIMEOUT="5s")
    out = tmp_path / "collector.jsonl"
    with AgentProcess([], env) as agent:
        agent.wait_for_log("flowkit agent started")
        time.sleep(1.0)  # about ten batches while nothing listens
        with open(out, "wb") as sink:
            collector = subprocess.Popen([sys.executable, COLLECTOR, "tcp", str(port)],
                                         stdout=sink, stderr=subprocess.DEVNULL)
        try:
            time.sleep(records / 1000 + 1.0)
            assert agent.stop() == 0
            deadline = time.monotonic() + 20
            while b'"closed"' not in out.read_bytes() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            collector.kill()
            collector.wait(10)
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    received = sum(1 for line in lines if "sourceTransportPort" in line)
    books = final_books(agent.stderr_lines)
    ipfix = books["exporters"]["ipfix+tcp"]
    assert received > 0
    assert ipfix["exported"] == received
    assert ipfix["dropped"].get("buffer_full", 0) > 0, books
    assert "Traceback" not in "".join(agent.stderr_lines)
