"""docs/python.md works as written: every block marked ``<!-- run -->`` runs, in order, as one
script inside a namespace whose ``eth0`` receives UDP traffic to port 5001 from 198.18.0.1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from .netns import Namespace, add_veth, unique
except ImportError:
    from netns import Namespace, add_veth, unique  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "python.md"
TRAFFIC = str(Path(__file__).with_name("traffic.py"))
SENDER = """
import socket, sys, time
end = time.monotonic() + float(sys.argv[2])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind(("", 43000))
    while time.monotonic() < end:
        s.sendto(b"d" * 200, (sys.argv[1], 5001))
        time.sleep(0.005)
"""


def runnable_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block that follows a ``<!-- run -->`` line."""
    pattern = re.compile(r"<!-- run -->\n```(\w+)\n(.*?)```", re.DOTALL)
    return [(m.group(1), m.group(2)) for m in pattern.finditer(text)]


def as_script(blocks: list[tuple[str, str]]) -> str:
    out = ["import subprocess"]
    for language, code in blocks:
        if language == "python":
            out.append(code)
        else:
            out.append(f"subprocess.run({code.strip()!r}, shell=True, check=True)")
    return "\n".join(out)


def test_the_page_has_the_three_parts() -> None:
    blocks = runnable_blocks(DOC.read_text())
    code = "\n".join(c for _, c in blocks)
    for needed in ("flowkit.capture(duration=10", "flowkit.replay(", "duckdb.sql(",
                   "scan_parquet(", "--export parquet"):
        assert needed in code


def test_the_only_block_not_run_is_the_install_line() -> None:
    """Every code block of the page runs in test_every_snippet_runs except the install line,
    which installs nothing here: it names a real extra and packages that import."""
    import importlib
    from importlib.metadata import metadata

    text = DOC.read_text()
    every = re.findall(r"(<!-- run -->\n)?```(\w*)\n(.*?)```", text, re.DOTALL)
    not_run = [code.strip() for marker, _, code in every if not marker]
    assert not_run == ["pip install 'flowkit-ebpf[arrow]' polars duckdb pandas"]
    assert "arrow" in (metadata("flowkit-ebpf").get_all("Provides-Extra") or [])
    for module in ("pyarrow", "polars", "duckdb", "pandas"):
        importlib.import_module(module)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    base = unique("fkDoc")
    with Namespace.create(f"{base}L") as left_ns, Namespace.create(f"{base}R") as right_ns:
        _left, _right = add_veth(left_ns, right_ns, f"{base}l", "eth0")
        sink = right_ns.popen([sys.executable, TRAFFIC, "udp-sink", "5001", "90"],
                              stdout=subprocess.PIPE, text=True)
        sender = left_ns.popen([sys.executable, "-c", SENDER, "198.18.0.2", "90"])
        try:
            yield right_ns
        finally:
            for proc in (sender, sink):
                proc.kill()
                proc.wait(10)


def test_every_snippet_runs(namespace: Namespace, tmp_path: Path) -> None:
    script = tmp_path / "walkthrough.py"
    script.write_text(as_script(runnable_blocks(DOC.read_text())))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(namespace.cmd(sys.executable, str(script)), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, textwrap.shorten(proc.stderr, 4000)
    out = proc.stdout
    # 1. polars: port 5001 leads the bytes; the sender's flows are found by address.
    ports = re.findall(r"^│ (\d+) ", out, re.MULTILINE)
    assert ports[0] == "5001"
    assert re.search(r"^[1-9]\d* flows from 198\.18\.0\.1$", out, re.MULTILINE)
    # 2. DuckDB over the replayed capture: UDP to 5001 with 200-byte payloads.
    match = re.search(r"\('UDP', 5001, (\d+), (\d+)", out)
    assert match
    packets, nbytes = int(match[1]), int(match[2])
    assert packets > 0
    assert nbytes == packets * (200 + 8 + 20 + 14)
    # 3. the Parquet directory exists and was read.
    assert list((tmp_path / "flows").rglob("*.parquet"))
    assert (tmp_path / "capture.pcap").stat().st_size > 0
