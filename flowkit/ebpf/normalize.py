"""Turn a :class:`~flowkit.ebpf.spec.CollectionSpec` into an ELF image libbpf 1.x accepts.

libbpf 1.x refuses some objects that Go's cilium/ebpf loads. Rather than teaching libbpf, the
loader rewrites a copy of the object in memory:

* **Variables**: ``.rodata``/``.data`` section bytes are replaced by the spec's current values
  (what ``VariableSpec.set`` changed), so libbpf creates the internal maps with them.
* **Static programs**: program symbols with local binding get global binding (libbpf stops at
  "program ... is static and not supported"). Symbols keep their index, so relocations and
  ``.BTF.ext`` stay valid.
* **Legacy maps**: the ``maps`` section (``struct bpf_map_def``) becomes BTF-defined maps in
  ``.maps``: each definition gets a synthesised BTF struct using libbpf's ``__uint()`` encoding
  (pointer to ``int[N]``), a VAR and an entry in the ``.maps`` DATASEC; the map symbols move
  into ``.maps``, so program relocations resolve to the new maps. The old ``maps`` DATASEC (if
  the object has BTF) is neutralised in place so that type ids do not shift.

Program types for section names libbpf does not know are not rewritten here: the loader sets
them on the opened object (``bpf_program__set_type``), which keeps ``.BTF.ext`` consistent.
"""

from __future__ import annotations

from flowkit.ebpf.btf import BTF_VAR_GLOBAL_ALLOCATED, Btf, BtfKind, BtfMember, BtfType
from flowkit.ebpf.elf import (
    SHF_ALLOC,
    SHF_WRITE,
    SHT_PROGBITS,
    STB_GLOBAL,
    STB_LOCAL,
    STT_OBJECT,
    ElfObject,
)
from flowkit.ebpf.errors import LoaderError
from flowkit.ebpf.spec import CollectionSpec, MapSpec

__all__ = ["LEGACY_MAPS_RENAMED", "build_image"]

# Where the legacy section's contents go when the object also has a `.maps` section: a name
# libbpf skips as an unrecognised data section.
LEGACY_MAPS_RENAMED = ".flowkit.legacy_maps"
_LEGACY_FIELDS = (
    ("type", "type_id"),
    ("key_size", "key_size"),
    ("value_size", "value_size"),
    ("max_entries", "max_entries"),
    ("map_flags", "flags"),
)
_DEF_SIZE = 8 * len(_LEGACY_FIELDS)


def build_image(spec: CollectionSpec) -> bytes:
    """The ELF bytes to hand to ``bpf_object__open_mem`` for this spec."""
    obj = spec.elf.copy()
    for name, contents in spec._section_data.items():
        section = obj.section(name)
        if section is not None and section.sh_type == SHT_PROGBITS:
            section.data = bytes(contents)
    for program in spec.programs.values():
        symbol = obj.symbols[program.symbol_index]
        if symbol.bind == STB_LOCAL:
            symbol.bind = STB_GLOBAL
    legacy = [m for m in spec.maps.values() if m.legacy]
    if obj.section("maps") is not None:
        _convert_legacy_maps(obj, legacy)
    return obj.write()


def _int_type(btf: Btf) -> int:
    for type_id, t in enumerate(btf.types):
        if t.kind == BtfKind.INT and t.size_or_type == 4 and btf.name(t.name_off) == "int":
            return type_id
    return btf.add_int("int", 4, signed=True)


def _map_definition(btf: Btf, spec: MapSpec, int_id: int) -> int:
    members = []
    for index, (field_name, attribute) in enumerate(_LEGACY_FIELDS):
        value = int(getattr(spec, attribute))
        members.append(
            BtfMember(
                name_off=btf.add_string(field_name),
                type=btf.add_number_pointer(value, int_id),
                offset=index * 64,
            )
        )
    return btf.add(BtfType(BtfKind.STRUCT, size_or_type=_DEF_SIZE, members=members))


def _convert_legacy_maps(obj: ElfObject, legacy: list[MapSpec]) -> None:
    old = obj.section("maps")
    assert old is not None
    btf = obj.btf
    if btf is None:
        btf = obj.btf = Btf()
        obj.add_section(".BTF", SHT_PROGBITS, 0, b"", 4)
    int_id = _int_type(btf)

    target = obj.section(".maps")
    if target is None:
        target, data = old, bytearray()
        target.name = ".maps"
    else:
        old.name = LEGACY_MAPS_RENAMED
        data = bytearray(target.data)
        data += b"\0" * (-len(data) % 8)
    target.sh_type, target.flags, target.addralign = SHT_PROGBITS, SHF_ALLOC | SHF_WRITE, 8

    old_vars = btf.datasec_vars("maps")
    entries: list[BtfMember] = []
    for spec in legacy:
        struct_id = _map_definition(btf, spec, int_id)
        if spec.name in old_vars:
            var_id = old_vars[spec.name][0]
            var = btf.types[var_id]
            var.size_or_type, var.extra = struct_id, (BTF_VAR_GLOBAL_ALLOCATED,)
        else:
            var_id = btf.add(
                BtfType(
                    BtfKind.VAR,
                    name_off=btf.add_string(spec.name),
                    size_or_type=struct_id,
                    extra=(BTF_VAR_GLOBAL_ALLOCATED,),
                )
            )
        offset = len(data)
        data += bytes(_DEF_SIZE)
        symbol = obj.symbols[spec.symbol_index]
        symbol.shndx, symbol.value, symbol.size = target.index, offset, _DEF_SIZE
        # libbpf matches BTF VARs to global OBJECT symbols by name.
        symbol.bind, symbol.type = STB_GLOBAL, STT_OBJECT
        entries.append(BtfMember(type=var_id, offset=offset, size=_DEF_SIZE))
    target.data = bytes(data)

    old_datasec = btf.find(BtfKind.DATASEC, "maps")
    if old_datasec is not None:
        # Replaced by `const void` rather than removed, so that no type id changes.
        btf.types[old_datasec] = BtfType(BtfKind.CONST, size_or_type=0)
    datasec = btf.find(BtfKind.DATASEC, ".maps")
    if datasec is None:
        btf.add(
            BtfType(
                BtfKind.DATASEC,
                name_off=btf.add_string(".maps"),
                size_or_type=len(data),
                members=entries,
            )
        )
        return
    existing = btf.types[datasec]
    if existing.size_or_type == 0:
        # Straight from clang: libbpf fills in sizes and offsets from the ELF symbols.
        for entry in entries:
            entry.offset = 0
    else:
        existing.size_or_type = len(data)
    existing.members.extend(entries)
    if len(existing.members) > 0xFFFF:
        raise LoaderError("too many maps for one .maps section")
