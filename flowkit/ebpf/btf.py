"""A small reader and writer for BTF, the type information in an eBPF object's ``.BTF`` section.

The loader needs BTF for three things: map definitions in ``.maps`` (libbpf's BTF-defined maps,
which encode numbers as array lengths), the types of ``.rodata``/``.data``/``.bss`` variables,
and synthesising map definitions for the legacy ``maps`` section. Types are kept as records
that can be edited and written back; type ids never change (records are only replaced or
appended), so ``.BTF.ext`` and relocations keep pointing at the right types.

Only little-endian BTF is handled (the loader rejects big-endian objects earlier).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from flowkit.ebpf.errors import LoaderError

__all__ = [
    "BTF_MAGIC",
    "Btf",
    "BtfKind",
    "BtfType",
]

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off/len, str_off/len


class BtfKind:
    """BTF kind numbers (``BTF_KIND_*``)."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# Bytes that follow the 12-byte common header: (fixed, per-vlen-entry).
_TRAILER: dict[int, tuple[int, int]] = {
    BtfKind.INT: (4, 0),
    BtfKind.PTR: (0, 0),
    BtfKind.ARRAY: (12, 0),
    BtfKind.STRUCT: (0, 12),
    BtfKind.UNION: (0, 12),
    BtfKind.ENUM: (0, 8),
    BtfKind.FWD: (0, 0),
    BtfKind.TYPEDEF: (0, 0),
    BtfKind.VOLATILE: (0, 0),
    BtfKind.CONST: (0, 0),
    BtfKind.RESTRICT: (0, 0),
    BtfKind.FUNC: (0, 0),
    BtfKind.FUNC_PROTO: (0, 8),
    BtfKind.VAR: (4, 0),
    BtfKind.DATASEC: (0, 12),
    BtfKind.FLOAT: (0, 0),
    BtfKind.DECL_TAG: (4, 0),
    BtfKind.TYPE_TAG: (0, 0),
    BtfKind.ENUM64: (0, 12),
}

_MODIFIERS = (BtfKind.TYPEDEF, BtfKind.VOLATILE, BtfKind.CONST, BtfKind.RESTRICT, BtfKind.TYPE_TAG)
_QUALIFIERS = (BtfKind.VOLATILE, BtfKind.CONST, BtfKind.RESTRICT, BtfKind.TYPE_TAG)

BTF_VAR_STATIC = 0
BTF_VAR_GLOBAL_ALLOCATED = 1


@dataclass
class BtfMember:
    """A struct/union member, enum value, function parameter or DATASEC entry (raw fields)."""

    name_off: int = 0
    type: int = 0
    offset: int = 0  # member bit offset, DATASEC offset, or enum value (low 32 bits)
    size: int = 0  # DATASEC entry size, or high 32 bits of an ENUM64 value


@dataclass
class BtfType:
    """One BTF type record. ``size_or_type`` is ``size`` or ``type`` depending on the kind."""

    kind: int
    name_off: int = 0
    vlen: int = 0
    kind_flag: bool = False
    size_or_type: int = 0
    extra: tuple[int, ...] = ()  # INT encoding, ARRAY (type, index_type, nelems), VAR linkage...
    members: list[BtfMember] = field(default_factory=list)

    def encode(self) -> bytes:
        """Serialise the record (common header + kind-specific trailer)."""
        vlen = len(self.members) if _TRAILER[self.kind][1] else self.vlen
        info = (vlen & 0xFFFF) | ((self.kind & 0x1F) << 24) | (int(self.kind_flag) << 31)
        out = bytearray(struct.pack("<III", self.name_off, info, self.size_or_type))
        if self.extra:
            out += struct.pack(f"<{len(self.extra)}I", *self.extra)
        entry = _TRAILER[self.kind][1]
        for m in self.members:
            if self.kind in (BtfKind.STRUCT, BtfKind.UNION, BtfKind.DATASEC):
                first, second, third = (
                    (m.name_off, m.type, m.offset)
                    if self.kind != BtfKind.DATASEC
                    else (m.type, m.offset, m.size)
                )
                out += struct.pack("<III", first, second, third)
            elif self.kind == BtfKind.ENUM:
                out += struct.pack("<Ii", m.name_off, _signed32(m.offset))
            elif self.kind == BtfKind.ENUM64:
                out += struct.pack("<III", m.name_off, m.offset, m.size)
            elif entry == 8:  # FUNC_PROTO
                out += struct.pack("<II", m.name_off, m.type)
        return bytes(out)


