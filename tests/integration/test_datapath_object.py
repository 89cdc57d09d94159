"""The committed eBPF object is what its source builds to, and it loads with the expected names.

The build command is read from the header of csrc/bpf/flowkit.bpf.c, so that the header, the
Makefile and the committed object cannot drift apart unnoticed.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from flowkit.ebpf import CollectionSpec
from flowkit.model import KEY_DTYPE, VALUE_DTYPE

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "csrc" / "bpf" / "flowkit.bpf.c"
OBJECT = ROOT / "flowkit" / "bpf" / "flowkit.bpf.o"

TC_PROGRAMS = {"flowkit_ingress", "flowkit_egress",
               "flowkit_replay_ingress", "flowkit_replay_egress"}  # replay: never attached
PROGRAMS = TC_PROGRAMS | {"flowkit_drops", "flowkit_rtt"}
MAPS = {
    "flows_a": "percpu_hash",
    "flows_b": "percpu_hash",
    "flow_selector": "array_of_maps",
    "flow_events": "ringbuf",
    "counters": "percpu_array",
    "extras_a": "percpu_hash",
    "extras_b": "percpu_hash",
    "extra_selector": "array_of_maps",
    "dns_queries": "lru_hash",
    "filter_rules": "lpm_trie",
    "cache_a": "percpu_array",
    "cache_b": "percpu_array",
    "cache_selector": "array_of_maps",
}
VARIABLES = {"sampling", "trace_ingress", "trace_egress", "precise_timestamps", "enable_dns",
             "dns_port", "filter_enabled", "flow_cache"}


def build_command() -> list[str]:
    match = re.search(r"^ \*\s+(clang .*)$", SOURCE.read_text(), re.MULTILINE)
    assert match, "the source header must give the build command"
    return shlex.split(match.group(1))


def test_the_source_header_gives_the_makefile_command() -> None:
    makefile = (ROOT / "Makefile").read_text()
    expected = (
        "clang -O2 -g -target bpf -fdebug-compilation-dir=. -D__BPF__ -I csrc -c $(BPF_SRC) "
        "-o $(BPF_OBJ)"
    )
    assert expected in makefile
    assert " ".join(build_command()) == expected.replace("$(BPF_SRC)", str(
        SOURCE.relative_to(ROOT))).replace("$(BPF_OBJ)", str(OBJECT.relative_to(ROOT)))


@pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")
def test_the_committed_object_is_the_build_output(tmp_path: Path) -> None:
    command = build_command()
    command[command.index("-o") + 1] = str(tmp_path / "flowkit.bpf.o")
    subprocess.run(command, cwd=ROOT, check=True)
    assert (tmp_path / "flowkit.bpf.o").read_bytes() == OBJECT.read_bytes(), (
        "flowkit/bpf/flowkit.bpf.o is stale: run `make bpf` and commit the object"
    )


def test_the_object_declares_the_programs_maps_and_settings() -> None:
    spec = CollectionSpec.from_file(OBJECT)
    assert set(spec.programs) == PROGRAMS
    assert {name: spec.maps[name].type for name in MAPS} == MAPS
    assert spec.maps["flow_selector"].initial_values == {0: "flows_a"}
    assert set(spec.variables) >= VARIABLES
    flows = spec.maps["flows_a"]
    assert (flows.key_size, flows.value_size) == (KEY_DTYPE.itemsize, VALUE_DTYPE.itemsize)


def test_the_object_loads_and_runs_on_a_frame() -> None:
    spec = CollectionSpec.from_file(OBJECT)
    spec.maps["flows_a"].max_entries = 64
    spec.maps["flows_b"].max_entries = 64
    with spec.load() as collection:
        assert set(collection.programs) == PROGRAMS  # the tracing programs load too
        frame = bytes(range(64))  # any 64 bytes: parsed as an unknown ethertype
        for name in TC_PROGRAMS:
            retval, _ = collection.programs[name].test_run(frame, repeat=1)
            assert retval & 0xFFFFFFFF == 0xFFFFFFFF  # TC_ACT_UNSPEC: never alters traffic
