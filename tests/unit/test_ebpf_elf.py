"""The eBPF loader's reading side, without privileges: ELF, BTF, specs, normalisation, inspect.

Test objects are compiled with clang from tests/integration/bpf_sources (the same sources the
integration tests load into the kernel).
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import pytest

from flowkit.ebpf import CollectionSpec, LoaderError
from flowkit.ebpf.btf import Btf, BtfKind
from flowkit.ebpf.clang import compile_bpf
from flowkit.ebpf.elf import STB_GLOBAL, STB_LOCAL, ElfObject
from flowkit.ebpf.inspect import main as inspect_main
from flowkit.ebpf.kinds import classify_section
from flowkit.ebpf.normalize import LEGACY_MAPS_RENAMED, build_image

SOURCES = Path(__file__).resolve().parents[1] / "integration" / "bpf_sources"
FLOWKIT_OBJECT = Path(__file__).resolve().parents[2] / "flowkit" / "bpf" / "flowkit.bpf.o"

pytestmark = pytest.mark.skipif(shutil.which("clang") is None, reason="needs clang")


@pytest.fixture(scope="session")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every test source compiled once: name -> object path (plus -nobtf / -bpfeb variants)."""
    out = tmp_path_factory.mktemp("bpf-objects")
    built = {}
    for source in sorted(SOURCES.glob("*.c")):
        built[source.stem] = compile_bpf(source, out / f"{source.stem}.o")
    built["legacy_maps-nobtf"] = compile_bpf(
        SOURCES / "legacy_maps.c", out / "legacy_maps-nobtf.o", debug=False
    )
    built["rodata-bpfeb"] = compile_bpf(
        SOURCES / "rodata.c", out / "rodata-bpfeb.o", target="bpfeb"
    )
    return built


# -- section names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "prog_type", "attach_type"),
    [
        ("classifier", "sched_cls", None),
        ("classifier/ingress", "sched_cls", None),
        ("tc", "sched_cls", None),
        ("tc/anything/at/all", "sched_cls", None),
        ("tcx/ingress", "sched_cls", "tcx_ingress"),
        ("tcx/egress", "sched_cls", "tcx_egress"),
        ("xdp", "xdp", "xdp"),
        ("xdp/custom", "xdp", "xdp"),
        ("xdp/devmap", "xdp", "xdp_devmap"),
        ("socket", "socket_filter", None),
        ("socket/filter", "socket_filter", None),
        ("tracepoint/net/netif_receive_skb", "tracepoint", None),
        ("kprobe/tcp_v4_connect", "kprobe", None),
        ("uprobe/usr/bin/true:main", "kprobe", None),
        ("fentry/tcp_v4_connect", "tracing", "trace_fentry"),
        ("cgroup_skb/egress", "cgroup_skb", "cgroup_inet_egress"),
        ("custom/section", "unspec", None),
        ("classifierX", "unspec", None),
    ],
)
def test_section_names_map_to_program_types(
    section: str, prog_type: str, attach_type: str | None
) -> None:
    kind = classify_section(section)
    assert (kind.prog_type, kind.attach_type) == (prog_type, attach_type)


# -- ELF and BTF round trips ----------------------------------------------------------------


def test_btf_round_trips_byte_for_byte(objects: dict[str, Path]) -> None:
    for name in ("sections", "legacy_maps", "rodata", "mixed_maps"):
        elf = ElfObject.parse(objects[name].read_bytes())
        btf_section = elf.section(".BTF")
        assert elf.btf is not None
        assert btf_section is not None
        assert elf.btf.encode() == btf_section.data, name


def test_elf_written_back_keeps_sections_and_symbols(objects: dict[str, Path]) -> None:
    original = ElfObject.parse(objects["legacy_maps"].read_bytes())
    again = ElfObject.parse(original.write())
    assert [(s.name, s.sh_type, s.data) for s in again.sections] == [
        (s.name, s.sh_type, s.data) for s in original.sections
    ]
    assert [(s.name, s.value, s.shndx) for s in again.symbols] == [
        (s.name, s.value, s.shndx) for s in original.symbols
    ]


# -- specs ----------------------------------------------------------------------------------


def test_spec_lists_programs_with_cilium_section_semantics(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["sections"])
    got = {name: (p.section, p.prog_type, p.attach_type) for name, p in spec.programs.items()}
    assert got == {
        "classifier_prog": ("classifier/ingress", "sched_cls", None),
        "tc_prog": ("tc/egress", "sched_cls", None),
        "tcx_prog": ("tcx/ingress", "sched_cls", "tcx_ingress"),
        "xdp_prog": ("xdp/custom", "xdp", "xdp"),
        "socket_prog": ("socket/filter", "socket_filter", None),
        "kprobe_prog": ("kprobe/tcp_v4_connect", "kprobe", None),
        "tracepoint_prog": ("tracepoint/net/netif_receive_skb", "tracepoint", None),
    }
    assert spec.license == "GPL"


def test_static_programs_are_listed_and_marked(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["static_prog"])
    assert {n: (p.static, p.prog_type) for n, p in spec.programs.items()} == {
        "static_classifier": (True, "sched_cls"),
        "static_custom": (True, "unspec"),
    }


