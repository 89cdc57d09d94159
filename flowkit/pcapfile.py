"""Reading pcap and pcapng captures frame by frame, with errors that name the frame.

Only what offline replay needs: each frame's capture time (unix ns), original length, captured
bytes, the capture interface and, when the file records it (pcapng ``epb_flags``), the direction.
Both byte orders, microsecond and nanosecond pcap, pcapng ``if_tsresol`` / ``if_tsoffset``,
Enhanced, Simple and (obsolete) Packet Blocks. Unknown pcapng blocks are skipped.

A file that ends inside a record, or whose record lengths make no sense, raises
:class:`CaptureError` naming the frame (1-based, as Wireshark numbers them) and its byte offset;
every frame before it has already been yielded.
"""

from __future__ import annotations

import struct
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

__all__ = ["LINKTYPE_ETHERNET", "CaptureError", "CaptureInterface", "Frame", "read_capture"]

LINKTYPE_ETHERNET = 1
LINKTYPE_NAMES = {0: "NULL", 1: "ETHERNET", 101: "RAW", 113: "LINUX_SLL", 276: "LINUX_SLL2"}

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000),  # microseconds, little endian
    b"\xa1\xb2\xc3\xd4": (">", 1_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
_PCAPNG_SHB = 0x0A0D0D0A
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_MAX_RECORD = 1 << 28  # a frame record larger than 256 MiB is a corrupt length

INBOUND, OUTBOUND = 0, 1


class CaptureError(ValueError):
    """A capture file cannot be read further. ``frame`` is the 1-based number of the frame that
    could not be read (0 for the file header), ``offset`` its byte offset in the file."""

    def __init__(self, path: str, frame: int, offset: int, reason: str) -> None:
        where = "file header" if frame == 0 else f"frame {frame}"
        super().__init__(f"{path}: {where} (byte offset {offset}): {reason}")
        self.path = path
        self.frame = frame
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class CaptureInterface:
    """An interface of the capture (pcap files have one, number 0)."""

    number: int
    linktype: int
    name: str = ""
    ts_unit_ns: float = 1000.0  # nanoseconds per timestamp unit
    ts_offset_s: int = 0


class Frame(NamedTuple):
    """One captured frame (a named tuple: cheap to make for every frame of a file)."""

    number: int  # 1-based, in file order
    time_ns: int  # unix nanoseconds
    orig_len: int  # length on the wire (the frame may have been captured shorter)
    data: bytes
    interface: int  # capture interface number
    direction: int | None = None  # INBOUND, OUTBOUND or None when the file does not say


@dataclass
class _State:
    path: str
    stream: BinaryIO
    offset: int = 0
    frame: int = 0  # frames read so far
    interfaces: list[CaptureInterface] = field(default_factory=list)

    reading: int = 0  # the frame being read (0: the file header)
    record_start: int = 0  # byte offset of its record or block

    def read(self, n: int, what: str) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise CaptureError(self.path, self.reading, self.record_start,
                               f"truncated {what}: {n} bytes expected, {len(data)} left")
        self.offset += n
        return data


def read_capture(path: str | Path, interfaces: list[CaptureInterface] | None = None
                 ) -> Generator[Frame, None, None]:
    """Yield the frames of a pcap or pcapng file in file order.

    ``interfaces``, if given, is filled with the capture's interfaces as they are declared.
    """
    name = str(path)
    with open(path, "rb") as stream:
        state = _State(name, stream, interfaces=interfaces if interfaces is not None else [])
        magic = stream.read(4)
        stream.seek(0)
        if len(magic) < 4:
            raise CaptureError(name, 0, 0, "not a pcap or pcapng file (shorter than 4 bytes)")
        if magic in _PCAP_MAGIC:
            yield from _read_pcap(state)
        elif struct.unpack("<I", magic)[0] == _PCAPNG_SHB:
            yield from _read_pcapng(state)
        else:
            raise CaptureError(name, 0, 0, f"not a pcap or pcapng file (magic {magic.hex()})")


def _read_pcap(state: _State) -> Iterator[Frame]:
    header = state.read(24, "pcap file header")
    order, unit = _PCAP_MAGIC[header[:4]]
    _major, _minor, _zone, _sigfigs, snaplen, linktype = struct.unpack(order + "HHiIII",
                                                                        header[4:])
    state.interfaces.append(CaptureInterface(0, linktype & 0x0FFFFFFF, "", float(unit)))
    record = struct.Struct(order + "IIII")
    while True:
        state.frame += 1
        state.reading = state.frame
        start = state.record_start = state.offset
        head = state.stream.read(16)
        if not head:
            return
        if len(head) < 16:
            raise CaptureError(state.path, state.frame, start,
                               f"truncated record header: 16 bytes expected, {len(head)} left")
        state.offset += 16
        seconds, fraction, caplen, orig_len = record.unpack(head)
        if caplen > _MAX_RECORD or (snaplen and caplen > max(snaplen, 262144)):
            raise CaptureError(state.path, state.frame, start,
                               f"captured length {caplen} exceeds the snapshot length {snaplen}")
        data = state.read(caplen, f"frame data ({caplen} bytes announced)")
        yield Frame(state.frame, seconds * 1_000_000_000 + fraction * unit, max(orig_len, caplen),
                    data, 0)


def _read_pcapng(state: _State) -> Iterator[Frame]:
    order = "<"
    section_interfaces: list[CaptureInterface] = []
    while True:
        start = state.record_start = state.offset
        # a block that breaks stops the replay before the next frame (0: the file header)
        state.reading = state.frame + 1 if start else 0
        head = state.stream.read(8)
        if not head:
            return
        if len(head) < 8:
            raise CaptureError(state.path, state.frame + 1, start,
                               f"truncated block header: 8 bytes expected, {len(head)} left")
        state.offset += 8
        block_type = struct.unpack("<I", head[:4])[0]
        if block_type == _PCAPNG_SHB:
            bom = state.read(4, "section header")
            order = "<" if struct.unpack("<I", bom)[0] == _BYTE_ORDER_MAGIC else ">"
            if struct.unpack(order + "I", bom)[0] != _BYTE_ORDER_MAGIC:
                raise CaptureError(state.path, state.frame + 1, start, "bad byte-order magic")
            length = struct.unpack(order + "I", head[4:])[0]
            body = bom + state.read(_body_length(state, length, start, 12) - 4, "section header")
            section_interfaces = []
        else:
            length = struct.unpack(order + "I", head[4:])[0]
            body = state.read(_body_length(state, length, start, 12), "block")
        trailer = state.read(4, "block trailer")
        if struct.unpack(order + "I", trailer)[0] != length:
            raise CaptureError(state.path, state.frame + 1, start,
                               "block trailer length differs from its header (corrupt block)")
        if block_type == 1:  # Interface Description Block
            interface = _interface(order, body, len(section_interfaces))
            section_interfaces.append(interface)
            state.interfaces.append(interface)
        elif block_type in (6, 3, 2):  # Enhanced, Simple, obsolete Packet Block
            state.frame += 1
            yield _packet(state, order, block_type, body, section_interfaces, start)


def _body_length(state: _State, length: int, start: int, overhead: int) -> int:
    if length < overhead or length % 4 or length > _MAX_RECORD:
        raise CaptureError(state.path, state.frame + 1, start, f"bad block length {length}")
    return length - overhead


def _options(order: str, data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(data):
        code, length = struct.unpack_from(order + "HH", data, pos)
        if code == 0:
            return
        yield code, data[pos + 4:pos + 4 + length]
        pos += 4 + ((length + 3) & ~3)


def _interface(order: str, body: bytes, number: int) -> CaptureInterface:
    linktype, _reserved, _snaplen = struct.unpack_from(order + "HHI", body)
    name, unit, offset = "", 1000.0, 0
    for code, value in _options(order, body[8:]):
        if code == 2:  # if_name
            name = value.rstrip(b"\0").decode("utf-8", "replace")
        elif code == 9 and value:  # if_tsresol
            exponent = value[0] & 0x7F
            seconds_per_unit = 2.0 ** -exponent if value[0] & 0x80 else 10.0 ** -exponent
            unit = seconds_per_unit * 1e9
        elif code == 14 and len(value) == 8:  # if_tsoffset
            offset = struct.unpack(order + "q", value)[0]
    return CaptureInterface(number, linktype, name, unit, offset)


def _packet(state: _State, order: str, block_type: int, body: bytes,
            interfaces: list[CaptureInterface], start: int) -> Frame:
    def fail(reason: str) -> CaptureError:
        return CaptureError(state.path, state.frame, start, reason)

    direction = None
    if block_type == 3:  # Simple Packet Block: interface 0, no time
        if len(body) < 4:
            raise fail("simple packet block too short")
        orig_len = struct.unpack_from(order + "I", body)[0]
        caplen = min(orig_len, len(body) - 4)
        iface, when, data = 0, 0, body[4:4 + caplen]
    else:
        if len(body) < 20:
            raise fail("packet block too short")
        if block_type == 6:
            iface, high, low, caplen, orig_len = struct.unpack_from(order + "IIIII", body)
        else:
            iface, _drops, high, low, caplen, orig_len = struct.unpack_from(order + "HHIIII",
                                                                           body)
        if caplen > len(body) - 20:
            raise fail(f"captured length {caplen} exceeds the block ({len(body) - 20} bytes)")
        data = body[20:20 + caplen]
        when = (high << 32) | low
        options = body[20 + ((caplen + 3) & ~3):]
        for code, value in _options(order, options):
            if code == 2 and len(value) == 4 and block_type == 6:  # epb_flags
                bits = struct.unpack(order + "I", value)[0] & 0x3
                direction = {1: INBOUND, 2: OUTBOUND}.get(bits)
    if iface >= len(interfaces):
        raise fail(f"refers to interface {iface}, but the section declares {len(interfaces)}")
    info = interfaces[iface]
    if info.ts_unit_ns == 1000.0:
        time_ns = when * 1000
    elif info.ts_unit_ns == 1.0:
        time_ns = when
    else:
        time_ns = round(when * info.ts_unit_ns)
    time_ns += info.ts_offset_s * 1_000_000_000
    return Frame(state.frame, time_ns, max(orig_len, len(data)), data, info.number, direction)
