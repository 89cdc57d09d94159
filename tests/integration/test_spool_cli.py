"""Spool settings through the real CLI: bad values exit 2 with one line before anything starts;
a spool directory another agent holds stops the start with one line."""

from __future__ import annotations

from pathlib import Path

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
        assert lines[-1].startswith("flowkit-agent: cannot start: GRPC_SPOOL_DIR: spool directory")
        assert "in use by another process" in lines[-1]
        assert "Traceback" not in second.stderr
        assert first.stop() == 0