def test_program_type_can_be_set_but_not_to_nonsense(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["static_prog"])
    spec.programs["static_custom"].prog_type = "sched_cls"
    assert spec.programs["static_custom"].prog_type == "sched_cls"
    with pytest.raises(LoaderError, match="unknown program type 'schedcls'"):
        spec.programs["static_custom"].prog_type = "schedcls"


@pytest.mark.parametrize("variant", ["legacy_maps", "legacy_maps-nobtf"])
def test_legacy_maps_are_read_from_bpf_map_def(objects: dict[str, Path], variant: str) -> None:
    spec = CollectionSpec.from_file(objects[variant])
    got = {
        n: (m.type, m.key_size, m.value_size, m.max_entries, m.flags, m.legacy)
        for n, m in spec.maps.items()
    }
    assert got == {
        "legacy_counters": ("array", 4, 8, 4, 0, True),
        "legacy_hash": ("hash", 4, 24, 128, 1, True),
    }


def test_btf_maps_sizes_come_from_btf(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["mixed_maps"])
    modern = spec.maps["modern_hash"]
    assert (modern.type, modern.key_size, modern.value_size, modern.max_entries) == (
        "hash",
        8,
        16,
        64,
    )
    assert (modern.key_type, modern.value_type) == ("__u64", "struct pair")
    assert spec.maps["old_array"].legacy


def test_map_in_map_has_inner_template_and_initial_values(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["mixed_maps"])
    outer = spec.maps["outer"]
    assert outer.type == "array_of_maps"
    assert outer.inner is not None
    assert (outer.inner.type, outer.inner.key_size, outer.inner.value_size) == ("array", 4, 4)
    assert outer.initial_values == {0: "inner_a"}


def test_variables_have_sections_sizes_types_and_values(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["rodata"])
    got = {
        n: (v.section, v.size, v.type_name, v.constant, v.get()) for n, v in spec.variables.items()
    }
    assert got == {
        "answer": (".rodata", 4, "__u32", True, struct.pack("<I", 1)),
        "enabled": (".rodata", 1, "__u8", True, b"\0"),
        "wide": (".rodata", 8, "__u64", True, bytes(8)),
        "data_offset": (".data", 4, "__u32", False, struct.pack("<I", 100)),
        "bss_runs": (".bss", 4, "__u32", False, bytes(4)),
    }


def test_variable_set_accepts_int_bool_and_exact_bytes(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["rodata"])
    spec.variables["answer"].set(0xDEADBEEF)
    spec.variables["enabled"].set(True)
    spec.variables["wide"].set(struct.pack("<Q", 7))
    spec.variables["data_offset"].set(-1)
    assert spec.variables["answer"].get() == struct.pack("<I", 0xDEADBEEF)
    assert spec.variables["enabled"].get() == b"\x01"
    assert spec.variables["wide"].get() == struct.pack("<Q", 7)
    assert spec.variables["data_offset"].get() == b"\xff\xff\xff\xff"


def test_variable_of_wrong_size_is_refused_naming_it(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["rodata"])
    with pytest.raises(LoaderError, match=r"variable 'answer' is 4 bytes \(__u32\), got 2 bytes"):
        spec.variables["answer"].set(b"\x01\x02")
    with pytest.raises(LoaderError, match=r"variable 'enabled'.*cannot hold 256"):
        spec.variables["enabled"].set(256)
    with pytest.raises(LoaderError, match=r"variable 'answer'.*not str"):
        spec.variables["answer"].set("7")  # type: ignore[arg-type]


def test_set_variables_rejects_unknown_names_and_changes_nothing(
    objects: dict[str, Path],
) -> None:
    spec = CollectionSpec.from_file(objects["rodata"])
    with pytest.raises(LoaderError, match="no variable named 'answr'"):
        spec.set_variables({"answer": 5, "answr": 6})
    with pytest.raises(LoaderError, match="variable 'wide' is 8 bytes"):
        spec.set_variables({"answer": 5, "wide": b"\0"})
    assert spec.variables["answer"].get() == struct.pack("<I", 1)


def test_map_max_entries_is_settable_and_validated(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["mixed_maps"])
    spec.maps["modern_hash"].max_entries = 10_000
    assert spec.maps["modern_hash"].max_entries == 10_000
    with pytest.raises(LoaderError, match="map 'modern_hash': max_entries"):
        spec.maps["modern_hash"].max_entries = -1


# -- foreign input --------------------------------------------------------------------------


def test_not_an_elf_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(LoaderError, match=r"notes\.txt: not an ELF file"):
        CollectionSpec.from_file(path)


def test_elf_for_another_machine_is_refused() -> None:
    with pytest.raises(LoaderError, match="not EM_BPF"):
        CollectionSpec.from_file(sys.executable)


def test_truncated_object_is_refused(objects: dict[str, Path]) -> None:
    with pytest.raises(LoaderError):
        CollectionSpec.from_bytes(objects["rodata"].read_bytes()[:200])


