"""Spool settings through the real CLI: bad values exit 2 with one line before anything starts;
a spool directory another agent holds stops the start with one line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

try:
    from .fk_cli_helpers import SYNTHETIC, AgentProcess, clean_env, run
    from .kafka_broker import free_port
except ImportError:
    from fk_cli_helpers import SYNTHETIC, AgentProcess, clean_env, run  # type: ignore[no-redef]
    from kafka_broker import free_port  # type: ignore[no-redef]

pytestmark = pytest.mark.integration

pytest.importorskip("grpc")
pytest.importorskip("confluent_kafka")


def grpc_env(**settings: str) -> dict[str, str]:
    return clean_env(SYNTHETIC, EXPORT="grpc", TARGET_HOST="127.0.0.1",
                     TARGET_PORT=str(free_port()), **settings)


def kafka_env(**settings: str) -> dict[str, str]:
    return clean_env(SYNTHETIC, EXPORT="kafka", KAFKA_BROKERS=f"127.0.0.1:{free_port()}",
                     **settings)


@pytest.mark.parametrize(
    ("exporter", "settings", "expected"),
    [
        ("grpc", {"GRPC_SPOOL_DIR": "spool"}, "GRPC_SPOOL_DIR='spool' must be an absolute path"),
        ("grpc", {"GRPC_SPOOL_DIR": "/etc/hostname/spool"}, "/etc/hostname is not a directory"),
        # procfs refuses writes to /proc/sys itself, even to root.
        ("grpc", {"GRPC_SPOOL_DIR": "/proc/sys/fk-spool"}, "/proc/sys is not writable"),
        ("grpc", {"GRPC_SPOOL_DIR": "{tmp}", "GRPC_SPOOL_MAX_BYTES": "lots"},
         "GRPC_SPOOL_MAX_BYTES"),
        ("kafka", {"KAFKA_SPOOL_DIR": "{tmp}", "KAFKA_SPOOL_MAX_BYTES": "100KiB"},
         "KAFKA_SPOOL_MAX_BYTES=102400 is too small"),
        ("kafka", {"KAFKA_SPOOL_DIR": "{tmp}", "KAFKA_SPOOL_SEGMENT_BYTES": "1k"},
         "KAFKA_SPOOL_SEGMENT_BYTES=1024 is too small"),
        ("kafka", {"KAFKA_SPOOL_DIR": "{tmp}", "KAFKA_SPOOL_MAX_BYTES": "1000000GiB"},
         "more than the file system"),
        ("kafka", {"KAFKA_SPOOL_DIR": "{tmp}", "KAFKA_SPOOL_FSYNC": "sometimes"},
         "KAFKA_SPOOL_FSYNC"),
    ],
)
def test_bad_spool_settings_exit_2_with_one_line(
    tmp_path: Path, exporter: str, settings: dict[str, str], expected: str
) -> None:
    spool = tmp_path / "spool"
    values = {k: v.replace("{tmp}", str(spool)) for k, v in settings.items()}
    env = grpc_env(**values) if exporter == "grpc" else kafka_env(**values)
    result = run([], env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert expected in lines[0]
    assert not spool.exists()  # checked before anything is created


def test_a_spool_directory_in_use_stops_the_second_agent(tmp_path: Path) -> None:
    spool = str(tmp_path / "spool")
    env = grpc_env(GRPC_SPOOL_DIR=spool, SYNTHETIC_RATE="10", LOG_LEVEL="info")
    with AgentProcess([], env) as first:
        first.wait_for_log("grpc exporter sending to")
        second = run([], {**env})
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert lines[-1].startswith('flowkit-agent: cannot start exporter "grpc"'), lines
        assert f"GRPC_SPOOL_DIR: spool directory {spool} is in use by another process" in lines[-1]
        assert "Traceback" not in second.stderr
        assert first.stop() == 0


def test_agent_replays_a_spool_left_behind_and_cuts_its_torn_tail(tmp_path: Path) -> None:
    from flowkit.collector import CollectorServer
    from flowkit.encoding import encode_records_messages
    from flowkit.spool import RECORD_HEADER, Spool, SpoolConfig
    from flowkit.testing import synthetic_flows

    # What a run killed during an outage leaves: three whole messages, then a torn record.
    spool_dir = tmp_path / "spool"
    left = synthetic_flows(30, packets=7)
    config = SpoolConfig(spool_dir, max_bytes=1 << 24, segment_bytes=1 << 22)
    with Spool(config) as spool:
        for data, flows in encode_records_messages(left, 10):
            spool.append(data, flows)
    (segment,) = spool_dir.glob("*.seg")
    with open(segment, "ab") as handle:
        handle.write(RECORD_HEADER.pack(500, 5, 0) + b"\x0a" * 100)

    messages: list[list[int]] = []

    def collect(message: Any, context: Any) -> None:
        messages.append([entry.packets for entry in message.entries])

    with CollectorServer(collect, "127.0.0.1", 0) as server:
        env = clean_env(
            SYNTHETIC, EXPORT="grpc", TARGET_HOST="127.0.0.1", TARGET_PORT=str(server.port),
            GRPC_SPOOL_DIR=str(spool_dir), SYNTHETIC_FLOWS="1", SYNTHETIC_MAX_RECORDS="3",
            SYNTHETIC_RATE="0", LOG_LEVEL="info", CACHE_ACTIVE_TIMEOUT="200ms",
        )
        with AgentProcess([], env) as agent:
            deadline = time.monotonic() + 30
            while sum(map(len, messages)) < 31 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert agent.stop() == 0
            log_text = "\n".join(str(r.get("msg", "")) for r in agent.log_records())

    # The spooled flows first, in order, each once; then the new flow; the torn record never.
    assert messages[:3] == [[7] * 10] * 3
    assert messages[3:] == [[3]]
    assert "cut 112 bytes off" in log_text
    assert "30 flows in 1 segments left by an earlier run" in log_text
    assert list(spool_dir.glob("*.seg")) == []
