"""Capture every frame of one interface to a pcapng file: ``python pcapng_capture.py IFNAME OUT``.

Run inside a namespace. An AF_PACKET socket sees each skb as tc does (same length, GSO frames
whole); each frame is written as an Enhanced Packet Block with its direction in ``epb_flags``
(inbound / outbound, from the socket's packet type), under one interface named IFNAME with
nanosecond timestamps. Prints ``{"ready": true}`` once capturing, stops when stdin closes, then
prints ``{"frames": N, "largest": BYTES}``.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003


def block(block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def main(ifname: str, out_path: str) -> None:
    frames = largest = 0
    buf = bytearray(1 << 18)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock, \
            open(out_path, "wb") as out:
        sock.bind((ifname, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        out.write(block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
        idb_options = option(2, ifname.encode()) + option(9, bytes([9])) + option(0, b"")
        out.write(block(1, struct.pack("<HHI", 1, 0, 0) + idb_options))
        print(json.dumps({"ready": True}), flush=True)
        while True:
            ready, _, _ = select.select([sock, sys.stdin], [], [], 0.5)
            if sock in ready:
                n, addr = sock.recvfrom_into(buf, 0, socket.MSG_TRUNC)
                now = time.time_ns()
                data = bytes(buf[:min(n, len(buf))])
                flags = 2 if addr[2] == socket.PACKET_OUTGOING else 1
                body = struct.pack("<IIIII", 0, now >> 32, now & 0xFFFFFFFF, len(data), n)
                body += data + b"\0" * (-len(data) % 4)
                body += option(2, struct.pack("<I", flags)) + option(0, b"")
                out.write(block(6, body))
                frames += 1
                largest = max(largest, n)
                continue  # drain the socket before looking at stdin again
            if sys.stdin in ready and not sys.stdin.readline():
                break
    print(json.dumps({"frames": frames, "largest": largest}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
