"""What an eBPF object contains, before anything is loaded: :class:`CollectionSpec`.

A spec is read from an ELF object with pyelftools (symbols, sections, relocations) and the
object's BTF. It lists programs, maps and ``.rodata``/``.data``/``.bss`` variables, and it is
where an application changes things before load: variable values (by symbol name, the way
cilium/ebpf rewrites constants), map sizes, program types. :meth:`CollectionSpec.load` then
hands libbpf a normalised copy of the object (see :mod:`flowkit.ebpf.normalize`).

Reading a spec needs no privileges and no C extension.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from flowkit.ebpf.btf import Btf, BtfKind
from flowkit.ebpf.elf import (
    SHF_EXECINSTR,
    SHT_NOBITS,
    SHT_PROGBITS,
    STB_LOCAL,
    STT_FUNC,
    STT_SECTION,
    ElfObject,
    ElfSection,
    ElfSymbol,
)
from flowkit.ebpf.errors import LoaderError
from flowkit.ebpf.kinds import (
    ATTACH_TYPES,
    MAP_TYPES,
    PROG_TYPES,
    classify_section,
    map_type_name,
)

if TYPE_CHECKING:
    from flowkit.ebpf.loader import Collection

__all__ = ["CollectionSpec", "MapSpec", "ProgramSpec", "VariableSpec"]

BPF_F_RDONLY_PROG = 1 << 7
BPF_F_MMAPABLE = 1 << 10

_LEGACY_MAP_FIELDS = ("type", "key_size", "value_size", "max_entries", "flags")
_NUMERIC_MAP_FIELDS = (
    "type",
    "max_entries",
    "map_flags",
    "numa_node",
    "key_size",
    "value_size",
    "pinning",
    "map_extra",
)
_DATA_PREFIXES = (".rodata", ".data", ".bss")


def _is_data_section(section: ElfSection) -> bool:
    if section.flags & SHF_EXECINSTR or section.sh_type not in (SHT_PROGBITS, SHT_NOBITS):
        return False
    return any(section.name == p or section.name.startswith(p + ".") for p in _DATA_PREFIXES)


@dataclass
class ProgramSpec:
    """A program of the object: its symbol name, ELF section and what the section implies.

    ``prog_type`` and ``attach_type`` may be changed before load (needed for sections whose
    name says nothing, e.g. ``SEC("custom/section")``).
    """

    name: str
    section: str
    prog_type: str
    attach_type: str | None = None
    flags: int = 0
    instructions: int = 0
    static: bool = False
    symbol_index: int = field(default=0, repr=False)

    def __setattr__(self, key: str, value: object) -> None:
        if key == "prog_type" and value not in PROG_TYPES:
            raise LoaderError(
                f"program {getattr(self, 'name', '?')!r}: unknown program type {value!r} "
                f"(one of: {', '.join(sorted(PROG_TYPES))})"
            )
        if key == "attach_type" and value is not None and value not in ATTACH_TYPES:
            raise LoaderError(
                f"program {getattr(self, 'name', '?')!r}: unknown attach type {value!r} "
                f"(one of: {', '.join(sorted(ATTACH_TYPES))})"
            )
        object.__setattr__(self, key, value)


@dataclass
class MapSpec:
    """A map of the object. ``max_entries`` may be changed before load.

    ``inner`` is the template of a map-in-map's inner maps; ``initial_values`` maps slots of a
    map-in-map (or program array) to the names of the maps (programs) put there at load.
    ``internal`` maps back ``.rodata``/``.data``/``.bss`` sections; ``legacy`` maps come from a
    legacy ``maps`` section (``struct bpf_map_def``).
    """

    name: str
    type: str
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    inner: MapSpec | None = None
    initial_values: dict[int, str] = field(default_factory=dict)
    pinning: int = 0
    section: str = ".maps"
    legacy: bool = False
    internal: bool = False
    key_type: str = ""
    value_type: str = ""
    symbol_index: int = field(default=0, repr=False)
    values_offset: int = field(default=0, repr=False)

    def __setattr__(self, key: str, value: object) -> None:
        if key == "max_entries" and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 32
        ):
            raise LoaderError(
                f"map {getattr(self, 'name', '?')!r}: max_entries must be an integer in "
                f"0..2**32-1, got {value!r}"
            )
        object.__setattr__(self, key, value)

    @property
    def type_id(self) -> int:
        """The kernel's ``enum bpf_map_type`` value."""
        return MAP_TYPES.get(self.type, 0)


