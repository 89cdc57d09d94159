"""The exporter conformance kit against real sinks: the grpc exporter with a real collector on
127.0.0.1, and the third-party test plugin distributions installed into a temporary directory."""

from __future__ import annotations

import contextlib
import importlib
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowkit.components import ExporterSpec
from flowkit.testing import check_exporter

pytestmark = pytest.mark.integration

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Collector:
    """A real pbflow collector counting flows; ``stalled()`` takes it away and brings it back."""

    def __init__(self) -> None:
        from flowkit.collector import CollectorServer

        self.port = free_port()
        self.flows = 0
        self.lock = threading.Lock()
        self._server_type = CollectorServer
        self.server = CollectorServer(self._on_records, "127.0.0.1", self.port)

    def _on_records(self, message: Any, context: Any) -> None:
        with self.lock:
            self.flows += len(message.entries)

    def delivered(self) -> int:
        with self.lock:
            return self.flows

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        self.server.stop(None)
        try:
            yield
        finally:
            self.server = self._server_type(self._on_records, "127.0.0.1", self.port)

    def close(self) -> None:
        self.server.stop(None)


def test_the_grpc_exporter_passes_the_kit() -> None:
    pytest.importorskip("grpc")
    from flowkit_plugins import grpc_exporter

    collector = Collector()
    try:
        spec = grpc_exporter.flowkit_exporters()[0]
        settings = spec.settings_model.model_validate({  # type: ignore[union-attr]
            "target_host": "127.0.0.1", "target_port": collector.port,
            "grpc_retry_initial_backoff": 0.05, "grpc_retry_max_backoff": 0.2,
            "grpc_buffer_max_flows": 2000, "grpc_timeout": 2.0,
        })
        ran = check_exporter(spec, settings, delivered=collector.delivered,
                             stall=collector.stalled)
        assert "bounded_memory" in ran
    finally:
        collector.close()


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The test plugin distributions, installed from their sources, importable in-process."""
    work = tmp_path_factory.mktemp("fkK-plugins")
    sources = []
    for name in ("flowkit-demo-exporter", "acme-sink"):
        shutil.copytree(PLUGINS / name, work / name)
        sources.append(str(work / name))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-input", "--target", str(work / "site"), *sources],
        check=True, capture_output=True, timeout=300,
    )
    sys.path.insert(0, str(work / "site"))
    try:
        yield work / "site"
    finally:
        sys.path.remove(str(work / "site"))


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize(("module", "setting"), [("flowkit_demo_exporter", "demo_output"),
                                                 ("acme_sink", "acme_path")])
def test_the_test_plugin_distributions_pass_the_kit(
    plugin_site: Path, tmp_path: Path, module: str, setting: str
) -> None:
    plugin = importlib.import_module(module)
    spec: ExporterSpec = plugin.flowkit_exporters()[0]
    output = tmp_path / "flows.jsonl"
    settings = spec.settings_model.model_validate({setting: str(output)})  # type: ignore[union-attr]
    ran = check_exporter(spec, settings, delivered=lambda: lines(output))
    assert ran == ["flush_on_shutdown", "nothing_after_shutdown", "raising_export",
                   "settings_round_trip"]
