"""``ipfix+tcp`` on flowkit's delivery rule: a disk spool keeps flows across an outage and a
restart of the exporter, and a connection lost part-way through a batch resends only the records
not yet written (on a new session, templates first).

In-process exporters; the collector is a thread decoding with the PyPI ``ipfix`` package.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ipfix")
import ipfix.ie
import ipfix.message

from flowkit.metrics import Metrics
from flowkit.testing import synthetic_flows
from flowkit_plugins.ipfix_exporter import IpfixSettings, TcpIpfixExporter

pytestmark = pytest.mark.integration
ipfix.ie.use_iana_default()


class Collector:
    """Accepts connections on 127.0.0.1:port, one after the other; decodes every record."""

    def __init__(self, port: int = 0) -> None:
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen(4)
        self.port = int(self.server.getsockname()[1])
        self.records: list[dict[str, Any]] = []
        self.conn: socket.socket | None = None
        self.connections = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            self.conn = conn
            with conn, conn.makefile("rb") as stream:
                buffer = ipfix.message.MessageBuffer()
                try:
                    while True:
                        buffer.read_message(stream)
                        self.records.extend(buffer.namedict_iterator())
                except Exception:  # EOF or reset
                    pass

    def wait_records(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        """The records once ``count`` arrived (the collector reads on its own thread)."""
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.records

    def close(self) -> None:
        self.server.close()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)


def exporter(port: int, metrics: Metrics, **settings: Any) -> TcpIpfixExporter:
    return TcpIpfixExporter(
        IpfixSettings(target_host="127.0.0.1", target_port=port, ipfix_transport="tcp",
                      ipfix_retry_initial_backoff=0.02, ipfix_retry_max_backoff=0.1,
                      ipfix_tcp_max_message=1000, **settings),
        metrics,
    )


def sent(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("ebpf_agent_ipfix_sent_flows_total") or 0.0


def test_spool_keeps_flows_across_an_outage_and_a_restart(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    spool = str(tmp_path / "spool")
    first = Metrics()
    down = exporter(port, first, ipfix_spool_dir=spool, ipfix_buffer_max_flows=10)
    for _ in range(5):
        down.export(synthetic_flows(n_flows=8))  # 40 flows, 4 times the memory bound
    down.shutdown(0.3)
    assert sent(first) == 0
    # Nothing dropped: over the memory bound, the flows went to the spool.
    assert first.value("dropped_flows_total", exporter="ipfix+tcp", reason="buffer_full") == 0
    assert first.value("spool_flows", exporter="ipfix") == 40
    collector = Collector(port)
    try:
        second = Metrics()
        up = exporter(port, second, ipfix_spool_dir=spool)
        assert up.flush(20)
        up.shutdown(1)
        assert len(collector.wait_records(40)) == 40
        assert sent(second) == 40
        assert [r["sourceTransportPort"] for r in collector.records[:8]] == \
            [r["sourceTransportPort"] for r in collector.records[8:16]]
    finally:
        collector.close()


def test_a_connection_lost_mid_batch_resends_only_the_unwritten_records() -> None:
    collector = Collector()
    try:
        metrics = Metrics()
        ipfix_exporter = exporter(collector.port, metrics)
        original = ipfix_exporter._write
        calls = {"n": 0}

        def lose_connection_at_second_message(message: Any) -> bool:
            calls["n"] += 1
            if calls["n"] == 2:
                ipfix_exporter._disconnect()  # as if the collector had gone away
                return False
            return original(message)

        ipfix_exporter._write = lose_connection_at_second_message  # type: ignore[method-assign]
        ipfix_exporter.export(synthetic_flows(n_flows=60))
        assert ipfix_exporter.flush(20)
        ipfix_exporter.shutdown(1)
        assert sent(metrics) == 60
        ports = sorted(r["sourceTransportPort"] for r in collector.wait_records(60))
        assert collector.connections == 2
        assert ports == sorted(int(p) for p in synthetic_flows(n_flows=60).array["key"]["src_port"])
    finally:
        collector.close()


def test_ipfix_tcp_passes_the_conformance_kit() -> None:
    from collections.abc import Iterator

    from flowkit.testing import check_exporter
    from flowkit_plugins import ipfix_exporter

    state = {"collector": Collector(), "before": 0}
    port = state["collector"].port  # type: ignore[union-attr]

    def delivered() -> int:
        return len(state["collector"].records) + state["before"]  # type: ignore[union-attr,operator]

    @contextlib.contextmanager
    def stalled() -> Iterator[None]:
        state["before"] = delivered()
        state["collector"].close()  # type: ignore[union-attr]
        try:
            yield
        finally:
            state["collector"] = Collector(port)

    try:
        spec = next(s for s in ipfix_exporter.flowkit_exporters() if s.name == "ipfix+tcp")
        settings = spec.settings_model.model_validate({  # type: ignore[union-attr]
            "target_host": "127.0.0.1", "target_port": port, "ipfix_transport": "tcp",
            "ipfix_retry_initial_backoff": 0.05, "ipfix_retry_max_backoff": 0.2,
            "ipfix_buffer_max_flows": 2000, "ipfix_timeout": 2.0,
        })
        ran = check_exporter(spec, settings, delivered=delivered, stall=stalled)
        assert "bounded_memory" in ran
    finally:
        state["collector"].close()  # type: ignore[union-attr]
