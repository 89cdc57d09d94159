"""An IPFIX collector built on the PyPI ``ipfix`` decoder, for tests: ``python ipfix_collector.py``.

Modes (run inside the namespace of the agent; both print ``{"ready": true}`` first):

- ``tcp PORT``: accept connections on 127.0.0.1:PORT one after the other and print every
  decoded data record as one JSON line ``{"conn": N, "seq": S, ...elements}`` (S: the sequence
  number of its message);
- ``decode-udp``: read hex-encoded UDP payloads (one message per line) on stdin and print
  their records the same way (``conn`` is 0).

With ``FK_IPFIX_PEN`` set, flowkit's enterprise elements under that PEN are known to the decoder
(``flowkit.ipfix.enterprise_iespecs``); otherwise it skips them. Element values are made
JSON-friendly: addresses as text, MACs as ``aa:bb:..``, times as unix
milliseconds, everything else as the decoder returns it.
"""

from __future__ import annotations

import calendar
import datetime
import ipaddress
import json
import os
import socket
import sys
from typing import Any

import ipfix.ie
import ipfix.message


def _plain(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return calendar.timegm(value.utctimetuple()) * 1000 + value.microsecond // 1000
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, bytes):
        return ":".join(f"{b:02x}" for b in value)
    return value


def _emit(conn: int, record: dict[str, Any], sequence: int) -> None:
    out = {"conn": conn, "seq": sequence, **{k: _plain(v) for k, v in record.items()}}
    print(json.dumps(out), flush=True)


def serve_tcp(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(4)
        print(json.dumps({"ready": True}), flush=True)
        conn_no = 0
        while True:
            conn, _ = server.accept()
            conn_no += 1
            print(json.dumps({"connected": conn_no}), flush=True)
            with conn, conn.makefile("rb") as stream:
                buffer = ipfix.message.MessageBuffer()
                try:
                    while True:
                        buffer.read_message(stream)
                        for record in buffer.namedict_iterator():
                            _emit(conn_no, record, buffer.sequence)
                except Exception as exc:  # EOF, reset, or a message the decoder refuses
                    print(json.dumps({"closed": conn_no, "why": repr(exc)}), flush=True)


def decode_udp() -> None:
    buffer = ipfix.message.MessageBuffer()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        buffer.from_bytes(bytes.fromhex(line.strip()))
        for record in buffer.namedict_iterator():
            _emit(0, record, buffer.sequence)


def main(argv: list[str]) -> None:
    ipfix.ie.use_iana_default()
    if os.environ.get("FK_IPFIX_PEN"):  # a collector that knows flowkit's enterprise elements
        from flowkit.ipfix import enterprise_iespecs

        for spec in enterprise_iespecs(int(os.environ["FK_IPFIX_PEN"])):
            ipfix.ie.for_spec(spec)
    if argv[0] == "tcp":
        serve_tcp(int(argv[1]))
    elif argv[0] == "decode-udp":
        decode_udp()
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
