"""The capture reader: pcap and pcapng variants, and errors that name the frame."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from flowkit.pcapfile import INBOUND, OUTBOUND, CaptureError, CaptureInterface, read_capture

FRAME = bytes(range(60))


def pcap(order: str = "<", nanos: bool = False, frames: int = 3, linktype: int = 1) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for i in range(frames):
        out += struct.pack(order + "IIII", 1_796_000_000 + i, 250 + i, len(FRAME), 1500)
        out += FRAME
    return out


def block(block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", block_type, len(body) + 12) + body + struct.pack("<I",
                                                                             len(body) + 12)


def option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def pcapng(flags: list[int | None], tsresol: int | None = None) -> bytes:
    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = option(2, b"veth7")
    if tsresol is not None:
        opts += option(9, bytes([tsresol]))
    out += block(1, struct.pack("<HHI", 1, 0, 0) + opts + option(0, b""))
    for i, flag in enumerate(flags):
        ts = 1_796_000_000_000_000 + i  # microseconds unless tsresol says otherwise
        body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(FRAME), 9000)
        body += FRAME + b"\0" * (-len(FRAME) % 4)
        if flag is not None:
            body += option(2, struct.pack("<I", flag)) + option(0, b"")
        out += block(6, body)
    return out


def numbers_until_error(path: Path, seen: list[int]) -> None:
    for frame in read_capture(path):
        seen.append(frame.number)


def write(tmp_path: Path, data: bytes, name: str = "c.pcap") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("order", "nanos"), [("<", False), (">", False), ("<", True),
                                              (">", True)])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, order: str, nanos: bool) -> None:
    frames = list(read_capture(write(tmp_path, pcap(order, nanos))))
    assert [f.number for f in frames] == [1, 2, 3]
    unit = 1 if nanos else 1000
    assert frames[1].time_ns == (1_796_000_001) * 10**9 + 251 * unit
    assert (frames[0].orig_len, frames[0].data, frames[0].direction) == (1500, FRAME, None)


def test_pcapng_directions_names_and_resolution(tmp_path: Path) -> None:
    interfaces: list[CaptureInterface] = []
    frames = list(read_capture(write(tmp_path, pcapng([1, 2, None], tsresol=9)), interfaces))
    assert [f.direction for f in frames] == [INBOUND, OUTBOUND, None]
    assert interfaces == [CaptureInterface(0, 1, "veth7", 1.0, 0)]
    assert frames[2].time_ns == 1_796_000_000_000_000 + 2  # nanosecond units
    assert frames[0].orig_len == 9000


def test_pcapng_default_resolution_is_microseconds(tmp_path: Path) -> None:
    (frame,) = read_capture(write(tmp_path, pcapng([None])))
    assert frame.time_ns == 1_796_000_000_000_000 * 1000


def test_truncated_pcap_names_the_frame_after_yielding_the_earlier_ones(tmp_path: Path) -> None:
    data = pcap(frames=3)
    path = write(tmp_path, data[:-10])
    seen: list[int] = []
    with pytest.raises(CaptureError, match=r"frame 3 \(byte offset 176\): truncated") as info:
        numbers_until_error(path, seen)
    assert seen == [1, 2]
    assert (info.value.frame, info.value.offset) == (3, 176)


def test_truncated_pcapng_block_names_the_frame(tmp_path: Path) -> None:
    data = pcapng([1, 1, 1])
    seen: list[int] = []
    with pytest.raises(CaptureError, match="frame 3 "):
        numbers_until_error(write(tmp_path, data[:-30]), seen)
    assert seen == [1, 2]


def test_corrupt_block_length(tmp_path: Path) -> None:
    data = bytearray(pcapng([1, 1]))
    second = len(data) - len(block(6, b"\0" * 20 + FRAME + option(2, b"\0" * 4) +
                                   option(0, b"")))
    data[second + 4:second + 8] = struct.pack("<I", 7)  # not a multiple of 4
    with pytest.raises(CaptureError, match=r"frame 2 .*bad block length 7"):
        list(read_capture(write(tmp_path, bytes(data))))


def test_not_a_capture(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"file header .* not a pcap or pcapng file"):
        list(read_capture(write(tmp_path, b"GIF89a and more")))


def test_captured_length_beyond_the_snapshot_length(tmp_path: Path) -> None:
    data = bytearray(pcap(frames=2))
    struct.pack_into("<I", data, 24 + 16 + len(FRAME) + 8, 10**6)
    with pytest.raises(CaptureError, match=r"frame 2 .*exceeds the snapshot length"):
        list(read_capture(write(tmp_path, bytes(data))))
