"""The docs stay true: generated reference up to date, every hook documented, examples run."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from flowkit import components, hookspecs, testing
from flowkit.plugins import PluginManager

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs",
                                                  ROOT / "scripts" / "gen-config-docs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code_block(text: str, marker: str) -> str:
    match = re.search(rf"<!-- walkthrough: {re.escape(marker)} -->\n```python\n(.*?)```",
                      text, re.S)
    assert match, f"no code block marked {marker!r}"
    return match.group(1)


# -- configuration.md --------------------------------------------------------------------------


def test_configuration_reference_is_up_to_date() -> None:
    generated = _generator().render()
    current = (DOCS / "configuration.md").read_text()
    assert current == generated, (
        "docs/configuration.md is out of date: run .venv/bin/python scripts/gen-config-docs.py"
    )


def test_configuration_reference_documents_every_setting_of_flowkits_plugins() -> None:
    gen = _generator()
    pm = gen.flowkit_plugin_manager()
    text = gen.render(pm)
    from flowkit.config import settings_table

    for name, info in settings_table(pm).items():
        assert f"| `{info.env}`" in text, name
        assert f"`{info.flag}`" in text, name
        assert f"`{name}`" in text, name


def test_the_generator_check_mode_reports_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = _generator()
    stale = tmp_path / "configuration.md"
    stale.write_text("# stale\n")
    monkeypatch.setattr(gen, "OUTPUT", stale)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0


# -- plugins.md --------------------------------------------------------------------------------


def _hooks() -> list[str]:
    return [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
            if name.startswith("flowkit_")]


@pytest.mark.parametrize("hook", _hooks())
def test_every_hook_is_documented(hook: str) -> None:
    text = (DOCS / "plugins.md").read_text()
    assert f"### `{hook}`" in text, f"docs/plugins.md has no section for the hook {hook}"
    section = text.split(f"### `{hook}`", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    assert "@hookimpl" in section, f"the section of {hook} has no example"


@pytest.mark.parametrize("protocol", ["Informer", "Tracer", "Accounter", "Exporter"])
def test_every_component_protocol_method_is_documented(protocol: str) -> None:
    text = (DOCS / "plugins.md").read_text()
    assert f"### {protocol}" in text
    section = text.split(f"### {protocol}", 1)[1].split("\n### ", 1)[0]
    cls = getattr(components, protocol)
    methods = [name for name, value in vars(cls).items() if not name.startswith("_")
               and (inspect.isfunction(value) or isinstance(value, property))]
    assert methods
    for method in methods:
        assert f"`{method}" in section, f"{protocol}.{method} is not documented"


def test_every_spec_field_is_documented() -> None:
    text = (DOCS / "plugins.md").read_text()
    for field in dataclasses.fields(components.ComponentSpec):
        assert f"| `{field.name}` |" in text, field.name


@pytest.mark.parametrize("fixture", ["flowkit_plugin_manager", "synthetic_batch"])
def test_every_testing_fixture_is_documented(fixture: str) -> None:
    assert hasattr(testing, fixture)
    assert f"`{fixture}`" in (DOCS / "plugins.md").read_text()


def test_the_walkthrough_plugin_works_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (DOCS / "plugins.md").read_text()
    (tmp_path / "flowkit_csv.py").write_text(_code_block(text, "flowkit_csv.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flowkit_csv", raising=False)
    namespace: dict[str, object] = {}
    exec(compile(_code_block(text, "test_csv.py"), "test_csv.py", "exec"), namespace)
    test = namespace["test_csv_exporter_writes_every_flow"]
    assert callable(test)
    out = tmp_path / "out"
    out.mkdir()
    test(PluginManager(load_entrypoints=False, disabled=()), testing.synthetic_flows, out)
    assert len((out / "flows.csv").read_text().splitlines()) == 3


def test_walkthrough_module_is_about_twenty_lines_of_code() -> None:
    code = _code_block((DOCS / "plugins.md").read_text(), "flowkit_csv.py")
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 30


# -- architecture.md ---------------------------------------------------------------------------


def test_architecture_refers_only_to_files_that_exist() -> None:
    text = (DOCS / "architecture.md").read_text()
    paths = set(re.findall(r"`((?:flowkit|flowkit_plugins|csrc|tests|scripts|docs|bench)"
                           r"/[\w./-]*)`", text))
    assert paths
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    assert missing == []


def test_architecture_records_the_deviations_from_the_design() -> None:
    text = (DOCS / "architecture.md").read_text()
    assert "## Deviations" in text
    for topic in ("settings", "FlowBatch"):
        assert topic in text.split("## Deviations", 1)[1]


# -- the Flow record ---------------------------------------------------------------------------


def _flow_table() -> dict[str, tuple[str, str]]:
    text = (DOCS / "plugins.md").read_text()
    match = re.search(r"<!-- flow-fields -->\n(.*?)<!-- /flow-fields -->", text, re.S)
    assert match, "docs/plugins.md has no <!-- flow-fields --> table"
    rows: dict[str, tuple[str, str]] = {}
    for line in match.group(1).splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows[cells[0].strip("`")] = (cells[1].strip("`").replace("\\|", "|"), cells[3])
    return rows


def test_every_flow_field_is_documented_with_its_type() -> None:
    import dataclasses

    from flowkit.model import Flow

    documented = _flow_table()
    fields = {f.name: str(f.type) for f in dataclasses.fields(Flow)}
    assert list(documented) == list(fields), "docs/plugins.md Flow table: fields or order differ"
    for name, annotation in fields.items():
        assert documented[name][0] == annotation, name


def test_the_documented_json_keys_are_those_flow_to_dict_writes() -> None:
    from flowkit.model import FEATURE_DNS, FEATURE_DROPS, FEATURE_RTT
    from flowkit.testing import make_flow

    flow = make_flow(agent_ip="198.18.0.9", features=FEATURE_DROPS | FEATURE_RTT | FEATURE_DNS,
                     interfaces=("eth0", "eth1"), if_directions=(0, 1))
    written = set(flow.to_dict())
    documented = set()
    for _, keys in _flow_table().values():
        documented.update(re.findall(r"`([A-Za-z]+)`", keys))
    assert documented == written


def _reason_table(page: str, heading: str) -> set[str]:
    """The reasons in the first column of the table under ``heading`` in docs/``page``."""
    text = (DOCS / page).read_text()
    section = text.split(heading, 1)[1]
    reasons: set[str] = set()
    started = False
    for line in section.splitlines():
        if line.startswith("|"):
            started = True
            reasons.update(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
        elif started:
            break
    return reasons


@pytest.mark.parametrize(("page", "heading"), [("exporters.md", "## Every flow is counted"),
                                               ("plugins.md", "The reasons (`flowkit.delivery")])
def test_the_drop_reason_tables_are_the_reasons_of_the_code(page: str, heading: str) -> None:
    from flowkit.delivery import DROP_REASONS

    assert _reason_table(page, heading) == set(DROP_REASONS)


def test_every_reason_the_built_in_exporters_drop_with_is_documented() -> None:
    from flowkit.delivery import DROP_REASONS

    used: set[str] = set()
    for path in [*ROOT.joinpath("flowkit").glob("*.py"),
                 *ROOT.joinpath("flowkit_plugins").glob("*.py")]:
        text = path.read_text()
        for call in re.findall(r"(?:\.dropped|\bdrop|_drop)\((.*)", text):
            used.update(re.findall(r"\"([a-z_]+)\"", call))
        used.update(re.findall(r"\breason=\"([a-z_]+)\"", text))
    assert {"queue_full", "shutdown", "buffer_full", "spool_full", "spool_torn", "closed",
            "timeout", "encode", "rejected"} <= used, used
    assert used <= set(DROP_REASONS), used - set(DROP_REASONS)


def test_every_test_the_docs_name_exists() -> None:
    """``tests/...py::test_name`` references in the docs point at real test functions."""
    named = set()
    for page in DOCS.glob("*.md"):
        named.update(re.findall(r"(tests/[\w/]+\.py)::(\w+)", page.read_text()))
    assert len(named) >= 8
    missing = [f"{path}::{name}" for path, name in sorted(named)
               if not (ROOT / path).exists()
               or not re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M)]
    assert not missing, missing
