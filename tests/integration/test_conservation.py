"""Nothing is lost without a count: for every exporter, evicted == exported + sum(dropped).

Each test runs ``flowkit-agent`` as a real process (synthetic tracer: an exact, known number of
flows) against a sink that fails part of the time, then reads the agent's final log line and
checks its books against what the sink really received.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fk_cli_helpers import SYNTHETIC, AgentProcess, agent_command, clean_env

pytestmark = pytest.mark.integration


def final_books(stderr_lines: list[str]) -> dict[str, Any]:
    """The ``flows`` field of the agent's final JSON log line, checked to balance."""
    for line in stderr_lines:
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if str(entry.get("msg", "")).startswith("flowkit agent stopped: "):
            books: dict[str, Any] = entry["flows"]
            assert isinstance(books["evicted"], int)
            for name, account in books["exporters"].items():
                counts = [account["exported"], *account["dropped"].values()]
                assert all(isinstance(n, int) for n in counts), account
                # With a disk spool: what an earlier run left, and what is kept for the next.
                carried = account.get("recovered", 0) - account.get("spooled", 0)
                assert sum(counts) == books["evicted"] + carried, f"{name} unbalanced: {books}"
            return books
    raise AssertionError("no final 'flowkit agent stopped' line:\n" + "".join(stderr_lines))


def no_tracebacks(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert '"exc"' not in stderr, stderr


def _pipe_bytes(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, "little")


def test_stdout_into_a_reader_that_stops_reading_counts_every_flow_at_shutdown() -> None:
    flows = 3000  # ~1.3 MB of JSON lines: far more than a pipe holds
    env = clean_env(SYNTHETIC, SYNTHETIC_FLOWS=str(flows), SYNTHETIC_MAX_RECORDS=str(flows),
                    SYNTHETIC_RATE="0", CACHE_ACTIVE_TIMEOUT="100ms", SHUTDOWN_TIMEOUT="1s")
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(agent_command(), env=env, stdout=write_end, stderr=subprocess.PIPE,
                            text=True)
    os.close(write_end)
    try:
        deadline = time.monotonic() + 20
        while _pipe_bytes(read_end) < 60_000 and time.monotonic() < deadline:
            time.sleep(0.05)  # wait until the reader's pipe is full: the sink has failed
        time.sleep(0.5)  # let every eviction reach the exporter queue
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        with os.fdopen(read_end, "rb") as reader:
            read_end = -1
            printed = reader.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if read_end >= 0:
            os.close(read_end)

    assert proc.returncode == 0, stderr
    no_tracebacks(stderr)
    books = final_books(stderr.splitlines())
    stdout = books["exporters"]["stdout"]
    lines = printed.count(b"\n")
    assert printed.endswith(b"\n")  # whole lines only: nothing half-written
    assert books["evicted"] == flows
    assert stdout["exported"] == lines
    assert stdout["dropped"] == {"shutdown": flows - lines}
    assert lines < flows


def test_stdout_on_a_full_disk_is_fatal_one_line_and_every_flow_is_counted() -> None:
    env = clean_env(SYNTHETIC, SYNTHETIC_FLOWS="50", SYNTHETIC_MAX_RECORDS="200",
                    SYNTHETIC_RATE="0", CACHE_ACTIVE_TIMEOUT="100ms")
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(agent_command(), env=env, stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=30)

    assert proc.returncode == 1, proc.stderr
    no_tracebacks(proc.stderr)
    # One error line in the log, one line from the command: no ENOSPC line per eviction.
    assert proc.stderr.count("No space left on device") == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "flowkit-agent: exporter stdout: cannot write to standard output: "
        "No space left on device (ENOSPC)"
    )
    books = final_books(proc.stderr.splitlines())
    assert books["evicted"] == 50
    assert books["exporters"]["stdout"] == {"exported": 0, "dropped": {"error": 50}}


# -- gRPC: a collector that rejects some messages and is unavailable for others ---------------