def test_big_endian_object_is_refused_with_advice(objects: dict[str, Path]) -> None:
    with pytest.raises(LoaderError, match=r"big-endian.*bpfel"):
        CollectionSpec.from_file(objects["rodata-bpfeb"])


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(LoaderError, match="cannot read eBPF object"):
        CollectionSpec.from_file(tmp_path / "absent.o")


# -- normalisation --------------------------------------------------------------------------


def test_image_makes_static_programs_global(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["static_prog"])
    before = {s.name: s.bind for s in spec.elf.symbols}
    image = ElfObject.parse(build_image(spec))
    after = {s.name: s.bind for s in image.symbols}
    assert before["static_classifier"] == STB_LOCAL
    assert after["static_classifier"] == STB_GLOBAL
    assert after["static_custom"] == STB_GLOBAL
    assert spec.elf.symbols[spec.programs["static_custom"].symbol_index].bind == STB_LOCAL


def test_image_carries_rewritten_rodata(objects: dict[str, Path]) -> None:
    spec = CollectionSpec.from_file(objects["rodata"])
    spec.variables["answer"].set(42)
    image = CollectionSpec.from_bytes(build_image(spec))
    assert image.variables["answer"].get() == struct.pack("<I", 42)
    assert CollectionSpec.from_file(objects["rodata"]).variables["answer"].get() == struct.pack(
        "<I", 1
    )


@pytest.mark.parametrize("variant", ["legacy_maps", "legacy_maps-nobtf"])
def test_image_turns_legacy_maps_into_btf_maps(objects: dict[str, Path], variant: str) -> None:
    spec = CollectionSpec.from_file(objects[variant])
    image = ElfObject.parse(build_image(spec))
    assert image.section("maps") is None
    assert image.btf is not None
    assert set(image.btf.datasec_vars(".maps")) == {"legacy_counters", "legacy_hash"}
    assert image.btf.find(BtfKind.DATASEC, "maps") is None
    reread = CollectionSpec.from_bytes(build_image(spec))
    got = {
        n: (m.type, m.key_size, m.value_size, m.max_entries, m.flags, m.legacy)
        for n, m in reread.maps.items()
    }
    assert got == {
        "legacy_counters": ("array", 4, 8, 4, 0, False),
        "legacy_hash": ("hash", 4, 24, 128, 1, False),
    }


def test_image_merges_legacy_maps_into_an_existing_maps_section(
    objects: dict[str, Path],
) -> None:
    spec = CollectionSpec.from_file(objects["mixed_maps"])
    image = ElfObject.parse(build_image(spec))
    assert image.section(LEGACY_MAPS_RENAMED) is not None
    reread = CollectionSpec.from_bytes(build_image(spec))
    assert set(reread.maps) >= {"modern_hash", "outer", "inner_a", "old_array"}
    assert (reread.maps["old_array"].value_size, reread.maps["old_array"].max_entries) == (8, 2)
    assert reread.maps["outer"].initial_values == {0: "inner_a"}


def test_btf_strings_are_shared_when_added_twice() -> None:
    btf = Btf()
    first = btf.add_string("max_entries")
    assert btf.add_string("max_entries") == first
    assert btf.name(first) == "max_entries"


# -- the datapath object --------------------------------------------------------------------


@pytest.mark.skipif(not FLOWKIT_OBJECT.exists(), reason="flowkit/bpf/flowkit.bpf.o not built")
def test_flowkit_object_spec() -> None:
    spec = CollectionSpec.from_file(FLOWKIT_OBJECT)
    assert {"flowkit_ingress", "flowkit_egress"} <= set(spec.programs)
    assert {spec.programs[n].prog_type for n in ("flowkit_ingress", "flowkit_egress")} == {
        "sched_cls"}
    # The optional features' tracing programs (tp_btf: BTF-enabled raw tracepoints).
    assert {spec.programs[n].prog_type for n in ("flowkit_drops", "flowkit_rtt")} == {"tracing"}
    assert spec.maps["flows_a"].type == "percpu_hash"
    selector = spec.maps["flow_selector"]
    assert selector.type == "array_of_maps"
    assert selector.inner is not None
    assert selector.inner.type == "percpu_hash"
    assert selector.initial_values == {0: "flows_a"}
    assert spec.variables["sampling"].section == ".rodata"


# -- inspect --------------------------------------------------------------------------------


def test_inspect_json_lists_everything(
    objects: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert inspect_main([str(objects["legacy_maps"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in data["programs"]] == ["legacy_prog"]
    assert data["programs"][0]["type"] == "sched_cls"
    assert {m["name"]: m["max_entries"] for m in data["maps"]} == {
        "legacy_counters": 4,
        "legacy_hash": 128,
    }


def test_inspect_table_names_programs_maps_and_variables(
    objects: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert inspect_main([str(objects["rodata"])]) == 0
    out = capsys.readouterr().out
    for word in ("Programs:", "rodata_prog", "Maps:", ".rodata", "Variables:", "answer", "__u32"):
        assert word in out


def test_inspect_reports_foreign_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert inspect_main([sys.executable]) == 1
    assert "not EM_BPF" in capsys.readouterr().err
