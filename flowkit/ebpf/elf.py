"""Reading and rewriting relocatable eBPF ELF objects.

:class:`ElfObject` holds an object's sections, symbols and relocations in a form that can be
edited and written back with :meth:`ElfObject.write`. pyelftools validates the file and reads
section names and contents; the symbol table and relocations are decoded here because the
loader rewrites them (flipping the binding of static programs, moving legacy map symbols).

Section indices never change while editing: symbols and relocation sections refer to sections
by index, so sections are only renamed, given new contents, or appended at the end.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field, replace

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from flowkit.ebpf.btf import Btf
from flowkit.ebpf.errors import LoaderError

__all__ = [
    "SHF_ALLOC",
    "SHF_EXECINSTR",
    "SHF_WRITE",
    "SHT_NOBITS",
    "SHT_PROGBITS",
    "SHT_REL",
    "SHT_SYMTAB",
    "STB_GLOBAL",
    "STB_LOCAL",
    "STB_WEAK",
    "STT_FUNC",
    "STT_OBJECT",
    "STT_SECTION",
    "ElfObject",
    "ElfSection",
    "ElfSymbol",
    "Relocation",
]

EM_BPF = 247
ET_REL = 1

SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_NOBITS = 8
SHT_REL = 9

SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4

STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2

STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_REL = struct.Struct("<QQ")


@dataclass
class ElfSection:
    """One section: header fields plus contents (``data`` is empty for SHT_NOBITS)."""

    index: int
    name: str
    sh_type: int
    flags: int
    addr: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int
    data: bytes = b""

    @property
    def is_program(self) -> bool:
        """Executable code outside ``.text`` (``.text`` holds sub-programs only)."""
        return (
            self.sh_type == SHT_PROGBITS
            and bool(self.flags & SHF_EXECINSTR)
            and self.size > 0
            and self.name != ".text"
        )


@dataclass
class ElfSymbol:
    """One ``.symtab`` entry (``name`` decoded from ``.strtab``)."""

    index: int
    name: str
    st_name: int
    bind: int
    type: int
    other: int
    shndx: int
    value: int
    size: int

    def encode(self) -> bytes:
        """The 24-byte ``Elf64_Sym``."""
        return _SYM.pack(
            self.st_name,
            (self.bind << 4) | (self.type & 0xF),
            self.other,
            self.shndx,
            self.value,
            self.size,
        )


@dataclass(frozen=True)
class Relocation:
    """A ``SHT_REL`` entry: patch ``offset`` of the target section with symbol ``symbol``."""

    offset: int
    symbol: int
    type: int


@dataclass
class ElfObject:
    """A relocatable little-endian eBPF object, editable in memory."""

    ident: bytes
    e_type: int
    e_machine: int
    e_version: int
    e_flags: int
    shstrndx: int
    sections: list[ElfSection]
    symbols: list[ElfSymbol] = field(default_factory=list)
    symtab_index: int = 0
    relocations: dict[int, list[Relocation]] = field(default_factory=dict)
    btf: Btf | None = None

    # -- reading -------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes, origin: str = "<bytes>") -> ElfObject:
        """Parse an eBPF object; :class:`LoaderError` says why a file is not one."""
        if data[:4] != b"\x7fELF":
            raise LoaderError(f"{origin}: not an ELF file (no ELF magic number)")
        try:
            elf = ELFFile(io.BytesIO(data))
            if elf.elfclass != 64:
                raise LoaderError(f"{origin}: 32-bit ELF file, eBPF objects are 64-bit")
            if not elf.little_endian:
                raise LoaderError(
                    f"{origin}: big-endian eBPF object; load the little-endian (bpfel) build"
                )
            header = elf.header
            raw_header = _EHDR.unpack_from(data, 0)
            e_type, e_machine = raw_header[1], raw_header[2]
            if e_machine != EM_BPF:
                raise LoaderError(
                    f"{origin}: ELF machine is {header['e_machine']}, not EM_BPF: "
                    "this is not an eBPF object"
                )
            if e_type != ET_REL:
                raise LoaderError(
                    f"{origin}: ELF type is {header['e_type']}, eBPF objects are relocatable"
                )
            shoff, shentsize = header["e_shoff"], header["e_shentsize"]
            sections: list[ElfSection] = []
            for index, section in enumerate(elf.iter_sections()):
                (_, sh_type, flags, addr, _off, size, link, info, align, entsize) = (
                    _SHDR.unpack_from(data, shoff + index * shentsize)
                )
                contents = b"" if sh_type == SHT_NOBITS or index == 0 else section.data()
                sections.append(
                    ElfSection(
                        index=index,
                        name=section.name,
                        sh_type=sh_type,
                        flags=flags,
                        addr=addr,
                        size=size,
                        link=link,
                        info=info,
                        addralign=align,
                        entsize=entsize,
                        data=bytes(contents),
                    )
                )
        except ELFError as exc:
            raise LoaderError(f"{origin}: malformed ELF file: {exc}") from exc
        except struct.error as exc:
            raise LoaderError(f"{origin}: truncated ELF file") from exc
        obj = cls(
            ident=bytes(raw_header[0]),
            e_type=e_type,
            e_machine=e_machine,
            e_version=raw_header[3],
            e_flags=raw_header[7],
            shstrndx=raw_header[13],
            sections=sections,
        )
        obj._read_symbols(origin)
        obj._read_relocations()
        btf_section = obj.section(".BTF")
        if btf_section is not None:
            obj.btf = Btf.parse(btf_section.data)
        return obj

    def _read_symbols(self, origin: str) -> None:
        symtabs = [s for s in self.sections if s.sh_type == SHT_SYMTAB]
        if not symtabs:
            raise LoaderError(f"{origin}: the object has no symbol table")
        symtab = symtabs[0]
        self.symtab_index = symtab.index
        strtab = self.sections[symtab.link].data if symtab.link < len(self.sections) else b""
        for index in range(len(symtab.data) // _SYM.size):
            st_name, st_info, st_other, shndx, value, size = _SYM.unpack_from(
                symtab.data, index * _SYM.size
            )
            end = strtab.find(b"\0", st_name)
            name = strtab[st_name : end if end >= 0 else len(strtab)].decode("utf-8", "replace")
            self.symbols.append(
                ElfSymbol(
                    index, name, st_name, st_info >> 4, st_info & 0xF, st_other, shndx, value, size
                )
            )

    def _read_relocations(self) -> None:
        for section in self.sections:
            if section.sh_type != SHT_REL or section.link != self.symtab_index:
                continue
            entries = self.relocations.setdefault(section.info, [])
            for pos in range(0, len(section.data) - _REL.size + 1, _REL.size):
                offset, info = _REL.unpack_from(section.data, pos)
                entries.append(Relocation(offset, info >> 32, info & 0xFFFFFFFF))

    # -- queries -------------------------------------------------------------------------

    def section(self, name: str) -> ElfSection | None:
        """The first section called ``name``."""
        for section in self.sections:
            if section.name == name:
                return section
        return None

    def symbols_in(self, section_index: int) -> list[ElfSymbol]:
        """Named, non-section symbols defined in a section, by offset."""
        found = [
            s
            for s in self.symbols
            if s.shndx == section_index and s.type != STT_SECTION and s.name and s.index
        ]
        return sorted(found, key=lambda s: (s.value, s.index))

    def copy(self) -> ElfObject:
        """A deep enough copy to edit without touching this object."""
        return replace(
            self,
            sections=[replace(s) for s in self.sections],
            symbols=[replace(s) for s in self.symbols],
            relocations={k: list(v) for k, v in self.relocations.items()},
            btf=Btf.parse(self.btf.encode()) if self.btf is not None else None,
        )

    # -- writing -------------------------------------------------------------------------

    def add_section(self, name: str, sh_type: int, flags: int, data: bytes, align: int) -> int:
        """Append a section and return its index."""
        index = len(self.sections)
        self.sections.append(
            ElfSection(index, name, sh_type, flags, 0, len(data), 0, 0, align, 0, data)
        )
        return index

    def write(self) -> bytes:
        """Serialise: ELF header, section contents, a fresh ``.shstrtab``, section headers.

        The symbol table is re-encoded from :attr:`symbols` and ``.BTF`` from :attr:`btf`.
        """
        sections = [replace(s) for s in self.sections]
        symtab = sections[self.symtab_index]
        symtab.data = b"".join(sym.encode() for sym in self.symbols)
        if self.btf is not None:
            btf = next((s for s in sections if s.name == ".BTF"), None)
            if btf is not None:
                btf.data = self.btf.encode()
        # clang shares one string table between section and symbol names: keep every existing
        # string where it is and append only names that are new.
        shstrtab = sections[self.shstrndx]
        names = bytearray(shstrtab.data or b"\0")
        name_offsets: list[int] = []
        for section in sections:
            raw = section.name.encode() + b"\0"
            if not section.name:
                name_offsets.append(0)
                continue
            found = names.find(raw)  # a suffix of a longer string is a valid offset too
            if found < 0:
                found = len(names)
                names += raw
            name_offsets.append(found)
        shstrtab.data = bytes(names)

        out = bytearray(_EHDR.size)
        offsets: list[int] = []
        for section in sections:
            if section.index == 0 or section.sh_type == SHT_NOBITS:
                offsets.append(len(out) if section.index else 0)
                continue
            section.size = len(section.data)
            align = max(section.addralign, 1)
            out += b"\0" * (-len(out) % align)
            offsets.append(len(out))
            out += section.data
        out += b"\0" * (-len(out) % 8)
        shoff = len(out)
        for section, name_offset, offset in zip(sections, name_offsets, offsets, strict=True):
            if section.index == 0:
                out += b"\0" * _SHDR.size
                continue
            out += _SHDR.pack(
                name_offset,
                section.sh_type,
                section.flags,
                section.addr,
                offset,
                section.size,
                section.link,
                section.info,
                section.addralign,
                section.entsize,
            )
        _EHDR.pack_into(
            out,
            0,
            self.ident,
            self.e_type,
            self.e_machine,
            self.e_version,
            0,
            0,
            shoff,
            self.e_flags,
            _EHDR.size,
            0,
            0,
            _SHDR.size,
            len(sections),
            self.shstrndx,
        )
        return bytes(out)
