"""`flowkit-agent check` on this kernel: a verdict per optional feature, from real probe loads."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from fk_cli_helpers import clean_env, run

from flowkit.ebpf import CollectionSpec

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "csrc" / "bpf" / "probes.bpf.c"
OBJECT = ROOT / "flowkit" / "bpf" / "probes.bpf.o"


def _features() -> dict[str, dict[str, object]]:
    result = run(["check", "--json"], clean_env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return {f["name"]: f for f in json.loads(result.stdout)["features"]}


def test_features_this_kernel_has_are_reported_supported_after_loading_their_probe() -> None:
    features = _features()
    assert set(features) == {"drops", "rtt", "dns", "filters", "dedup", "netns", "tcx"}
    for name in ("drops", "dns", "filters", "netns"):
        assert features[name]["supported"] is True, features[name]
        assert "probe program loads" in str(features[name]["detail"])
    assert features["tcx"]["supported"] is True
    assert features["dedup"]["setting"] == "DEDUPER"
    assert features["netns"]["setting"] == "NETWORK_NAMESPACES"


def test_the_rtt_verdict_is_the_kernels_answer_to_its_attach_point() -> None:
    # Whatever this kernel says about the RTT program, check must say the same and explain a no.
    spec = CollectionSpec.from_file(OBJECT)
    try:
        with spec.load(["probe_rtt"]):
            loads = True
    except Exception:
        loads = False
    rtt = _features()["rtt"]
    assert rtt["supported"] is loads
    if not loads:
        assert "tp_btf/tcp_probe" in str(rtt["detail"])


def test_text_output_lists_every_feature_after_the_checks() -> None:
    result = run(["check"], clean_env(), timeout=120)
    head, _, features = result.stdout.partition("optional features")
    assert "bpf-object" in head
    names = [line.split()[1] for line in features.splitlines()[1:]]
    assert names == ["drops", "rtt", "dns", "filters", "dedup", "netns", "tcx"]


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")
def test_the_committed_probe_object_is_the_build_output(tmp_path: Path) -> None:
    match = re.search(r"^ \*\s+(clang .*)$", SOURCE.read_text(), re.MULTILINE)
    assert match, "the source header must give the build command"
    command = shlex.split(match.group(1))
    assert " ".join(command) in (ROOT / "Makefile").read_text().replace(
        "$(PROBES_SRC)", str(SOURCE.relative_to(ROOT))).replace(
        "$(PROBES_OBJ)", str(OBJECT.relative_to(ROOT)))
    command[command.index("-o") + 1] = str(tmp_path / "probes.bpf.o")
    subprocess.run(command, cwd=ROOT, check=True)
    assert (tmp_path / "probes.bpf.o").read_bytes() == OBJECT.read_bytes(), (
        "flowkit/bpf/probes.bpf.o is stale: run `make bpf` and commit the object"
    )
