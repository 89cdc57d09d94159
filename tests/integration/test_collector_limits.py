"""``flowkit-collector`` under hostile input: bounded memory, isolated bad records, one-line errors.

The collector runs as a real process on 127.0.0.1; messages are sent with a plain gRPC client
(bytes built by hand), so the test controls exactly what is on the wire.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

grpc = pytest.importorskip("grpc")

from flowkit.pbflow import COLLECTOR_SERVICE  # noqa: E402
from flowkit.pbflow.flow_pb2 import IP, Network, Record, Records  # noqa: E402

pytestmark = pytest.mark.integration

COLLECTOR = Path(sys.executable).with_name("flowkit-collector")
MIB = 1 << 20
# What the collector may take in all while handling a 64 MiB message (docs/exporters.md,
# "flowkit-collector"): the interpreter and gRPC (~45 MiB), gRPC's receive buffers and the
# message as Python bytes (about 3 x 64 MiB), and the framing scan up to --max-records. Before
# record-by-record decoding, a 2 MB message of empty records took 967 MB.
RSS_BOUND = 5 * 64 * MIB


class Collector:
    """``flowkit-collector --port 0`` with its output collected by reader threads."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([str(COLLECTOR), "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stdout: list[bytes] = []
        self.stderr: list[bytes] = []
        self.port = 0
        self._listening = threading.Event()
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        assert self._listening.wait(30), b"".join(self.stderr)

    def _read(self, stream: Any, into: list[bytes]) -> None:
        for line in stream:
            into.append(line)
            if b"listening on 127.0.0.1:" in line:
                self.port = int(line.split(b"127.0.0.1:")[1].split()[0])
                self._listening.set()

    def peak_rss(self) -> int:
        """Peak resident memory of the collector so far (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def send(self, message: bytes, timeout: float = 120) -> tuple[Any, str, dict[str, str]]:
        """Send raw ``Records`` bytes; (status code, details, trailing metadata)."""
        with grpc.insecure_channel(f"127.0.0.1:{self.port}",
                                   options=[("grpc.max_send_message_length", -1)]) as channel:
            call = channel.unary_unary(f"/{COLLECTOR_SERVICE}/Send",
                                       request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
            try:
                call(message, timeout=timeout)
            except grpc.RpcError as exc:
                trailing = {k: v for k, v in (exc.trailing_metadata() or ())}
                return exc.code(), exc.details() or "", trailing
            return grpc.StatusCode.OK, "", {}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        status = self.proc.wait(30)
        for thread in self._threads:
            thread.join(10)
        return status


@pytest.fixture
def collector() -> Iterator[Any]:
    started: list[Collector] = []

    def start(*args: str) -> Collector:
        c = Collector(*args)
        started.append(c)
        return c

    yield start
    for c in started:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(10)


def good_record(i: int) -> Record:
    return Record(eth_protocol=0x0800, bytes=100 + i, packets=1, interface="fkC0",
                  network=Network(src_addr=IP(ipv4=0xC6120001 + i), dst_addr=IP(ipv4=0xC6130001)))


def test_a_64_mib_message_of_empty_records_is_refused_within_the_memory_bound(
    collector: Any,
) -> None:
    c = collector()
    message = b"\x0a\x00" * (32 * MIB - 16)  # 64 MiB - 32 bytes: 33.5 million empty records

    code, details, _ = c.send(message)
    rss = c.peak_rss()
    assert c.stop() == 0

    assert code == grpc.StatusCode.INVALID_ARGUMENT  # permanent for the agent's exporter
    assert "more than 100000 records" in details
    assert c.stdout == []
    assert rss < RSS_BOUND, f"peak RSS {rss / MIB:.0f} MiB"
    stderr = b"".join(c.stderr).decode()
    assert "Traceback" not in stderr
    assert stderr.count("rejected a message") == 1
    assert "0 malformed records and 1 messages rejected" in stderr


def test_a_message_at_the_record_cap_is_printed_record_by_record(collector: Any) -> None:
    c = collector("--max-records", "2000")
    empty = b"\x0a\x00" * 2000

    code, _, _ = c.send(empty)
    over, details, _ = c.send(empty + b"\x0a\x00")
    assert c.stop() == 0

    assert code == grpc.StatusCode.OK
    assert len(c.stdout) == 2000
    assert orjson.loads(c.stdout[0])["Packets"] == 0
    assert over == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 2000 records" in details


def test_a_malformed_record_is_isolated_and_counted_on_both_sides(collector: Any) -> None:
    c = collector()
    bad = Record(eth_protocol=0x86DD, network=Network(src_addr=IP(ipv6=b"\x01" * 5)))
    message = Records(entries=[good_record(0), bad, good_record(2)]).SerializeToString()

    code, details, trailing = c.send(message)
    assert c.stop() == 0

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "1 of 3 records are malformed (record 1:" in details
    assert trailing["fk-accepted-records"] == "2"
    assert [orjson.loads(line)["Bytes"] for line in c.stdout] == [100, 102]
    stderr = b"".join(c.stderr).decode()
    assert "Traceback" not in stderr
    assert "2 flows (1 malformed records and 0 messages rejected)" in stderr


def test_broken_framing_is_one_log_line_and_a_permanent_error(collector: Any) -> None:
    c = collector()
    code, details, _ = c.send(b"\x0a\xff\xff\xff\x0f")  # a record longer than the message
    assert c.stop() == 0

    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("not a pbflow.Records message")
    stderr = b"".join(c.stderr).decode()
    assert "Traceback" not in stderr
    assert stderr.count("rejected a message") == 1


def test_the_exporter_counts_what_the_collector_accepted_of_a_rejected_message() -> None:
    from flowkit.accounts import ExporterAccount
    from flowkit.collector import CollectorServer, JsonLinesPrinter
    from flowkit.metrics import Metrics
    from flowkit.model import FlowBatch
    from flowkit_plugins.grpc_exporter import GrpcExporter, GrpcSettings

    try:
        from .test_grpc_exporter import make_flow, wait_until
    except ImportError:
        from test_grpc_exporter import make_flow, wait_until  # type: ignore[no-redef]

    def make_batch(flows: list[Any]) -> FlowBatch:
        return FlowBatch.from_flows(flows)

    sink = _Sink()
    printer = JsonLinesPrinter(sink, max_records=3)  # type: ignore[arg-type]
    with CollectorServer(printer, "127.0.0.1", 0, raw=True) as server:
        account = ExporterAccount("grpc")
        settings = GrpcSettings.model_validate({
            "target_host": "127.0.0.1", "target_port": server.port,
            "grpc_message_max_flows": 4,
        })
        exporter = GrpcExporter(settings, Metrics(), account)
        try:
            exporter.export(make_batch([make_flow(i) for i in range(2)]))  # accepted
            exporter.export(make_batch([make_flow(i) for i in range(2, 10)]))  # 2 x 4: refused
            assert wait_until(lambda: account.exported + account.dropped_total == 10)
        finally:
            exporter.shutdown(5)

    assert account.exported == 2 == printer.flows == sink.lines
    assert account.dropped_by_reason() == {"rejected": 8}
    assert printer.rejected_messages == 2


class _Sink:
    def __init__(self) -> None:
        self.lines = 0

    def write(self, data: bytes) -> None:
        self.lines += data.count(b"\n")

    def flush(self) -> None:
        pass


def test_bad_options_and_a_port_in_use_are_one_line_with_status_2() -> None:
    for bad in ("0", "-5"):
        proc = subprocess.run([str(COLLECTOR), "--port", "0", "--max-message-bytes", bad],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert proc.stderr.startswith(f"flowkit-collector: invalid --max-message-bytes {bad}")
        assert len(proc.stderr.splitlines()) == 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([str(COLLECTOR), "--port", str(port)], capture_output=True,
                              text=True, timeout=60,
                              env={k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"})
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"flowkit-collector: cannot listen on 127.0.0.1:{port}"), lines
    assert len(lines) == 1, lines