class FlakyCollector:
    """Rejects every third message for good (INVALID_ARGUMENT), answers UNAVAILABLE to the first
    attempt of every other third (the exporter retries it), and accepts the rest."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.calls = 0
        self.accepted = 0
        self.rejected = 0

    def __call__(self, message: Any, context: Any) -> None:
        import grpc

        with self.lock:
            self.calls += 1
            call = self.calls
            self.lock.notify_all()
        if call % 3 == 1:
            with self.lock:
                self.rejected += len(message.entries)
                self.lock.notify_all()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the test collector rejects this")
        if call % 3 == 2:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the test collector is busy")
        with self.lock:
            self.accepted += len(message.entries)
            self.lock.notify_all()


@pytest.fixture
def flaky_collector() -> Iterator[tuple[FlakyCollector, Any]]:
    pytest.importorskip("grpc")
    from flowkit.collector import CollectorServer

    collector = FlakyCollector()
    server = CollectorServer(collector, "127.0.0.1", 0)
    try:
        yield collector, server
    finally:
        server.stop(None)


def test_grpc_books_match_what_a_flaky_collector_accepted_and_rejected(
    flaky_collector: tuple[FlakyCollector, Any],
) -> None:
    collector, server = flaky_collector
    flows = 200
    env = clean_env(SYNTHETIC, EXPORT="grpc", TARGET_HOST="127.0.0.1",
                    TARGET_PORT=str(server.port), GRPC_MESSAGE_MAX_FLOWS="10",
                    GRPC_RETRY_INITIAL_BACKOFF="20ms", GRPC_RETRY_MAX_BACKOFF="100ms",
                    SYNTHETIC_FLOWS=str(flows), SYNTHETIC_MAX_RECORDS=str(flows),
                    SYNTHETIC_RATE="0", CACHE_ACTIVE_TIMEOUT="100ms", LOG_LEVEL="info")
    with AgentProcess((), env) as agent:
        with collector.lock:
            assert collector.lock.wait_for(
                lambda: collector.accepted + collector.rejected == flows, 30
            ), (collector.accepted, collector.rejected)
        assert agent.stop() == 0, "".join(agent.stderr_lines)

    no_tracebacks("".join(agent.stderr_lines))
    books = final_books(agent.stderr_lines)
    assert collector.rejected > 0
    assert books["evicted"] == flows
    assert books["exporters"]["grpc"] == {
        "exported": collector.accepted, "dropped": {"rejected": collector.rejected}
    }


def test_grpc_flows_buffered_while_the_collector_is_down_are_counted_at_shutdown() -> None:
    pytest.importorskip("grpc")
    from test_grpc_exporter import free_port

    flows = 120
    env = clean_env(SYNTHETIC, EXPORT="grpc", TARGET_HOST="127.0.0.1",
                    TARGET_PORT=str(free_port()), SHUTDOWN_TIMEOUT="500ms",
                    SYNTHETIC_FLOWS=str(flows), SYNTHETIC_MAX_RECORDS=str(flows),
                    SYNTHETIC_RATE="0", CACHE_ACTIVE_TIMEOUT="100ms", LOG_LEVEL="info")
    with AgentProcess((), env) as agent:
        agent.wait_for_log("cannot send to collector")
        assert agent.stop() == 0, "".join(agent.stderr_lines)

    books = final_books(agent.stderr_lines)
    assert books["exporters"]["grpc"] == {"exported": 0, "dropped": {"shutdown": flows}}


def test_spool_books_balance_over_two_runs_with_a_torn_record(tmp_path: Path) -> None:
    """Run 1 spools everything (no collector); its last spool record is then torn; run 2
    delivers the rest. Each run balances with its recovered/spooled terms, and over both runs
    evicted == exported + sum(dropped), spool_torn included, with exported == what arrived."""
    pytest.importorskip("grpc")
    from test_grpc_exporter import free_port

    from flowkit.collector import CollectorServer

    spool = tmp_path / "spool"
    port = free_port()

    def run(flows: int, until: Any) -> dict[str, Any]:
        env = clean_env(SYNTHETIC, EXPORT="grpc", TARGET_HOST="127.0.0.1",
                        TARGET_PORT=str(port), GRPC_SPOOL_DIR=str(spool),
                        GRPC_MESSAGE_MAX_FLOWS="10", GRPC_RETRY_INITIAL_BACKOFF="20ms",
                        GRPC_RETRY_MAX_BACKOFF="100ms", SHUTDOWN_TIMEOUT="1s",
                        SYNTHETIC_FLOWS=str(flows), SYNTHETIC_MAX_RECORDS=str(flows),
                        SYNTHETIC_RATE="0", CACHE_ACTIVE_TIMEOUT="100ms", LOG_LEVEL="info")
        with AgentProcess((), env) as agent:
            until(agent)
            assert agent.stop() == 0, "".join(agent.stderr_lines)
        no_tracebacks("".join(agent.stderr_lines))
        books: dict[str, Any] = final_books(agent.stderr_lines)
        return books

    first = run(120, lambda agent: agent.wait_for_log("writing flows to the spool"))
    assert first["exporters"]["grpc"] == {"exported": 0, "dropped": {}, "recovered": 0,
                                          "spooled": 120}
    # A crash-like tear: the last record (one message of 10 flows) loses its last bytes.
    (segment,) = spool.glob("*.seg")
    os.truncate(segment, segment.stat().st_size - 3)

    received = []
    lock = threading.Condition()

    def collect(message: Any, context: Any) -> None:
        with lock:
            received.append(len(message.entries))
            lock.notify_all()

    with CollectorServer(collect, "127.0.0.1", port):
        def all_delivered(agent: Any) -> None:
            with lock:
                assert lock.wait_for(lambda: sum(received) >= 110 + 50, 30), received

        second = run(50, all_delivered)
    time.sleep(0.2)
    assert sum(received) == 160
    assert second["evicted"] == 50
    assert second["exporters"]["grpc"] == {"exported": 160, "dropped": {"spool_torn": 10},
                                           "recovered": 120, "spooled": 0}
    # Over both runs the carried terms cancel: the plain rule, every flow counted once.
    runs = [first, second]
    evicted = sum(books["evicted"] for books in runs)
    exported = sum(books["exporters"]["grpc"]["exported"] for books in runs)
    dropped = sum(sum(books["exporters"]["grpc"]["dropped"].values()) for books in runs)
    assert evicted == exported + dropped == 170
    assert not list(spool.glob("*.seg"))


# -- Kafka: the broker goes away with KAFKA_ASYNC=false -------------------------------------


def test_kafka_sync_with_the_broker_gone_counts_every_flow_at_shutdown(
    kafka_broker: Any, tmp_path: Path
) -> None:
    topic = "fk-conservation"
    kafka_broker.create_topic(topic)
    env = clean_env(SYNTHETIC, EXPORT="kafka", KAFKA_BROKERS=kafka_broker.bootstrap,
                    KAFKA_TOPIC=topic, KAFKA_ENCODING="json", KAFKA_ASYNC="false",
                    SYNTHETIC_FLOWS="5", SYNTHETIC_RATE="400", CACHE_ACTIVE_TIMEOUT="100ms",
                    SHUTDOWN_TIMEOUT="1s", LOG_LEVEL="info")
    with AgentProcess((), env) as agent:
        assert len(kafka_broker.consume(topic, 10, settle=0)) >= 10
        # Freeze the agent, read everything the broker holds, then take the broker away.
        agent.proc.send_signal(signal.SIGSTOP)
        try:
            delivered = _everything(kafka_broker, topic)
            kafka_broker.stop()
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        agent.wait_for_log("_ALL_BROKERS_DOWN")
        time.sleep(1.0)  # evictions pile up behind the blocked exporter
        assert agent.stop() == 0, "".join(agent.stderr_lines)

    no_tracebacks("".join(agent.stderr_lines))
    books = final_books(agent.stderr_lines)
    kafka = books["exporters"]["kafka"]
    # Acknowledged flows are on the broker; flows the broker took without acknowledging them
    # before it went away count as dropped (at-most-once accounting).
    assert kafka["exported"] <= len(delivered)
    assert kafka["exported"] >= len(delivered) - 5 * 20  # at most a few batches in flight
    assert kafka["dropped"].get("shutdown", 0) > 0
    assert set(kafka["dropped"]) <= {"shutdown", "queue_full"}


def _everything(broker: Any, topic: str) -> list[Any]:
    count = 0
    while True:
        messages = broker.consume(topic, count + 1, timeout=2.0, settle=0.5)
        if len(messages) == count:
            return list(messages)
        count = len(messages)
