"""Prometheus metrics served by the agent, and the ``check`` preflight command."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable

from fk_cli_helpers import SYNTHETIC, AgentProcess, clean_env, run
from prometheus_client.parser import text_string_to_metric_families


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(f"|{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[key] = sample.value
    return samples


def _poll(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    """Scrape until ``condition`` holds (the endpoint changes without printing anything)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached"
        time.sleep(0.1)


def test_metrics_endpoint_counts_exactly_what_was_exported() -> None:
    port = _free_port()
    env = clean_env(
        SYNTHETIC,
        SYNTHETIC_MAX_RECORDS="120",
        SYNTHETIC_FLOWS="6",
        CACHE_ACTIVE_TIMEOUT="200ms",
        METRICS_ENABLE="true",
        METRICS_SERVER_ADDRESS="127.0.0.1",
        METRICS_SERVER_PORT=str(port),
    )
    with AgentProcess([], env) as agent:
        agent.wait_for_packets(120)
        _poll(
            lambda: _scrape(port).get("ebpf_agent_exported_flows_total|exporter=stdout", 0)
            == len(agent.flows),
            "exported_flows_total equal to the flows printed",
        )
        samples = _scrape(port)
        assert agent.stop() == 0
    assert samples["ebpf_agent_evicted_flows_total|source=timer"] == len(agent.flows)
    dropped = {k: v for k, v in samples.items() if k.startswith("ebpf_agent_dropped_flows_total|")}
    assert dropped  # served from the start, at 0
    assert not any(dropped.values()), dropped
    assert samples["ebpf_agent_evictions_total|source=timer"] >= 1


def test_metrics_prefix_is_configurable() -> None:
    port = _free_port()
    env = clean_env(
        SYNTHETIC,
        SYNTHETIC_MAX_RECORDS="6",
        SYNTHETIC_FLOWS="6",
        CACHE_ACTIVE_TIMEOUT="200ms",
        METRICS_ENABLE="true",
        METRICS_SERVER_ADDRESS="127.0.0.1",
        METRICS_SERVER_PORT=str(port),
        METRICS_PREFIX="flows_",
    )
    with AgentProcess([], env) as agent:
        agent.wait_for_packets(6)
        _poll(lambda: "flows_exported_flows_total|exporter=stdout" in _scrape(port),
              "a metric with the configured prefix")
        assert not any(k.startswith("ebpf_agent_") for k in _scrape(port))
        assert agent.stop() == 0


def test_check_passes_on_this_host_and_names_each_check() -> None:
    result = run(["check"], clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.split("optional features")[0].splitlines()
    names = [line.split()[1] for line in lines]
    assert names == ["privileges", "kernel", "btf", "native", "bpf-object", "settings", "memory",
                     "interfaces"]
    assert all(line.startswith("ok") for line in lines), result.stdout


def test_every_metric_the_docs_name_is_served_with_those_labels() -> None:
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    named: dict[str, set[str]] = {}
    for page in ("plugins.md", "architecture.md"):
        text = (docs / page).read_text()
        for name, labels in re.findall(r"(ebpf_agent_[a-z_]+)(\{[^}]*\})?", text):
            named.setdefault(name, set()).update(re.findall(r"([a-z_]+)=", labels))
    assert "ebpf_agent_errors_total" in named
    port = _free_port()
    env = clean_env(SYNTHETIC, SYNTHETIC_MAX_RECORDS="10", CACHE_ACTIVE_TIMEOUT="200ms",
                    METRICS_ENABLE="true", METRICS_SERVER_ADDRESS="127.0.0.1",
                    METRICS_SERVER_PORT=str(port))
    with AgentProcess([], env) as agent:
        agent.wait_for_packets(10)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert agent.stop() == 0
    served: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            served.setdefault(sample.name, set()).add(frozenset(sample.labels))
    for name, labels in named.items():
        assert name in served, f"docs name {name}, the agent does not serve it"
        assert any(labels <= keys for keys in served[name]), (name, labels, served[name])
