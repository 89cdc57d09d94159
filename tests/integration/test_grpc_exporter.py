"""The grpc exporter against a real pbflow.Collector server on 127.0.0.1, driven in-process.

Every test builds its flows itself and compares what the server decoded field by field, with
exact counts. Certificates are generated per test session (CA, server, client).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flowkit.metrics import Metrics
from flowkit.model import (
    EGRESS,
    ETH_P_IP,
    ETH_P_IPV6,
    INGRESS,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Flow,
    FlowBatch,
)

pytest.importorskip("grpc")
pytest.importorskip("cryptography")

from flowkit.collector import CollectorServer, ServerTls
from flowkit.pbflow.convert import record_to_flow
from flowkit_plugins.grpc_exporter import GrpcExporter, GrpcSettings

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_123_456_789
AGENT_IP = "198.18.255.1"


# -- helpers shared with test_grpc_cli.py -----------------------------------------------------


def make_flow(i: int, **overrides: Any) -> Flow:
    """A distinct, fully populated flow: i % 3 == 0 IPv4 TCP, 1 IPv6 UDP, 2 IPv4 ICMP."""
    kind = i % 3
    v6 = kind == 1
    fields: dict[str, Any] = {
        "if_index": 7,
        "interface": "fkE-veth0",
        "direction": EGRESS if i % 2 else INGRESS,
        "eth_protocol": ETH_P_IPV6 if v6 else ETH_P_IP,
        "src_mac": bytes([0x02, 0xEE, 0, 0, i >> 8 & 0xFF, i & 0xFF]),
        "dst_mac": bytes([0x02, 0xEF, 0, 0, i >> 8 & 0xFF, i & 0xFF]),
        "src_ip": ipaddress.ip_address(f"fd00::e:{i:x}" if v6 else f"198.18.{i >> 8}.{i & 255}"),
        "dst_ip": ipaddress.ip_address(f"fd00::f:{i:x}" if v6 else f"198.19.{i >> 8}.{i & 255}"),
        "src_port": 0 if kind == 2 else 20000 + i,
        "dst_port": {0: 443, 1: 53, 2: 0}[kind],
        "proto": {0: IPPROTO_TCP, 1: IPPROTO_UDP, 2: IPPROTO_ICMP}[kind],
        "icmp_type": 8 if kind == 2 else 0,
        "icmp_code": 0,
        "packets": 3 + i,
        "bytes": 1500 * (3 + i),
        "start_ns": T0 + i * 1_000_000,
        "end_ns": T0 + i * 1_000_000 + 987_654_321,
        "flags": 0x12 if kind == 0 else 0,
        "dscp": i % 64,
        "sampling": i % 3,
        "agent_ip": ipaddress.ip_address(AGENT_IP),
    }
    fields.update(overrides)
    return Flow(**fields)


def as_received(flow: Flow) -> Flow:
    """What a collector decodes: everything but the interface index, which is not on the wire."""
    return Flow(**{**{s: getattr(flow, s) for s in Flow.__slots__}, "if_index": 0})


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``condition`` until it holds (a bound on a hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Received:
    """What a collector server got: the flows and the size of every message, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.flows: list[Flow] = []
        self.message_sizes: list[int] = []

    def __call__(self, message: Any, context: Any) -> None:
        decoded = [record_to_flow(r) for r in message.entries]
        with self.lock:
            self.flows.extend(decoded)
            self.message_sizes.append(len(decoded))
            self.lock.notify_all()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Flow]:
        with self.lock:
            self.lock.wait_for(lambda: len(self.flows) >= count, timeout)
            return list(self.flows)


