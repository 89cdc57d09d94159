"""Third-party plugins, installed as separate distributions, extend the real ``flowkit-agent``.

Both test distributions (``tests/plugins/``) are built from their current sources and installed
into a temporary directory that goes first on ``PYTHONPATH`` of the agent processes, so these
tests do not depend on what ``make setup`` installed (a same-named installed copy is shadowed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fk_cli_helpers import SYNTHETIC, AgentProcess, clean_env, run

pytestmark = pytest.mark.integration

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
DEMO = "flowkit-demo-exporter"
DUPLICATE = "flowkit-duplicate-stdout"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory holding both test plugin distributions, installed from the sources."""
    work = tmp_path_factory.mktemp("fkF-plugins")
    target = work / "site"
    sources = []
    for name in (DEMO, DUPLICATE):
        # Build from a copy: building writes build/ and *.egg-info/ next to the sources.
        shutil.copytree(PLUGINS / name, work / name)
        sources.append(str(work / name))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-input", "--target", str(target), *sources],
        check=True, capture_output=True, timeout=300,
    )
    return str(target)


def env_with(plugin_path: str, **settings: str) -> dict[str, str]:
    return clean_env({"PYTHONPATH": plugin_path}, **settings)


def read_flows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def packets_by_flow(flows: list[dict[str, Any]]) -> Counter[tuple[str, str, int]]:
    totals: Counter[tuple[str, str, int]] = Counter()
    for f in flows:
        totals[(f["SrcAddr"], f["DstAddr"], f["Proto"])] += f["Packets"]
    return totals


def test_plugins_lists_the_third_party_distribution(plugin_path: str) -> None:
    result = run(["plugins"], env_with(plugin_path))
    assert result.returncode == 0, result.stderr
    by_dist = {entry["distribution"]: entry for entry in json.loads(result.stdout)}
    demo = by_dist[DEMO]
    assert demo["version"] == "1.0.0"
    assert demo["plugins"] == ["demo"]
    assert demo["components"]["exporter"] == [
        {"name": "demo", "description": "Test plugin: JSON lines appended to DEMO_OUTPUT"}
    ]
    assert DUPLICATE not in by_dist  # it provides nothing unless FLOWKIT_TEST_DUPLICATE=1


def test_help_shows_the_plugin_setting(plugin_path: str) -> None:
    result = run(["--help"], env_with(plugin_path))
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    assert "--demo-output VALUE File the demo exporter appends flows to. [exporter demo]" \
        in help_text


@pytest.mark.parametrize("source", ["env", "flag", "file"])
def test_the_plugin_exports_every_flow_with_its_own_setting(
    plugin_path: str, tmp_path: Path, source: str
) -> None:
    output = tmp_path / "demo.jsonl"
    args: list[str] = []
    settings = {"EXPORT": "demo,stdout", "SYNTHETIC_MAX_RECORDS": "64", "SYNTHETIC_RATE": "0",
                "CACHE_ACTIVE_TIMEOUT": "100ms"}
    if source == "env":
        settings["DEMO_OUTPUT"] = str(output)
    elif source == "flag":
        args = ["--demo-output", str(output)]
    else:
        config = tmp_path / "flowkit.yaml"
        config.write_text(f"demo_output: {output}\n")
        args = ["--config", str(config)]
    with AgentProcess(args, env_with(plugin_path, **SYNTHETIC, **settings)) as agent:
        agent.wait_for_packets(64)
        assert agent.stop() == 0, "".join(agent.stderr_lines)

    exported = read_flows(output)
    assert sum(f["Packets"] for f in exported) == 64
    assert packets_by_flow(exported) == packets_by_flow(agent.flows)
    assert sorted(map(json.dumps, exported)) == sorted(
        json.dumps(json.loads(line)) for line in agent.stdout_lines
    )


def test_a_missing_plugin_setting_stops_the_agent_before_it_starts(plugin_path: str) -> None:
    result = run([], env_with(plugin_path, **SYNTHETIC, EXPORT="demo"))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "flowkit-agent: missing setting DEMO_OUTPUT: it is required here\n"


def test_plugin_settings_are_ignored_when_the_plugin_is_not_selected(
    plugin_path: str, tmp_path: Path
) -> None:
    env = env_with(plugin_path, **SYNTHETIC, DEMO_OUTPUT="", SYNTHETIC_MAX_RECORDS="8",
                   SYNTHETIC_RATE="0", CACHE_ACTIVE_TIMEOUT="100ms")
    with AgentProcess([], env) as agent:
        agent.wait_for_packets(8)
        assert agent.stop() == 0, "".join(agent.stderr_lines)


def test_a_duplicate_component_name_is_reported_with_both_distributions(
    plugin_path: str,
) -> None:
    env = env_with(plugin_path, **SYNTHETIC, FLOWKIT_TEST_DUPLICATE="1")
    for args in (["plugins"], []):
        result = run(args, env)
        assert result.returncode == 2
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert "exporter 'stdout' is provided twice" in lines[0]
        assert DUPLICATE in lines[0]
        assert "by flowkit-ebpf (plugin 'stdout')" in lines[0]
        assert "FLOWKIT_DISABLE_PLUGINS" in lines[0]


def test_disabling_one_of_the_duplicates_resolves_the_clash(plugin_path: str) -> None:
    env = env_with(plugin_path, FLOWKIT_TEST_DUPLICATE="1",
                   FLOWKIT_DISABLE_PLUGINS="duplicate-stdout")
    result = run(["plugins"], env)
    assert result.returncode == 0, result.stderr
    assert DUPLICATE not in {entry["distribution"] for entry in json.loads(result.stdout)}


def test_a_disabled_distribution_provides_nothing(plugin_path: str, tmp_path: Path) -> None:
    env = env_with(plugin_path, **SYNTHETIC, EXPORT="demo", DEMO_OUTPUT=str(tmp_path / "x"),
                   FLOWKIT_DISABLE_PLUGINS=DEMO)
    result = run([], env)
    assert result.returncode == 2
    assert result.stderr.startswith(
        "flowkit-agent: invalid setting EXPORT='demo': unknown exporter 'demo'; available:"
    )
    assert not (tmp_path / "x").exists()
