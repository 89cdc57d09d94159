"""``flowkit-agent top`` over the ``replay`` tracer: the flows of a capture, busiest first, once
the replay reached the end of the file (without a terminal: one final table, exit 0)."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

try:
    from .netns import agent_command
except ImportError:
    from netns import agent_command  # type: ignore[no-redef]


def udp_frame(sport: int, size: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size - 14, 0, 0, 64, 17, 0,
                     bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
    udp = struct.pack("!HHHH", sport, 5001, size - 34, 0)
    frame = bytes.fromhex("02fb0000000202fb00000001") + b"\x08\x00" + ip + udp
    return frame + bytes(size - len(frame))


def test_top_over_a_replay_lists_the_capture_flows_busiest_first(tmp_path: Path) -> None:
    capture = tmp_path / "two-flows.pcap"
    with capture.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        # 10 frames of 1000 bytes from port 41001, then 3 of 100 bytes from port 41002.
        for i, (sport, size) in enumerate([(41001, 1000)] * 10 + [(41002, 100)] * 3):
            frame = udp_frame(sport, size)
            out.write(struct.pack("<IIII", 1_796_000_000, i * 1000, len(frame), len(frame)))
            out.write(frame)
    proc = subprocess.run(
        [*agent_command(), "top", "--tracer", "replay", "--replay-file", str(capture)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200", "LINES": "40"})
    assert proc.returncode == 0, proc.stderr
    screens = proc.stdout.split("flowkit top")
    final = screens[-1].splitlines()
    assert "tracer=replay" in final[0]
    assert "flows: 2 " in final[0]
    rows = [line.split() for line in final if "198.18.0.1:" in line]
    assert [row[4] for row in rows] == ["198.18.0.1:41001", "198.18.0.1:41002"]
    assert rows[0][5] == "198.18.0.2:5001"
    assert rows[0][-1] == "10"
    assert rows[1][-1] == "3"
