"""Names the running kernel gives to numbers flowkit records: enum values read from its BTF.

The packet-drop feature records the kernel's ``enum skb_drop_reason`` value of each drop. Its
numbering changes between kernel versions, so the names are never hard-coded: they are read
once from ``/sys/kernel/btf/vmlinux`` (the kernel's own type information) and cached.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping
from pathlib import Path

__all__ = ["VMLINUX_BTF", "btf_enum", "drop_reason_names"]

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

_HEADER = struct.Struct("<HBBIIIII")
_KIND_ENUM = 6
_KIND_ENUM64 = 19
# Bytes after the 12-byte common header: fixed part, then vlen entries of this size.
_TRAILER = {
    0: (0, 0), 1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0),
    8: (0, 0), 9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0),
    15: (0, 12), 16: (0, 0), 17: (4, 0), 18: (0, 0), 19: (0, 12),
}  # fmt: skip


def btf_enum(data: bytes, name: str) -> dict[int, str]:
    """The members (value -> name) of the enum called ``name`` in raw BTF ``data``.

    Empty when there is no such enum. Walks the type records without building them, so a whole
    vmlinux BTF is scanned in a fraction of a second.
    """
    if len(data) < _HEADER.size:
        return {}
    magic, _v, _f, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
    if magic != 0xEB9F:
        return {}
    strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
    wanted = strings.find(b"\0" + name.encode() + b"\0")
    if wanted < 0:
        return {}
    wanted += 1

    def text(offset: int) -> str:
        return strings[offset : strings.index(b"\0", offset)].decode("utf-8", "replace")

    pos, end = hdr_len + type_off, hdr_len + type_off + type_len
    unpack = struct.unpack_from
    while pos < end:
        name_off, info = unpack("<II", data, pos)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        fixed, entry = _TRAILER.get(kind, (0, 0))
        body = pos + 12 + fixed
        if name_off == wanted and kind in (_KIND_ENUM, _KIND_ENUM64):
            out: dict[int, str] = {}
            for i in range(vlen):
                if kind == _KIND_ENUM:
                    member, value = unpack("<II", data, body + 8 * i)
                else:
                    member, low, high = unpack("<III", data, body + 12 * i)
                    value = (high << 32) | low
                out[value] = text(member)
            return out
        pos = body + vlen * entry
    return {}


@functools.cache
def drop_reason_names() -> Mapping[int, str]:
    """``enum skb_drop_reason`` of the running kernel: value -> ``SKB_DROP_REASON_*`` name.

    Empty when the kernel exposes no BTF.
    """
    try:
        data = VMLINUX_BTF.read_bytes()
    except OSError:
        return {}
    return btf_enum(data, "skb_drop_reason")
