"""``flowkit-agent`` (EXPORT=grpc, TRACER=synthetic) and ``flowkit-collector`` as real processes.

The synthetic tracer produces exactly SYNTHETIC_MAX_RECORDS packets spread evenly over
SYNTHETIC_FLOWS flows, so every count the collector sees is known in advance.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

pytest.importorskip("grpc")

from flowkit.synthetic import synthetic_flow_key

try:
    from .test_grpc_exporter import Pki, Received, free_port, make_pki, wait_until
except ImportError:
    from test_grpc_exporter import (  # type: ignore[no-redef]
        Pki,
        Received,
        free_port,
        make_pki,
        wait_until,
    )

from flowkit.collector import CollectorServer

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
FLOWS = 10
PACKETS = 1000
PACKET_BYTES = 100


def grpc_entry_point_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "grpc" for ep in entry_points(group="flowkit"))


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """PYTHONPATH for the agent: exposes the grpc exporter's entry point if not installed yet."""
    if grpc_entry_point_installed():
        return ""
    root = tmp_path_factory.mktemp("fkE-entry-point")
    info = root / "fkE_grpc_entry_point-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fkE-grpc-entry-point\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text("[flowkit]\ngrpc = flowkit_plugins.grpc_exporter\n")
    return str(root)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("fkE-cli-pki"))