@dataclass
class VariableSpec:
    """A global variable in ``.rodata`` (``const``), ``.data`` or ``.bss``.

    :meth:`set` changes its initial value before load; the new bytes are written into the
    section contents handed to libbpf (``.bss``: into the map's initial value).
    """

    name: str
    section: str
    offset: int
    size: int
    type_name: str
    _spec: CollectionSpec = field(repr=False, compare=False)

    @property
    def constant(self) -> bool:
        """True for ``.rodata`` variables: the verifier sees their values as constants."""
        return self.section.startswith(".rodata")

    def get(self) -> bytes:
        """The current initial value, as bytes."""
        return bytes(self._spec._section_data[self.section][self.offset : self.offset + self.size])

    def set(self, value: int | bool | bytes | bytearray | memoryview) -> None:
        """Set the initial value: an int (little-endian, must fit), a bool, or exact-size bytes."""
        raw = self._encode(value)
        self._spec._section_data[self.section][self.offset : self.offset + self.size] = raw

    def _encode(self, value: object) -> bytes:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int):
            low = -(1 << (8 * self.size - 1))
            high = (1 << (8 * self.size)) - 1
            if not low <= value <= high:
                raise LoaderError(
                    f"variable {self.name!r} ({self.type_name}, {self.size} bytes) cannot hold "
                    f"{value}"
                )
            return value.to_bytes(self.size, "little", signed=value < 0)
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            if len(raw) != self.size:
                raise LoaderError(
                    f"variable {self.name!r} is {self.size} bytes ({self.type_name}), "
                    f"got {len(raw)} bytes"
                )
            return raw
        raise LoaderError(
            f"variable {self.name!r}: set it to an int, a bool or {self.size} bytes, "
            f"not {type(value).__name__}"
        )