@dataclass(frozen=True)
class Pki:
    """PEM files of a test CA, a server certificate for 127.0.0.1 and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here

    def server_tls(self, mutual: bool = False) -> ServerTls:
        return ServerTls.from_files(
            str(self.server_cert), str(self.server_key), str(self.ca) if mutual else None
        )


def make_pki(directory: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def leaf(
        cn: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, server: bool
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        return key, builder.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = ca("fkE test CA")
    other_key, other_cert = ca("fkE other CA")
    server_key, server_cert = leaf("fkE collector", ca_key, ca_cert, server=True)
    client_key, client_cert = leaf("fkE agent", ca_key, ca_cert, server=False)
    pem = serialization.Encoding.PEM
    paths = Pki(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "client.pem",
        directory / "client.key",
        directory / "other-ca.pem",
    )
    paths.ca.write_bytes(ca_cert.public_bytes(pem))
    paths.other_ca.write_bytes(other_cert.public_bytes(pem))
    paths.server_cert.write_bytes(server_cert.public_bytes(pem))
    write_key(server_key, paths.server_key)
    paths.client_cert.write_bytes(client_cert.public_bytes(pem))
    write_key(client_key, paths.client_key)
    del other_key
    return paths


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("fkE-pki"))


@pytest.fixture
def servers() -> Iterator[Callable[..., tuple[CollectorServer, Received]]]:
    """Start collector servers (stopped at the end, also on failure)."""
    started: list[CollectorServer] = []

    def start(
        port: int = 0, tls: ServerTls | None = None, **kwargs: Any
    ) -> tuple[CollectorServer, Received]:
        received = Received()
        server = CollectorServer(received, "127.0.0.1", port, tls, **kwargs)
        started.append(server)
        return server, received

    try:
        yield start
    finally:
        for server in started:
            server.stop(None)


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.metrics = Metrics()
        self.settings = GrpcSettings.model_validate(
            {
                "target_host": "127.0.0.1",
                "grpc_retry_initial_backoff": 0.05,
                "grpc_retry_max_backoff": 0.2,
                **settings,
            }
        )
        self.exporter = GrpcExporter(self.settings, self.metrics)

    def dropped(self, reason: str) -> float:
        return self.metrics.value("dropped_flows_total", exporter="grpc", reason=reason)


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**settings: Any) -> Harness:
        h = Harness(**settings)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.exporter.shutdown(1.0)


# -- tests ------------------------------------------------------------------------------------


def test_every_field_arrives_exactly(servers: Any, harness: Any) -> None:
    server, received = servers()
    h = harness(target_port=server.port)
    flows = [make_flow(i) for i in range(30)]
    h.exporter.export(FlowBatch.from_flows(flows, agent_ip=AGENT_IP))
    assert h.exporter.flush(30)
    assert received.wait_for(30) == [as_received(f) for f in flows]
    assert h.metrics.value("grpc_sent_flows_total") == 30


def test_batches_above_the_message_maximum_are_split(servers: Any, harness: Any) -> None:
    server, received = servers()
    h = harness(target_port=server.port, grpc_message_max_flows=7)
    flows = [make_flow(i) for i in range(40)]
    h.exporter.export(FlowBatch.from_flows(flows[:30], agent_ip=AGENT_IP))
    h.exporter.export(FlowBatch.from_flows(flows[30:], agent_ip=AGENT_IP))
    assert h.exporter.flush(30)
    assert received.wait_for(40) == [as_received(f) for f in flows]
    assert received.message_sizes == [7, 7, 7, 7, 2, 7, 3]
    assert h.metrics.value("grpc_sent_messages_total") == 7


def test_message_too_large_for_the_collector_is_split_again(servers: Any, harness: Any) -> None:
    # 40 flows encode to roughly 3 KiB: a 1 KiB limit forces the exporter to halve messages.
    server, received = servers(max_message_bytes=1024)
    h = harness(target_port=server.port)
    flows = [make_flow(i) for i in range(40)]
    h.exporter.export(FlowBatch.from_flows(flows, agent_ip=AGENT_IP))
    assert h.exporter.flush(30)
    assert received.wait_for(40) == [as_received(f) for f in flows]
    assert max(received.message_sizes) < 40
    assert h.dropped("rejected") == 0


def test_tls(servers: Any, harness: Any, pki: Pki) -> None:
    server, received = servers(tls=pki.server_tls())
    h = harness(target_port=server.port, target_tls_ca_cert_path=str(pki.ca))
    flows = [make_flow(i) for i in range(5)]
    h.exporter.export(FlowBatch.from_flows(flows, agent_ip=AGENT_IP))
    assert h.exporter.flush(30)
    assert received.wait_for(5) == [as_received(f) for f in flows]


def test_mutual_tls(servers: Any, harness: Any, pki: Pki) -> None:
    server, received = servers(tls=pki.server_tls(mutual=True))
    h = harness(
        target_port=server.port,
        target_tls_ca_cert_path=str(pki.ca),
        target_tls_user_cert_path=str(pki.client_cert),
        target_tls_user_key_path=str(pki.client_key),
    )
    flows = [make_flow(i) for i in range(5)]
    h.exporter.export(FlowBatch.from_flows(flows, agent_ip=AGENT_IP))
    assert h.exporter.flush(30)
    assert received.wait_for(5) == [as_received(f) for f in flows]


def test_mutual_tls_server_refuses_an_agent_without_certificate(
    servers: Any, harness: Any, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    server, received = servers(tls=pki.server_tls(mutual=True))
    h = harness(target_port=server.port, target_tls_ca_cert_path=str(pki.ca))
    with caplog.at_level(logging.ERROR, logger="flowkit_plugins.grpc_exporter"):
        h.exporter.export(FlowBatch.from_flows([make_flow(0)], agent_ip=AGENT_IP))
        assert not h.exporter.flush(1.0)
    assert received.flows == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert server.address in errors[0]
    assert "TARGET_TLS_USER_CERT_PATH" in errors[0]


def test_wrong_ca_fails_with_one_clear_error(
    servers: Any, harness: Any, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    server, received = servers(tls=pki.server_tls())
    h = harness(target_port=server.port, target_tls_ca_cert_path=str(pki.other_ca))
    with caplog.at_level(logging.INFO, logger="flowkit_plugins.grpc_exporter"):
        h.exporter.export(FlowBatch.from_flows([make_flow(0)], agent_ip=AGENT_IP))
        assert not h.exporter.flush(1.5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    # Retries happen every 50-200 ms here, but the problem is reported once (rate-limited).
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "TARGET_TLS_CA_CERT_PATH" in message
    assert str(pki.other_ca) in message
    assert errors[0].exc_info is None
    assert received.flows == []


def test_outage_keeps_flows_within_the_bound_and_counts_the_rest(
    servers: Any, harness: Any
) -> None:
    port = free_port()
    server, received = servers(port=port)
    h = harness(target_port=port, grpc_buffer_max_flows=100, grpc_message_max_flows=10)
    flows = [make_flow(i) for i in range(250)]
    before, during, after = flows[:50], flows[50:180], flows[180:]

    h.exporter.export(FlowBatch.from_flows(before, agent_ip=AGENT_IP))
    assert h.exporter.flush(30)
    assert len(received.wait_for(50)) == 50
    server.stop(None)

    # Collector down: 130 flows in three batches against a bound of 100 flows.
    h.exporter.export(FlowBatch.from_flows(during[:60], agent_ip=AGENT_IP))
    h.exporter.export(FlowBatch.from_flows(during[60:100], agent_ip=AGENT_IP))
    h.exporter.export(FlowBatch.from_flows(during[100:], agent_ip=AGENT_IP))
    assert h.dropped("buffer_full") == 30
    assert h.metrics.value("grpc_buffered_flows") == 100

    assert wait_until(lambda: h.metrics.value("grpc_send_errors_total", code="UNAVAILABLE") > 0)

    _, back = servers(port=port)
    assert h.exporter.flush(60)  # the buffered flows reach the collector that came back
    h.exporter.export(FlowBatch.from_flows(after, agent_ip=AGENT_IP))
    assert h.exporter.flush(60)
    expected = during[:100] + after
    assert back.wait_for(len(expected)) == [as_received(f) for f in expected]
    assert received.flows == [as_received(f) for f in before]
    assert h.metrics.value("grpc_sent_flows_total") == 50 + 100 + 70
    assert h.dropped("buffer_full") == 30


def test_shutdown_interrupts_retries_and_counts_what_is_left(harness: Any) -> None:
    h = harness(target_port=free_port(), grpc_retry_initial_backoff=30, grpc_retry_max_backoff=60)
    h.exporter.export(FlowBatch.from_flows([make_flow(i) for i in range(12)], agent_ip=AGENT_IP))
    done = threading.Event()

    def stop() -> None:
        h.exporter.shutdown(0.5)
        done.set()

    thread = threading.Thread(target=stop)
    thread.start()
    # Not a timing assertion: a bound on a hang, far below the 30 s backoff being interrupted.
    assert done.wait(10)
    thread.join()
    assert h.dropped("shutdown") == 12
    h.exporter.export(FlowBatch.from_flows([make_flow(0)], agent_ip=AGENT_IP))
    assert h.dropped("shutdown") == 13


def test_rejected_message_is_dropped_and_counted(servers: Any, harness: Any) -> None:
    import grpc

    calls: list[int] = []

    def refuse(message: Any, context: Any) -> None:
        calls.append(len(message.entries))
        if len(calls) == 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fkE: not today")

    server = CollectorServer(refuse, "127.0.0.1", 0)
    try:
        h = harness(target_port=server.port, grpc_message_max_flows=4)
        h.exporter.export(
            FlowBatch.from_flows([make_flow(i) for i in range(10)], agent_ip=AGENT_IP)
        )
        assert h.exporter.flush(30)
        assert calls == [4, 4, 2]
        assert h.dropped("rejected") == 4
        assert h.metrics.value("grpc_sent_flows_total") == 6
    finally:
        server.stop(None)


# -- disk spool (GRPC_SPOOL_DIR) --------------------------------------------------------------


def test_spool_outage_beyond_the_memory_bound_loses_nothing_and_keeps_order(
    servers: Any, harness: Any, tmp_path: Path
) -> None:
    port = free_port()
    server, received = servers(port=port)
    spool_dir = tmp_path / "spool"
    h = harness(
        target_port=port,
        grpc_buffer_max_flows=100,
        grpc_message_max_flows=10,
        grpc_spool_dir=str(spool_dir),
    )
    flows = [make_flow(i) for i in range(400)]
    before, during, after = flows[:50], flows[50:350], flows[350:]
    h.exporter.export(FlowBatch.from_flows(before, agent_ip=AGENT_IP))
    assert h.exporter.flush(30)
    assert len(received.wait_for(50)) == 50
    server.stop(None)

    # Collector down: 300 flows against a memory bound of 100; the spool takes them all.
    for start in range(0, 300, 60):
        h.exporter.export(FlowBatch.from_flows(during[start : start + 60], agent_ip=AGENT_IP))
    assert wait_until(lambda: h.metrics.value("spool_flows", exporter="grpc") == 300)
    assert h.metrics.value("grpc_buffered_flows") == 0
    assert list(spool_dir.glob("*.seg"))

    _, back = servers(port=port)
    assert h.exporter.flush(60)
    h.exporter.export(FlowBatch.from_flows(after, agent_ip=AGENT_IP))
    assert h.exporter.flush(60)
    expected = during + after
    assert back.wait_for(len(expected)) == [as_received(f) for f in expected]
    assert received.flows == [as_received(f) for f in before]
    assert h.metrics.value("grpc_sent_flows_total") == 400
    assert h.metrics.value("spool_written_flows_total", exporter="grpc") == 300
    assert h.metrics.value("spool_replayed_flows_total", exporter="grpc") == 300
    for reason in ("buffer_full", "shutdown", "spool_full", "rejected"):
        assert h.dropped(reason) == 0
    assert list(spool_dir.glob("*.seg")) == []


def test_spool_keeps_flows_at_shutdown_and_the_next_exporter_sends_them_first(
    servers: Any, harness: Any, tmp_path: Path
) -> None:
    port = free_port()
    spool_dir = tmp_path / "spool"
    flows = [make_flow(i) for i in range(30)]
    first = harness(target_port=port, grpc_spool_dir=str(spool_dir))
    first.exporter.export(FlowBatch.from_flows(flows[:20], agent_ip=AGENT_IP))
    assert wait_until(lambda: first.metrics.value("spool_flows", exporter="grpc") == 20)
    first.exporter.shutdown(0.5)
    assert first.dropped("shutdown") == 0

    _, received = servers(port=port)
    second = harness(target_port=port, grpc_spool_dir=str(spool_dir))
    assert second.exporter.recovered_flows() == 20
    second.exporter.export(FlowBatch.from_flows(flows[20:], agent_ip=AGENT_IP))
    assert second.exporter.flush(60)
    assert received.wait_for(30) == [as_received(f) for f in flows]
    assert second.exporter.spooled_flows() == 0
    assert list(spool_dir.glob("*.seg")) == []


def test_spool_budget_drops_the_oldest_and_counts_them(
    servers: Any, harness: Any, tmp_path: Path
) -> None:
    port = free_port()
    h = harness(
        target_port=port,
        grpc_spool_dir=str(tmp_path / "spool"),
        grpc_spool_max_bytes="128KiB",
        grpc_spool_segment_bytes="64KiB",
        grpc_message_max_flows=100,
    )
    flows = [make_flow(i % 1000) for i in range(3000)]  # ~250 KiB encoded: twice the budget
    for start in range(0, 3000, 100):
        h.exporter.export(FlowBatch.from_flows(flows[start : start + 100], agent_ip=AGENT_IP))
    assert wait_until(lambda: h.dropped("spool_full") > 0)
    _, received = servers(port=port)
    assert h.exporter.flush(60)
    # Read once everything was delivered or dropped: the sender thread may still have been
    # moving its memory buffer into the spool (and dropping the oldest) a moment ago.
    dropped = h.dropped("spool_full")
    got = received.wait_for(int(3000 - dropped))
    # The newest flows are kept, contiguous and in order; the oldest were dropped and counted.
    assert got == [as_received(f) for f in flows[int(dropped) :]]