class Proc:
    """A child process whose output lines are collected by reader threads."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        self.stdout: list[bytes] = []
        self.stderr: list[bytes] = []
        self._lock = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.popen.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._read, args=(self.popen.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[bytes], into: list[bytes]) -> None:
        for line in stream:
            with self._lock:
                into.append(line)
                self._lock.notify_all()

    def wait_for_line(
        self, stream: str, predicate: Callable[[bytes], bool], timeout: float = 60.0
    ) -> bytes | None:
        lines = self.stdout if stream == "stdout" else self.stderr
        found: list[bytes] = []

        def check() -> bool:
            found[:] = [line for line in lines if predicate(line)][:1]
            return bool(found) or self.popen.poll() is not None

        with self._lock:
            self._lock.wait_for(check, timeout)
        return found[0] if found else None

    def stop(self, timeout: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            rc = self.popen.wait()
        for reader in self._readers:
            reader.join(5)
        return rc

    def err_text(self) -> str:
        return b"".join(self.stderr).decode(errors="replace")


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(argv, env)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop(10)


@pytest.fixture
def agent_env(plugin_path: str) -> Callable[..., dict[str, str]]:
    def make(**settings: Any) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SYNTHETIC_", "TARGET_", "GRPC_", "FLOWS_"))
        }
        if plugin_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [plugin_path, env.get("PYTHONPATH")]))
        env.update(
            {
                "EXPORT": "grpc",
                "TRACER": "synthetic",
                "ACCOUNTER": "python",
                "LISTEN_INTERFACES": "poll",
                "TARGET_HOST": "127.0.0.1",
                "SYNTHETIC_FLOWS": str(FLOWS),
                "SYNTHETIC_MAX_RECORDS": str(PACKETS),
                "SYNTHETIC_RATE": "0",
                "SYNTHETIC_PACKET_BYTES": str(PACKET_BYTES),
                "CACHE_ACTIVE_TIMEOUT": "200ms",
                "GRPC_RETRY_INITIAL_BACKOFF": "50ms",
                "GRPC_RETRY_MAX_BACKOFF": "500ms",
            }
        )
        env.update({k.upper(): str(v) for k, v in settings.items()})
        return env

    return make


def agent(procs: Callable[..., Proc], env: dict[str, str]) -> Proc:
    return procs([str(BIN / "flowkit-agent")], env)


def packets_by_key(flows: list[dict[str, Any]]) -> dict[tuple[Any, ...], int]:
    totals: dict[tuple[Any, ...], int] = defaultdict(int)
    for f in flows:
        totals[(f["SrcAddr"], f["DstAddr"], f["SrcPort"], f["DstPort"], f["Proto"])] += f["Packets"]
    return dict(totals)


def expected_packets() -> dict[tuple[Any, ...], int]:
    out = {}
    for i in range(FLOWS):
        k = synthetic_flow_key(i)
        out[(str(k["src_ip"]), str(k["dst_ip"]), k["src_port"], k["dst_port"], k["proto"])] = (
            PACKETS // FLOWS
        )
    return out


def test_agent_to_collector_every_field(procs: Any, agent_env: Any) -> None:
    collector = procs([str(BIN / "flowkit-collector"), "--port", "0"], dict(os.environ))
    line = collector.wait_for_line("stderr", lambda b: b"listening on" in b)
    assert line is not None, collector.err_text()
    port = int(line.rsplit(b":", 1)[1].split()[0])
    sender = agent(procs, agent_env(target_port=port))

    def total() -> int:
        return sum(orjson.loads(x)["Packets"] for x in list(collector.stdout))

    assert wait_until(lambda: total() >= PACKETS or sender.popen.poll() is not None, 60), (
        sender.err_text()
    )
    assert sender.stop() == 0, sender.err_text()
    flows = [orjson.loads(x) for x in collector.stdout]
    assert packets_by_key(flows) == expected_packets()
    by_src = {str(synthetic_flow_key(i)["src_ip"]): synthetic_flow_key(i) for i in range(FLOWS)}
    for f in flows:
        k = by_src[f["SrcAddr"]]
        assert f["Etype"] == k["eth_protocol"]
        assert f["FlowDirection"] == k["direction"]
        assert f["SrcMac"] == ":".join(f"{b:02x}" for b in k["src_mac"])  # type: ignore[union-attr]
        assert f["DstMac"] == ":".join(f"{b:02x}" for b in k["dst_mac"])  # type: ignore[union-attr]
        assert f["DstAddr"] == str(k["dst_ip"])
        assert (f["SrcPort"], f["DstPort"], f["Proto"]) == (
            k["src_port"],
            k["dst_port"],
            k["proto"],
        )
        assert (f["IcmpType"], f["IcmpCode"], f["Flags"]) == (
            k["icmp_type"],
            k["icmp_code"],
            k["flags"],
        )
        assert f["Bytes"] == f["Packets"] * PACKET_BYTES
        assert f["Interface"] == k["interface"]
        assert f["TimeFlowStartMs"] <= f["TimeFlowEndMs"]
    assert collector.stop() == 0
    assert "Traceback" not in collector.err_text()


def test_agent_splits_messages_at_grpc_message_max_flows(procs: Any, agent_env: Any) -> None:
    received = Received()
    with CollectorServer(received, "127.0.0.1", 0) as server:
        sender = agent(procs, agent_env(target_port=server.port, grpc_message_max_flows=3))
        assert wait_until(
            lambda: (
                sum(f.packets for f in list(received.flows)) >= PACKETS
                or sender.popen.poll() is not None
            ),
            60,
        ), sender.err_text()
        assert sender.stop() == 0, sender.err_text()
    assert max(received.message_sizes) == 3
    assert sum(f.packets for f in received.flows) == PACKETS


def test_deprecated_flows_target_variables(procs: Any, agent_env: Any) -> None:
    received = Received()
    with CollectorServer(received, "127.0.0.1", 0) as server:
        env = agent_env(flows_target_port=server.port, flows_target_host="127.0.0.1")
        del env["TARGET_HOST"]
        sender = agent(procs, env)
        assert wait_until(
            lambda: (
                sum(f.packets for f in list(received.flows)) >= PACKETS
                or sender.popen.poll() is not None
            ),
            60,
        ), sender.err_text()
        assert sender.stop() == 0
    assert sum(f.packets for f in received.flows) == PACKETS
    assert "FLOWS_TARGET_PORT is deprecated" in sender.err_text()


def test_agent_mutual_tls(procs: Any, agent_env: Any, pki: Pki) -> None:
    received = Received()
    with CollectorServer(received, "127.0.0.1", 0, pki.server_tls(mutual=True)) as server:
        sender = agent(
            procs,
            agent_env(
                target_port=server.port,
                target_tls_ca_cert_path=pki.ca,
                target_tls_user_cert_path=pki.client_cert,
                target_tls_user_key_path=pki.client_key,
            ),
        )
        assert wait_until(
            lambda: (
                sum(f.packets for f in list(received.flows)) >= PACKETS
                or sender.popen.poll() is not None
            ),
            60,
        ), sender.err_text()
        assert sender.stop() == 0
    assert sum(f.packets for f in received.flows) == PACKETS


def test_collector_cli_with_tls(procs: Any, agent_env: Any, pki: Pki) -> None:
    collector = procs(
        [
            str(BIN / "flowkit-collector"),
            "--port",
            "0",
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--tls-client-ca",
            str(pki.ca),
        ],
        dict(os.environ),
    )
    line = collector.wait_for_line("stderr", lambda b: b"listening on" in b)
    assert line is not None, collector.err_text()
    assert b"mutual TLS" in line
    port = int(line.split(b"listening on ")[1].split()[0].rsplit(b":", 1)[1])
    sender = agent(
        procs,
        agent_env(
            target_port=port,
            target_tls_ca_cert_path=pki.ca,
            target_tls_user_cert_path=pki.client_cert,
            target_tls_user_key_path=pki.client_key,
        ),
    )

    def total() -> int:
        return sum(orjson.loads(x)["Packets"] for x in list(collector.stdout))

    assert wait_until(lambda: total() >= PACKETS or sender.popen.poll() is not None, 60)
    assert sender.stop() == 0
    assert total() == PACKETS


def test_wrong_ca_is_one_clear_log_line(procs: Any, agent_env: Any, pki: Pki) -> None:
    received = Received()
    with CollectorServer(received, "127.0.0.1", 0, pki.server_tls()) as server:
        sender = agent(
            procs, agent_env(target_port=server.port, target_tls_ca_cert_path=pki.other_ca)
        )
        line = sender.wait_for_line("stderr", lambda b: b"TARGET_TLS_CA_CERT_PATH" in b)
        assert line is not None, sender.err_text()
        assert str(pki.other_ca).encode() in line
        assert sender.stop() == 0
    text = sender.err_text()
    assert "Traceback" not in text
    assert "Handshake failed" not in text  # the gRPC core's per-attempt lines are silenced
    assert sum("TARGET_TLS_CA_CERT_PATH" in line for line in text.splitlines()) == 1
    assert received.flows == []


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({}, "TARGET_PORT"),
        (
            {"target_port": "9999", "target_tls_ca_cert_path": "/nonexistent/fkE-ca.pem"},
            "TARGET_TLS_CA_CERT_PATH",
        ),
        ({"target_port": "notaport"}, "TARGET_PORT"),
    ],
)
def test_bad_settings_exit_2_with_one_line(
    agent_env: Any, settings: dict[str, str], named: str
) -> None:
    env = agent_env(**settings)
    result = subprocess.run(
        [str(BIN / "flowkit-agent")], env=env, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert named in lines[0]


def test_collector_rejects_half_tls_options(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "flowkit-collector"), "--port", "0", "--tls-cert", str(tmp_path / "x.pem")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"--tls-key" in result.stderr


def test_collector_port_in_use_exits_2() -> None:
    port = free_port()
    with CollectorServer(lambda m, c: None, "127.0.0.1", port):
        result = subprocess.run(
            [str(BIN / "flowkit-collector"), "--port", str(port)],
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert b"cannot listen" in result.stderr
