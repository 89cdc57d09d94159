"""The eBPF loader against the kernel: objects compiled here load, run and close cleanly.

Each object comes from a small C source in bpf_sources/ written for one compatibility case; the
programs are run with BPF_PROG_TEST_RUN on a synthetic frame (no interface, no traffic on the
host) and must return exactly the expected values.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
from pathlib import Path

import pytest

from flowkit.ebpf import Collection, CollectionSpec, LoaderError
from flowkit.ebpf.clang import compile_bpf

SOURCES = Path(__file__).resolve().parent / "bpf_sources"
FLOWKIT_OBJECT = Path(__file__).resolve().parents[2] / "flowkit" / "bpf" / "flowkit.bpf.o"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang"),
]

# Ethernet + IPv4 + UDP, 198.18.0.1:4000 -> 198.18.0.2:5000 (benchmarking range), 64 bytes.
_ETH = bytes.fromhex("02000000000202000000000108 00".replace(" ", ""))
_IPV4 = bytes.fromhex("45000032000100004011 0000 c6120001 c6120002".replace(" ", ""))
_UDP = struct.pack("!HHHH", 4000, 5000, 30, 0)
FRAME = (_ETH + _IPV4 + _UDP).ljust(64, b"\0")
TC_ACT_UNSPEC = 0xFFFFFFFF  # -1 as the kernel reports it


@pytest.fixture(scope="session")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bpf-objects")
    built = {s.stem: compile_bpf(s, out / f"{s.stem}.o") for s in sorted(SOURCES.glob("*.c"))}
    built["legacy_maps-nobtf"] = compile_bpf(
        SOURCES / "legacy_maps.c", out / "legacy_maps-nobtf.o", debug=False
    )
    return built


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- section names libbpf 1.x does not accept -----------------------------------------------


@pytest.mark.parametrize(
    ("program", "expected"),
    [
        ("classifier_prog", 11),
        ("tc_prog", 12),
        ("tcx_prog", 13),
        ("xdp_prog", 2),
        ("socket_prog", 14),
    ],
)
def test_program_in_cilium_style_section_runs(
    objects: dict[str, Path], program: str, expected: int
) -> None:
    spec = CollectionSpec.from_file(objects["sections"])
    with spec.load([program]) as coll:
        assert list(coll.programs) == [program]
        retval, _ = coll.programs[program].test_run(FRAME)
        assert retval == expected


def test_tcx_section_sets_expected_attach_type(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["sections"])
    with spec.load(["tcx_prog", "classifier_prog"]) as coll:
        assert coll.programs["tcx_prog"].prog_type == "sched_cls"
        assert coll.programs["tcx_prog"].attach_type == "tcx_ingress"
        assert coll.programs["classifier_prog"].info()["type"] == "sched_cls"


def test_only_requested_programs_are_loaded(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["sections"])
    with spec.load(["tc_prog"]) as coll:
        assert set(coll.programs) == {"tc_prog"}


def test_unknown_program_name_is_named(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["sections"])
    with pytest.raises(LoaderError, match="no program named 'flowkit_ingress'"):
        spec.load(["flowkit_ingress"])


# -- static programs ------------------------------------------------------------------------


def test_static_program_loads_and_runs(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["static_prog"])
    with spec.load(["static_classifier"]) as coll:
        assert coll.programs["static_classifier"].test_run(FRAME)[0] == 21


def test_static_program_in_custom_section_runs_once_typed(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["static_prog"])
    spec.programs["static_custom"].prog_type = "sched_cls"
    with spec.load() as coll:
        assert coll.programs["static_custom"].test_run(FRAME)[0] == 33
        assert coll.programs["static_classifier"].test_run(FRAME)[0] == 21


def test_custom_section_without_type_is_refused_with_advice(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["static_prog"])
    with pytest.raises(LoaderError, match=r"static_custom.*set spec\.programs\['static_custom'\]"):
        spec.load()


# -- legacy maps ----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["legacy_maps", "legacy_maps-nobtf"])
def test_legacy_maps_are_created_with_declared_sizes(
    objects: dict[str, Path], variant: str
) -> None:
    spec = CollectionSpec.from_file(objects[variant])
    with spec.load() as coll:
        info = {name: m.info() for name, m in coll.maps.items()}
    assert {
        n: (i["type"], i["key_size"], i["value_size"], i["max_entries"]) for n, i in info.items()
    } == {
        "legacy_counters": ("array", 4, 8, 4),
        "legacy_hash": ("hash", 4, 24, 128),
    }
    assert info["legacy_hash"]["flags"] == 1  # BPF_F_NO_PREALLOC


@pytest.mark.parametrize("variant", ["legacy_maps", "legacy_maps-nobtf"])
def test_program_uses_legacy_maps(objects: dict[str, Path], variant: str) -> None:
    spec = CollectionSpec.from_file(objects[variant])
    with spec.load() as coll:
        program = coll.programs["legacy_prog"]
        assert [program.test_run(FRAME)[0] for _ in range(3)] == [1, 2, 3]
        assert coll.maps["legacy_counters"].lookup(1) == struct.pack("<Q", 3)
        assert sorted(coll.maps["legacy_hash"].keys()) == [struct.pack("<I", n) for n in (1, 2, 3)]


def test_legacy_and_btf_maps_in_one_object(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["mixed_maps"])
    with spec.load() as coll:
        program = coll.programs["mixed_prog"]
        assert [program.test_run(FRAME)[0] for _ in range(2)] == [5, 10]
        assert coll.maps["old_array"].lookup(0) == struct.pack("<Q", 10)
        assert coll.maps["inner_a"].lookup(3) == struct.pack("<I", 7)
        assert coll.maps["modern_hash"].lookup(struct.pack("<Q", 9)) == struct.pack("<QQ", 1, 2)


def test_resized_inner_array_still_fits_its_map_in_map(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["mixed_maps"])
    spec.maps["inner_a"].max_entries = 16
    spec.maps["old_array"].max_entries = 8
    with spec.load() as coll:
        assert coll.maps["inner_a"].info()["max_entries"] == 16
        assert coll.maps["old_array"].info()["max_entries"] == 8
        assert coll.programs["mixed_prog"].test_run(FRAME)[0] == 5
        assert coll.maps["inner_a"].lookup(3) == struct.pack("<I", 7)


# -- variables ------------------------------------------------------------------------------


def test_rodata_constant_changes_the_result(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["rodata"])
    with spec.load() as coll:
        assert coll.programs["rodata_prog"].test_run(FRAME)[0] == 1
    spec.variables["answer"].set(42)
    with spec.load() as coll:
        assert coll.programs["rodata_prog"].test_run(FRAME)[0] == 42


def test_data_and_bss_variables_are_set_before_load(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["rodata"])
    spec.set_variables({"answer": 2, "enabled": True, "wide": 1000, "data_offset": 30})
    spec.variables["bss_runs"].set(5)
    with spec.load() as coll:
        assert coll.programs["rodata_prog"].test_run(FRAME)[0] == 2 + 30 + 1000
        assert coll.maps[".bss"].lookup(0) == struct.pack("<I", 6)
        assert coll.maps[".rodata"].flags & 0x80  # BPF_F_RDONLY_PROG


def test_wrong_variable_name_or_size_fails_clearly(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["rodata"])
    with pytest.raises(LoaderError, match="no variable named 'answr'"):
        spec.set_variables({"answr": 1})
    with pytest.raises(LoaderError, match="variable 'answer' is 4 bytes"):
        spec.set_variables({"answer": b"\x01"})
    with spec.load() as coll:  # nothing was changed by the failed calls
        assert coll.programs["rodata_prog"].test_run(FRAME)[0] == 1


# -- failures, logs, lifetime ---------------------------------------------------------------


def test_verifier_rejection_carries_the_verifier_log(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["verifier_reject"])
    with pytest.raises(LoaderError) as caught:
        spec.load()
    assert "loading into the kernel failed" in str(caught.value)
    assert "unchecked_read" in caught.value.log
    assert "invalid access to packet" in caught.value.log


def test_libbpf_log_goes_to_python_logging(
    objects: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="flowkit.ebpf.libbpf"):
        CollectionSpec.from_file(objects["rodata"]).load().close()
    assert any("libbpf: loading object" in r.getMessage() for r in caplog.records)


def test_closed_collection_refuses_use_and_closes_once(objects: dict[str, Path]) -> None:
    coll = CollectionSpec.from_file(objects["rodata"]).load()
    program = coll.programs["rodata_prog"]
    coll.close()
    coll.close()
    assert coll.closed
    with pytest.raises(LoaderError, match="closed"):
        _ = program.fd


def test_load_and_close_1000_times_leaks_no_fds(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["mixed_maps"])
    before = _open_fds()
    for _ in range(1000):
        with spec.load() as coll:
            assert coll.programs["mixed_prog"].fd >= 0
    assert _open_fds() == before


def test_map_helpers_update_lookup_delete_and_drain(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["legacy_maps"])
    with spec.load() as coll:
        table = coll.maps["legacy_hash"]
        for n in range(50):
            table.update(n, bytes([n]) * 24)
        assert table.lookup(7) == bytes([7]) * 24
        assert table.delete(7) is True
        assert table.delete(7) is False
        assert table.lookup(7) is None
        keys, values = table.lookup_and_delete_batch(batch_size=8)
        assert len(keys) == 49 * 4
        assert len(values) == 49 * 24
        drained = {
            int.from_bytes(keys[i * 4 : i * 4 + 4], "little"): values[i * 24 : i * 24 + 24]
            for i in range(49)
        }
        assert drained == {n: bytes([n]) * 24 for n in range(50) if n != 7}
        assert list(table.keys()) == []


# -- the datapath program -------------------------------------------------------------------


@pytest.fixture
def flowkit_spec() -> CollectionSpec:
    if not FLOWKIT_OBJECT.exists():
        pytest.skip("flowkit/bpf/flowkit.bpf.o is not built yet (make bpf)")
    return CollectionSpec.from_file(FLOWKIT_OBJECT)


def _flow_packets(coll: Collection) -> tuple[int, int]:
    """(flows, packets) in both flow maps, summing the per-CPU values."""
    flows = packets = 0
    for name in ("flows_a", "flows_b"):
        table = coll.maps[name]
        for _, value in table.items():
            flows += 1
            stride = table.value_stride // table.ncpus
            packets += sum(
                int.from_bytes(value[c * stride : c * stride + 8], "little")
                for c in range(table.ncpus)
            )
    return flows, packets


def test_flowkit_object_loads_resized_through_the_same_api(flowkit_spec: CollectionSpec) -> None:
    flowkit_spec.maps["flows_a"].max_entries = 10_000
    flowkit_spec.maps["flows_b"].max_entries = 10_000
    with flowkit_spec.load() as coll:
        assert {"flowkit_ingress", "flowkit_egress"} <= set(coll.programs)
        assert coll.maps["flows_a"].info()["max_entries"] == 10_000
        assert coll.maps["flows_b"].info()["max_entries"] == 10_000
        active = coll.maps["flow_selector"].lookup(0)
        assert active == struct.pack("<I", coll.maps["flows_a"].info()["id"])
        ingress = coll.programs["flowkit_ingress"]
        assert [ingress.test_run(FRAME)[0] for _ in range(3)] == [TC_ACT_UNSPEC] * 3
        assert _flow_packets(coll) == (1, 3)


def test_flowkit_rodata_switch_changes_behaviour(flowkit_spec: CollectionSpec) -> None:
    flowkit_spec.variables["trace_ingress"].set(0)
    with flowkit_spec.load(["flowkit_ingress"]) as coll:
        assert coll.programs["flowkit_ingress"].test_run(FRAME)[0] == TC_ACT_UNSPEC
        assert _flow_packets(coll) == (0, 0)
