"""What a plugin author meets: the real ``flowkit-agent`` with a third-party distribution
(``tests/plugins/acme-sink``) installed into a temporary directory, making on request the
mistakes authors make. Every message is one line naming the plugin and its distribution."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fk_cli_helpers import SYNTHETIC, agent_command, clean_env, run

pytestmark = pytest.mark.integration

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
ACME = "acme-sink"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """acme-sink (and the demo exporter), installed from their sources."""
    work = tmp_path_factory.mktemp("fkP-plugins")
    sources = []
    for name in (ACME, "flowkit-demo-exporter"):
        shutil.copytree(PLUGINS / name, work / name)
        sources.append(str(work / name))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-input", "--target", str(work / "site"), *sources],
        check=True, capture_output=True, timeout=300,
    )
    return str(work / "site")


def env_with(plugin_path: str, **settings: str) -> dict[str, str]:
    return clean_env({"PYTHONPATH": plugin_path}, **SYNTHETIC, **settings)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# -- 1. a plugin that fails to start -------------------------------------------------------------


def test_a_bad_setting_found_by_the_factory_exits_2_naming_component_and_distribution(
    plugin_path: str, tmp_path: Path
) -> None:
    missing = tmp_path / "absent" / "flows.jsonl"
    result = run([], env_with(plugin_path, EXPORT="acme", ACME_PATH=str(missing)))
    assert result.returncode == 2
    assert result.stdout == ""
    assert one_line(result) == (
        f'flowkit-agent: cannot start exporter "acme" (distribution {ACME}): '
        f"ACME_PATH: directory {missing.parent} does not exist"
    )


def test_a_runtime_failure_of_the_factory_exits_1_naming_component_and_distribution(
    plugin_path: str, tmp_path: Path
) -> None:
    env = env_with(plugin_path, EXPORT="stdout,acme", ACME_PATH=str(tmp_path / "f"),
                   ACME_FAIL_START="1", LOG_LEVEL="error")
    result = run([], env)
    assert result.returncode == 1
    assert one_line(result) == (
        f'flowkit-agent: cannot start exporter "acme" (distribution {ACME}): '
        "acme handshake refused"
    )


# -- 2. common mistakes in the hooks ---------------------------------------------------------------


@pytest.mark.parametrize("args", [["plugins"], []])
def test_a_misspelled_hook_is_one_line_saying_what_to_rename(
    plugin_path: str, args: list[str]
) -> None:
    result = run(args, env_with(plugin_path, ACME_SINK_MODE="misspelled"))
    assert result.returncode == 2
    assert one_line(result) == (
        f"flowkit-agent: plugin 'acme' ({ACME}) implements 'flowkit_exporter', which is not a "
        "flowkit hook: rename it to flowkit_exporters"
    )


def test_a_hook_returning_one_spec_instead_of_a_list_is_one_line(plugin_path: str) -> None:
    result = run(["plugins"], env_with(plugin_path, ACME_SINK_MODE="single"))
    assert result.returncode == 2
    assert one_line(result) == (
        f"flowkit-agent: plugin 'acme' ({ACME}) returned ExporterSpec from flowkit_exporters; "
        "return a list of ExporterSpec: [ExporterSpec(...)]"
    )


# -- 3. FLOWKIT_DISABLE_PLUGINS ---------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["acme-sink", "acme_sink", "ACME_SINK", "Acme.Sink", "ACME"])
def test_disabling_matches_names_the_pep_503_way(plugin_path: str, spelling: str) -> None:
    result = run(["plugins"], env_with(plugin_path, FLOWKIT_DISABLE_PLUGINS=spelling))
    assert result.returncode == 0, result.stderr
    assert ACME not in {entry["distribution"] for entry in json.loads(result.stdout)}


def test_disabled_and_unknown_names_are_logged_once_logging_is_set_up(
    plugin_path: str, tmp_path: Path
) -> None:
    env = env_with(plugin_path, FLOWKIT_DISABLE_PLUGINS="acme_sink,acme-snik",
                   EXPORT="demo", DEMO_OUTPUT=str(tmp_path / "absent" / "x"))
    result = run([], env)
    records = [json.loads(line) for line in result.stderr.splitlines()
               if line.startswith("{")]
    messages = {r["msg"]: r["level"] for r in records}
    assert messages[f"plugin 'acme' ({ACME}) disabled by FLOWKIT_DISABLE_PLUGINS"] == "info"
    unknown = [m for m in messages if "'acme-snik'" in m]
    assert len(unknown) == 1
    assert "neither an installed flowkit plugin" in unknown[0]
    assert messages[unknown[0]] == "warning"


# -- 7. missing extras, --help, closed pipes --------------------------------------------------


def test_a_missing_extra_is_shown_by_plugins(plugin_path: str) -> None:
    result = run(["plugins"], env_with(plugin_path, ACME_SINK_MODE="missing"))
    assert result.returncode == 0, result.stderr
    acme = {e["distribution"]: e for e in json.loads(result.stdout)}[ACME]
    assert acme["components"]["exporter"] == [{
        "name": "acme", "description": "Test plugin: needs an extra",
        "missing": ["acme_sink_fast_encoder"], "install": f"pip install '{ACME}[fast]'",
    }]


def test_a_missing_extra_stops_the_agent_before_anything_starts(
    plugin_path: str, tmp_path: Path
) -> None:
    env = env_with(plugin_path, ACME_SINK_MODE="missing", EXPORT="stdout,acme",
                   ACME_PATH=str(tmp_path / "f"))
    result = run([], env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert one_line(result) == (
        f'flowkit-agent: cannot use exporter "acme" (distribution {ACME}): it needs the Python '
        f"module acme_sink_fast_encoder, which is not installed: pip install '{ACME}[fast]'"
    )
    assert not (tmp_path / "f").exists()


def test_help_shows_defaults_as_they_are_written(plugin_path: str) -> None:
    result = run(["--help"], env_with(plugin_path))
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "PydanticUndefined" not in text
    assert "(env CACHE_ACTIVE_TIMEOUT, default 5s)" in text
    assert "(env ACME_PATH, required)" in text
    assert "(env GRPC_RETRY_MAX_BACKOFF, default 30s)" in text


@pytest.mark.parametrize("args", [["check"], ["inspect", "flowkit/bpf/flowkit.bpf.o"],
                                  ["plugins"]])
def test_a_reader_closing_the_pipe_ends_the_command_quietly(args: list[str]) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([*agent_command(), *args], cwd=root, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # like `| head -0`: every write now fails with EPIPE
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err
    assert b"BrokenPipeError" not in err
    assert proc.returncode == 0


def test_kafka_without_its_extra_names_the_distribution_extra_before_anything_starts(
    tmp_path: Path,
) -> None:
    """The issue's own case: EXPORT=kafka without confluent-kafka installed (a sitecustomize
    hides it from the interpreter, as if it had never been installed)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'confluent_kafka':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    env = clean_env({"PYTHONPATH": str(tmp_path)}, **SYNTHETIC)
    listed = run(["plugins"], env)
    assert listed.returncode == 0, listed.stderr
    ours = {e["distribution"]: e for e in json.loads(listed.stdout)}["flowkit-ebpf"]
    (kafka,) = [c for c in ours["components"]["exporter"] if c["name"] == "kafka"]
    assert kafka["missing"] == ["confluent_kafka"]
    assert kafka["install"] == "pip install 'flowkit-ebpf[kafka]'"

    result = run([], {**env, "EXPORT": "stdout,kafka", "KAFKA_BROKERS": "127.0.0.1:9"})
    assert result.returncode == 2
    assert result.stdout == ""
    assert one_line(result) == (
        'flowkit-agent: cannot use exporter "kafka" (distribution flowkit-ebpf): it needs the '
        "Python module confluent_kafka, which is not installed: "
        "pip install 'flowkit-ebpf[kafka]'"
    )