class CollectionSpec:
    """Programs, maps and variables of one eBPF object, editable until :meth:`load`."""

    def __init__(self, elf: ElfObject, origin: str = "<bytes>") -> None:
        self.origin = origin
        self.elf = elf
        self.license = ""
        self.programs: dict[str, ProgramSpec] = {}
        self.maps: dict[str, MapSpec] = {}
        self.variables: dict[str, VariableSpec] = {}
        self._section_data: dict[str, bytearray] = {}
        self._read_license()
        self._read_programs()
        self._read_data_sections()
        self._read_btf_maps()
        self._read_legacy_maps()

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> CollectionSpec:
        """Read an object file."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise LoaderError(f"cannot read eBPF object {os.fspath(path)!r}: {exc}") from exc
        return cls.from_bytes(data, origin=os.fspath(path))

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "<bytes>") -> CollectionSpec:
        """Read an object from memory."""
        return cls(ElfObject.parse(bytes(data), origin), origin)

    def _read_license(self) -> None:
        section = self.elf.section("license")
        if section is not None:
            self.license = section.data.split(b"\0", 1)[0].decode("ascii", "replace")

    def _read_programs(self) -> None:
        for section in self.elf.sections:
            if not section.is_program:
                continue
            kind = classify_section(section.name)
            functions = [s for s in self.elf.symbols_in(section.index) if s.type == STT_FUNC]
            for index, sym in enumerate(functions):
                end = functions[index + 1].value if index + 1 < len(functions) else section.size
                size = sym.size or (end - sym.value)
                if sym.name in self.programs:
                    raise LoaderError(f"{self.origin}: two programs are named {sym.name!r}")
                self.programs[sym.name] = ProgramSpec(
                    name=sym.name,
                    section=section.name,
                    prog_type=kind.prog_type,
                    attach_type=kind.attach_type,
                    flags=kind.flags,
                    instructions=size // 8,
                    static=sym.bind == STB_LOCAL,
                    symbol_index=sym.index,
                )

    def _btf_vars(self, section: str) -> dict[str, tuple[int, int, int]]:
        return self.elf.btf.datasec_vars(section) if self.elf.btf is not None else {}

    def _read_data_sections(self) -> None:
        btf = self.elf.btf
        for section in self.elf.sections:
            if not _is_data_section(section) or section.size == 0:
                continue
            contents = section.data if section.sh_type == SHT_PROGBITS else bytes(section.size)
            self._section_data[section.name] = bytearray(contents)
            readonly = section.name.startswith(".rodata")
            self.maps[section.name] = MapSpec(
                name=section.name,
                type="array",
                key_size=4,
                value_size=section.size,
                max_entries=1,
                flags=(BPF_F_RDONLY_PROG if readonly else 0) | BPF_F_MMAPABLE,
                section=section.name,
                internal=True,
            )
            btf_vars = self._btf_vars(section.name)
            for sym in self.elf.symbols_in(section.index):
                if sym.type == STT_SECTION or sym.name.startswith(".L"):
                    continue
                var_type, _, btf_size = btf_vars.get(sym.name, (0, 0, 0))
                size = sym.size or btf_size
                if size == 0 or sym.value + size > section.size:
                    continue
                type_name = ""
                if btf is not None and var_type:
                    type_name = btf.describe(btf.types[var_type].size_or_type)
                if sym.name in self.variables:
                    continue  # a static variable shadowed by another one: keep the first
                self.variables[sym.name] = VariableSpec(
                    name=sym.name,
                    section=section.name,
                    offset=sym.value,
                    size=size,
                    type_name=type_name or f"{size} bytes",
                    _spec=self,
                )

    def _read_btf_maps(self) -> None:
        section = self.elf.section(".maps")
        if section is None:
            return
        btf = self.elf.btf
        if btf is None:
            raise LoaderError(
                f"{self.origin}: the .maps section needs BTF, and the object has none"
            )
        btf_vars = self._btf_vars(".maps")
        symbols = {s.name: s for s in self.elf.symbols_in(section.index)}
        for name, (var_id, _, _) in btf_vars.items():
            sym = symbols.get(name)
            definition = btf.types[var_id].size_or_type
            spec = self._parse_btf_map(btf, name, definition)
            spec.symbol_index = sym.index if sym is not None else 0
            self.maps[name] = spec
        # Initial contents of map-in-maps and program arrays: relocations inside `.maps`.
        by_offset = sorted(
            (sym.value, sym.value + (sym.size or 0), sym.name)
            for sym in symbols.values()
            if sym.name in self.maps
        )
        for reloc in self.elf.relocations.get(section.index, []):
            target = (
                self.elf.symbols[reloc.symbol].name if reloc.symbol < len(self.elf.symbols) else ""
            )
            for start, end, owner in by_offset:
                if start <= reloc.offset < end:
                    spec = self.maps[owner]
                    slot = (reloc.offset - start - spec.values_offset) // 8
                    spec.initial_values[slot] = target
                    break

    def _parse_btf_map(self, btf: Btf, name: str, type_id: int) -> MapSpec:
        struct_id = btf.skip_modifiers(type_id)
        definition = btf.types[struct_id] if 0 < struct_id < len(btf.types) else None
        if definition is None or definition.kind != BtfKind.STRUCT:
            raise LoaderError(f"{self.origin}: map {name!r} in .maps is not a struct")
        numbers: dict[str, int] = {}
        key_size = value_size = 0
        key_type = value_type = ""
        inner: MapSpec | None = None
        values_offset = 0
        for member in definition.members:
            member_name = btf.name(member.name_off)
            if member_name in _NUMERIC_MAP_FIELDS:
                number = btf.array_length(member.type)
                if number is None:
                    raise LoaderError(
                        f"{self.origin}: map {name!r}: field {member_name!r} is not "
                        "declared with __uint()"
                    )
                numbers[member_name] = number
            elif member_name in ("key", "value"):
                pointer = btf.types[btf.skip_modifiers(member.type)]
                if pointer.kind != BtfKind.PTR:
                    raise LoaderError(
                        f"{self.origin}: map {name!r}: field {member_name!r} is not "
                        "declared with __type()"
                    )
                size = btf.size_of(pointer.size_or_type)
                described = btf.describe(pointer.size_or_type)
                if member_name == "key":
                    key_size, key_type = size, described
                else:
                    value_size, value_type = size, described
            elif member_name == "values":
                values_offset = member.offset // 8
                array = btf.types[btf.skip_modifiers(member.type)]
                if array.kind != BtfKind.ARRAY:
                    raise LoaderError(f"{self.origin}: map {name!r}: 'values' is not an array")
                pointer = btf.types[btf.skip_modifiers(array.extra[0])]
                target = btf.skip_modifiers(pointer.size_or_type)
                if btf.types[target].kind == BtfKind.STRUCT:
                    inner = self._parse_btf_map(btf, f"{name}.inner", target)
                    value_size = 4
                # program arrays: `values` points at function prototypes; value is a prog fd.
                elif value_size == 0:
                    value_size = 4
        key_size = numbers.get("key_size", key_size)
        value_size = numbers.get("value_size", value_size)
        if inner is not None or numbers.get("type") in (
            MAP_TYPES["array_of_maps"],
            MAP_TYPES["hash_of_maps"],
            MAP_TYPES["prog_array"],
        ):
            key_size = key_size or 4
            value_size = value_size or 4
        spec = MapSpec(
            name=name,
            type=map_type_name(numbers.get("type", 0)),
            key_size=key_size,
            value_size=value_size,
            max_entries=numbers.get("max_entries", 0),
            flags=numbers.get("map_flags", 0),
            inner=inner,
            pinning=numbers.get("pinning", 0),
            key_type=key_type,
            value_type=value_type,
            values_offset=values_offset,
        )
        return spec

    def _read_legacy_maps(self) -> None:
        section = self.elf.section("maps")
        if section is None:
            return
        symbols = [s for s in self.elf.symbols_in(section.index)]
        for index, sym in enumerate(symbols):
            end = symbols[index + 1].value if index + 1 < len(symbols) else section.size
            size = sym.size or (end - sym.value)
            raw = section.data[sym.value : sym.value + size]
            if len(raw) < 4 * len(_LEGACY_MAP_FIELDS):
                raise LoaderError(
                    f"{self.origin}: legacy map {sym.name!r} in section 'maps' is {len(raw)} "
                    "bytes, shorter than struct bpf_map_def (20 bytes)"
                )
            fields = [int.from_bytes(raw[i * 4 : i * 4 + 4], "little") for i in range(5)]
            map_type, key_size, value_size, max_entries, flags = fields
            if sym.name in self.maps:
                raise LoaderError(f"{self.origin}: two maps are named {sym.name!r}")
            spec = MapSpec(
                name=sym.name,
                type=map_type_name(map_type),
                key_size=key_size,
                value_size=value_size,
                max_entries=max_entries or 1,
                flags=flags,
                section="maps",
                legacy=True,
                symbol_index=sym.index,
            )
            self.maps[sym.name] = spec

    # -- editing ---------------------------------------------------------------------------

    def set_variables(self, values: Mapping[str, int | bool | bytes | bytearray]) -> None:
        """Set several variables at once (cilium/ebpf's ``RewriteConstants``).

        Every name is checked before anything changes: an unknown name or a value of the
        wrong size raises :class:`LoaderError` naming the variable, and nothing is set.
        """
        missing = [name for name in values if name not in self.variables]
        if missing:
            known = ", ".join(sorted(self.variables)) or "none"
            raise LoaderError(
                f"{self.origin}: no variable named {', '.join(map(repr, missing))} "
                f"(variables: {known})"
            )
        encoded = {name: self.variables[name]._encode(value) for name, value in values.items()}
        for name, raw in encoded.items():
            self.variables[name].set(raw)

    def section_data(self, section: str) -> bytes:
        """The current initial contents of a ``.rodata``/``.data``/``.bss`` section."""
        return bytes(self._section_data[section])

    def symbol(self, index: int) -> ElfSymbol:
        """An ELF symbol by index (for the normaliser)."""
        return self.elf.symbols[index]

    def load(
        self,
        programs: Iterable[str] | None = None,
        *,
        log_level: int = 0,
    ) -> Collection:
        """Load into the kernel: ``None`` loads every program, else only the named ones.

        Maps are always created. Raises :class:`LoaderError` (with libbpf's and the verifier's
        log) on failure. Needs CAP_BPF (root).
        """
        from flowkit.ebpf.loader import load_collection

        return load_collection(self, None if programs is None else list(programs), log_level)

    def __repr__(self) -> str:
        return (
            f"<CollectionSpec {self.origin}: {len(self.programs)} programs, {len(self.maps)} "
            f"maps, {len(self.variables)} variables>"
        )
