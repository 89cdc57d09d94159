"""Send one UDP flow at a fixed packet rate through an AF_PACKET TX ring, as trafgen does.

The frames take the path trafgen's take (``PACKET_TX_RING``, ``PACKET_QDISC_BYPASS``): the kernel
builds each skb with only the Ethernet header in its linear area and the rest as page fragments
of the ring, so that an observer on the receiving end of a veth sees the same non-linear frames
as with trafgen. Unlike trafgen at full speed, the rate is fixed: every ``--tick`` seconds the
frames due since the start are marked for sending and flushed with one ``send``, so a slower
or faster observer does not change how many packets the host handles per second.

Run inside the sending namespace::

    python bench/paced_sender.py --dev veth0 --rate 100000 --dst-mac .. --src-mac .. \\
        --src-ip 198.18.0.1 --dst-ip 198.18.0.2

It sends until SIGINT/SIGTERM, then prints ``{"sent": N, "behind": M}`` (frames sent; ticks
at which the ring had no free frame for every frame due, which would mean the rate was not
held) on standard output.
"""

from __future__ import annotations

import argparse
import json
import mmap
import signal
import socket
import struct
import sys
import time
from typing import Any

import numpy as np

SOL_PACKET = 263
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_QDISC_BYPASS = 20
TPACKET_V2 = 1
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
# TPACKET2_HDRLEN - sizeof(struct sockaddr_ll): where a TX frame's data starts in its slot.
TX_DATA_OFFSET = 32
FRAME_SIZE = 256
BLOCK_SIZE = 4096
BLOCKS = 64
FRAMES = BLOCKS * BLOCK_SIZE // FRAME_SIZE
MSG_DONTWAIT = 0x40


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(dst_mac: str, src_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int,
              payload: int) -> bytes:
    """Ethernet + IPv4 + UDP (both checksums set) with ``payload`` zero bytes."""
    src, dst = socket.inet_aton(src_ip), socket.inet_aton(dst_ip)
    body = b"\0" * payload
    udp_len = 8 + payload
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + body
    udp_sum = _checksum(pseudo + udp) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, udp_len, udp_sum) + body
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64,
                     socket.IPPROTO_UDP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    return eth + b"\x08\x00" + ip + udp


class TxRing:
    """A TPACKET_V2 TX ring bound to one interface, every slot holding the same frame."""

    def __init__(self, dev: str, frame: bytes) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        self.sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        self.sock.setsockopt(SOL_PACKET, PACKET_TX_RING,
                             struct.pack("IIII", BLOCK_SIZE, BLOCKS, FRAME_SIZE, FRAMES))
        self.sock.bind((dev, 0))
        self.ring = mmap.mmap(self.sock.fileno(), BLOCK_SIZE * BLOCKS)
        for slot in range(FRAMES):
            base = slot * FRAME_SIZE
            # struct tpacket2_hdr: tp_status, tp_len, tp_snaplen, then offsets and times.
            self.ring[base:base + 12] = struct.pack("III", TP_STATUS_AVAILABLE, len(frame),
                                                    len(frame))
            self.ring[base + TX_DATA_OFFSET:base + TX_DATA_OFFSET + len(frame)] = frame
        buffer: Any = self.ring
        self.status = np.ndarray((FRAMES,), dtype=np.uint32, buffer=buffer,
                                 strides=(FRAME_SIZE,))
        self.head = 0
        self.frame_len = len(frame)

    def send(self, count: int) -> int:
        """Queue up to ``count`` frames (those whose slots are free, in ring order) and flush
        them; returns how many the kernel took."""
        count = min(count, FRAMES)
        slots = (self.head + np.arange(count)) % FRAMES
        free = self.status[slots] == TP_STATUS_AVAILABLE
        if not free.all():
            count = int(np.argmin(free))  # the ring's order: stop at the first busy slot
            slots = slots[:count]
        if count == 0:
            return 0
        self.status[slots] = TP_STATUS_SEND_REQUEST
        sent = self.sock.send(b"", MSG_DONTWAIT) // self.frame_len
        self.head = (self.head + count) % FRAMES
        return sent

    def close(self) -> None:
        del self.status
        self.ring.close()
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", required=True)
    parser.add_argument("--rate", type=float, required=True, help="packets per second")
    parser.add_argument("--tick", type=float, default=0.002, help="seconds between two flushes")
    parser.add_argument("--dst-mac", required=True)
    parser.add_argument("--src-mac", required=True)
    parser.add_argument("--src-ip", required=True)
    parser.add_argument("--dst-ip", required=True)
    parser.add_argument("--sport", type=int, default=40000)
    parser.add_argument("--dport", type=int, default=7777)
    parser.add_argument("--payload", type=int, default=18,
                        help="UDP payload bytes (18: 60-byte frames)")
    args = parser.parse_args()
    frame = udp_frame(args.dst_mac, args.src_mac, args.src_ip, args.dst_ip, args.sport,
                      args.dport, args.payload)
    ring = TxRing(args.dev, frame)
    stop = {"now": False}

    def handler(_signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    sent = behind = 0
    start = time.monotonic()
    deadline = start
    try:
        while not stop["now"]:
            deadline += args.tick
            due = int((deadline - start) * args.rate) - sent
            if due > 0:
                done = ring.send(due)
                sent += done
                behind += done < due
            pause = deadline - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    finally:
        ring.close()
    json.dump({"sent": sent, "behind": behind}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