def _signed32(value: int) -> int:
    return value - (1 << 32) if value >= (1 << 31) else value


class Btf:
    """The types and strings of a ``.BTF`` section; type id N is ``types[N]`` (0 is void)."""

    def __init__(self, types: list[BtfType] | None = None, strings: bytes = b"\0") -> None:
        self.types: list[BtfType] = [BtfType(BtfKind.UNKN)] if types is None else types
        self.strings = bytearray(strings if strings else b"\0")
        self.version = 1
        self.flags = 0
        self._string_index: dict[bytes, int] | None = None

    # -- reading -------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes) -> Btf:
        """Parse a ``.BTF`` section; raise :class:`LoaderError` if it is malformed."""
        if len(data) < _HEADER.size:
            raise LoaderError(".BTF section is truncated")
        magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(
            data
        )
        if magic != BTF_MAGIC:
            if magic == 0x9FEB:
                raise LoaderError(".BTF is big-endian: load the little-endian (bpfel) object")
            raise LoaderError(f".BTF has a bad magic number {magic:#x}")
        types_start = hdr_len + type_off
        strings_start = hdr_len + str_off
        if types_start + type_len > len(data) or strings_start + str_len > len(data):
            raise LoaderError(".BTF section is truncated")
        btf = cls(strings=bytes(data[strings_start : strings_start + str_len]))
        btf.version, btf.flags = version, flags
        pos, end = types_start, types_start + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            if kind not in _TRAILER:
                raise LoaderError(f".BTF type {len(btf.types)} has unknown kind {kind}")
            fixed, entry = _TRAILER[kind]
            extra: tuple[int, ...] = ()
            if fixed:
                extra = struct.unpack_from(f"<{fixed // 4}I", data, pos)
                pos += fixed
            members: list[BtfMember] = []
            for _ in range(vlen if entry else 0):
                if entry == 12:
                    a, b, c = struct.unpack_from("<III", data, pos)
                    if kind == BtfKind.DATASEC:
                        members.append(BtfMember(type=a, offset=b, size=c))
                    elif kind == BtfKind.ENUM64:
                        members.append(BtfMember(name_off=a, offset=b, size=c))
                    else:
                        members.append(BtfMember(name_off=a, type=b, offset=c))
                else:
                    a, b = struct.unpack_from("<II", data, pos)
                    if kind == BtfKind.ENUM:
                        members.append(BtfMember(name_off=a, offset=b))
                    else:
                        members.append(BtfMember(name_off=a, type=b))
                pos += entry
            btf.types.append(
                BtfType(
                    kind=kind,
                    name_off=name_off,
                    vlen=vlen,
                    kind_flag=bool(info >> 31),
                    size_or_type=size_or_type,
                    extra=extra,
                    members=members,
                )
            )
        if pos != end:
            raise LoaderError(".BTF type section ends inside a type record")
        return btf

    def name(self, name_off: int) -> str:
        """The string at ``name_off`` in the string section."""
        if name_off >= len(self.strings):
            return ""
        end = self.strings.find(b"\0", name_off)
        return self.strings[name_off : end if end >= 0 else len(self.strings)].decode(
            "utf-8", "replace"
        )

    def type_name(self, type_id: int) -> str:
        """The name of a type (may be empty for anonymous types)."""
        return self.name(self.types[type_id].name_off) if 0 < type_id < len(self.types) else ""

    def find(self, kind: int, name: str) -> int | None:
        """The id of the first type of ``kind`` named ``name``, or ``None``."""
        for type_id, t in enumerate(self.types):
            if t.kind == kind and type_id and self.name(t.name_off) == name:
                return type_id
        return None

    def skip_modifiers(self, type_id: int, *, typedefs: bool = True) -> int:
        """Follow const/volatile/restrict/type tags (and typedefs) to the underlying type."""
        kinds = _MODIFIERS if typedefs else _QUALIFIERS
        seen = 0
        while 0 < type_id < len(self.types) and self.types[type_id].kind in kinds:
            type_id = self.types[type_id].size_or_type
            seen += 1
            if seen > 64:
                raise LoaderError("BTF type chain loops")
        return type_id

    def size_of(self, type_id: int) -> int:
        """The size in bytes of a type, as the C compiler laid it out."""
        for _ in range(64):
            if type_id == 0 or type_id >= len(self.types):
                return 0
            t = self.types[type_id]
            if t.kind in (
                BtfKind.INT,
                BtfKind.STRUCT,
                BtfKind.UNION,
                BtfKind.ENUM,
                BtfKind.ENUM64,
                BtfKind.FLOAT,
                BtfKind.DATASEC,
            ):
                return t.size_or_type
            if t.kind == BtfKind.PTR:
                return 8
            if t.kind == BtfKind.ARRAY:
                return t.extra[2] * self.size_of(t.extra[0])
            if t.kind in (*_MODIFIERS, BtfKind.VAR):
                type_id = t.size_or_type
                continue
            return 0
        raise LoaderError("BTF type chain loops")

    def describe(self, type_id: int) -> str:
        """A C-like name for a type without qualifiers: ``__u32``, ``struct key``, ``u8[16]``."""
        type_id = self.skip_modifiers(type_id, typedefs=False)
        if type_id == 0 or type_id >= len(self.types):
            return "void"
        t = self.types[type_id]
        name = self.name(t.name_off)
        if t.kind == BtfKind.ARRAY:
            return f"{self.describe(t.extra[0])}[{t.extra[2]}]"
        if t.kind == BtfKind.PTR:
            return f"{self.describe(t.size_or_type)} *"
        if t.kind in (BtfKind.STRUCT, BtfKind.UNION, BtfKind.ENUM, BtfKind.ENUM64, BtfKind.FWD):
            prefix = {BtfKind.STRUCT: "struct", BtfKind.UNION: "union", BtfKind.FWD: "struct"}.get(
                t.kind, "enum"
            )
            return f"{prefix} {name}" if name else f"{prefix} <anon>"
        return name or f"<type {type_id}>"

    def datasec_vars(self, section: str) -> dict[str, tuple[int, int, int]]:
        """Variables of a DATASEC: name -> (VAR type id, offset, size) as recorded in BTF."""
        sec_id = self.find(BtfKind.DATASEC, section)
        if sec_id is None:
            return {}
        out: dict[str, tuple[int, int, int]] = {}
        for entry in self.types[sec_id].members:
            if 0 < entry.type < len(self.types):
                var = self.types[entry.type]
                out[self.name(var.name_off)] = (entry.type, entry.offset, entry.size)
        return out

    def array_length(self, type_id: int) -> int | None:
        """For libbpf's ``__uint(name, N)`` encoding (pointer to ``int[N]``): N, else ``None``."""
        ptr = self.types[type_id] if 0 < type_id < len(self.types) else None
        if ptr is None or ptr.kind != BtfKind.PTR:
            return None
        arr_id = self.skip_modifiers(ptr.size_or_type)
        arr = self.types[arr_id] if 0 < arr_id < len(self.types) else None
        if arr is None or arr.kind != BtfKind.ARRAY:
            return None
        return arr.extra[2]

    # -- writing -------------------------------------------------------------------------

    def add_string(self, text: str) -> int:
        """Offset of ``text`` in the string section, appending it when absent."""
        raw = text.encode()
        if not raw:
            return 0
        if self._string_index is None:
            self._string_index = {}
            pos = 0
            for chunk in bytes(self.strings).split(b"\0"):
                self._string_index.setdefault(chunk, pos)
                pos += len(chunk) + 1
        found = self._string_index.get(raw)
        if found is not None:
            return found
        offset = len(self.strings)
        self.strings += raw + b"\0"
        self._string_index[raw] = offset
        return offset

    def add(self, t: BtfType) -> int:
        """Append a type and return its id."""
        self.types.append(t)
        return len(self.types) - 1

    def add_int(self, name: str = "int", size: int = 4, signed: bool = True) -> int:
        """Append an integer type."""
        encoding = (1 if signed else 0) << 24 | (size * 8)
        return self.add(
            BtfType(BtfKind.INT, self.add_string(name), size_or_type=size, extra=(encoding,))
        )

    def add_number_pointer(self, value: int, int_id: int) -> int:
        """libbpf's ``__uint`` encoding: a pointer to ``int[value]``; returns the pointer id."""
        arr = self.add(BtfType(BtfKind.ARRAY, extra=(int_id, int_id, value)))
        return self.add(BtfType(BtfKind.PTR, size_or_type=arr))

    def encode(self) -> bytes:
        """Serialise header, types and strings."""
        types = b"".join(t.encode() for t in self.types[1:])
        strings = bytes(self.strings)
        header = _HEADER.pack(
            BTF_MAGIC,
            self.version,
            self.flags,
            _HEADER.size,
            0,
            len(types),
            len(types),
            len(strings),
        )
        return header + types + strings
