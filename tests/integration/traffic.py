"""Known traffic for datapath tests, run inside a namespace: ``python traffic.py MODE ...``.

Modes (all print one JSON line with what they did, then exit):

- ``udp-send DST DPORT SPORT COUNT PAYLOAD``: COUNT datagrams of PAYLOAD bytes (IPv4 or IPv6,
  from the address family of DST) from source port SPORT;
- ``udp-send-from SRC DST DPORT SPORT COUNT PAYLOAD``: the same from source address SRC;
- ``udp-sink PORT SECONDS``: receive on PORT (both families) for SECONDS, report datagrams;
- ``tcp-sink PORT``: accept one connection on PORT, read until EOF, report bytes;
- ``tcp-send DST DPORT SPORT NBYTES``: connect from SPORT, send NBYTES, close cleanly;
- ``udp-many DST SPORT_BASE FLOWS``: one 18-byte datagram from each of FLOWS source ports;
- ``sniff IFNAME PORT``: count TCP frames to or from PORT seen on IFNAME (an AF_PACKET socket
  sees every skb the way tc does: same length, both directions) until stdin closes; reports
  ``{"in": [packets, bytes, flags], "out": [...]}``.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def udp_send(dst: str, dport: int, sport: int, count: int, payload: int,
             src: str = "") -> dict[str, int]:
    with socket.socket(_family(dst), socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((src, sport))
        data = b"f" * payload
        for _ in range(count):
            sock.sendto(data, (dst, dport))
    return {"sent": count}


def udp_sink(port: int, seconds: float) -> dict[str, int]:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        sock.settimeout(0.2)
        got = 0
        deadline = time.monotonic() + seconds
        print(json.dumps({"ready": True}), flush=True)
        while time.monotonic() < deadline:
            try:
                sock.recv(65536)
                got += 1
            except TimeoutError:
                continue
    return {"received": got}


def tcp_sink(port: int) -> dict[str, int]:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("::", port))
        srv.listen(1)
        print(json.dumps({"ready": True}), flush=True)
        conn, _ = srv.accept()
        total = 0
        with conn:
            while chunk := conn.recv(65536):
                total += len(chunk)
    return {"received": total}


def tcp_send(dst: str, dport: int, sport: int, nbytes: int) -> dict[str, int]:
    with socket.socket(_family(dst), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", sport))
        sock.connect((dst, dport))
        sock.sendall(b"t" * nbytes)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    return {"sent": nbytes}


def udp_many(dst: str, sport_base: int, flows: int) -> dict[str, int]:
    sent = 0
    for i in range(flows):
        with socket.socket(_family(dst), socket.SOCK_DGRAM) as sock:
            sock.bind(("", sport_base + i))
            sock.sendto(b"m" * 18, (dst, 9))
            sent += 1
    return {"sent": sent}


def sniff(ifname: str, port: int) -> dict[str, list[int]]:
    import select
    import struct

    counts = {"in": [0, 0, 0], "out": [0, 0, 0]}
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)) as sock:
        sock.bind((ifname, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        print(json.dumps({"ready": True}), flush=True)
        while True:
            ready, _, _ = select.select([sock, sys.stdin], [], [], 0.5)
            if sys.stdin in ready and not sys.stdin.readline():
                break
            if sock not in ready:
                continue
            frame, addr = sock.recvfrom(65536)
            etype = struct.unpack_from("!H", frame, 12)[0]
            if etype == 0x0800:
                ihl = (frame[14] & 0x0F) * 4
                proto, l4 = frame[23], 14 + ihl
            elif etype == 0x86DD:
                proto, l4 = frame[20], 54
            else:
                continue
            if proto != 6:
                continue
            sport, dport = struct.unpack_from("!HH", frame, l4)
            if port not in (sport, dport):
                continue
            side = counts["out" if addr[2] == socket.PACKET_OUTGOING else "in"]
            side[0] += 1
            side[1] += len(frame)
            side[2] |= frame[l4 + 13]
    return counts


def main(argv: list[str]) -> None:
    mode, *args = argv
    out: dict[str, object]
    if mode == "udp-send":
        out = udp_send(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]))
    elif mode == "udp-send-from":
        src, dst, dport, sport, count, payload = args
        out = udp_send(dst, int(dport), int(sport), int(count), int(payload), src)
    elif mode == "udp-sink":
        out = udp_sink(int(args[0]), float(args[1]))
    elif mode == "tcp-sink":
        out = tcp_sink(int(args[0]))
    elif mode == "tcp-send":
        out = tcp_send(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif mode == "sniff":
        out = sniff(args[0], int(args[1]))
    elif mode == "udp-many":
        out = udp_many(args[0], int(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
