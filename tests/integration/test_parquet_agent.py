"""The parquet exporter in a running agent: the files hold exactly what stdout printed, the
usual data tools agree on them, and a SIGKILL leaves only complete files.

The first test traces a veth end live (real eBPF program, known UDP/TCP/ICMP traffic) with
EXPORT=stdout,parquet; the SIGKILL test uses the synthetic tracer (many flows, fast rotation).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

try:
    from .netns import AgentRun, Pair, agent_command
except ImportError:
    from netns import AgentRun, Pair, agent_command  # type: ignore[no-redef]

pq = pytest.importorskip("pyarrow.parquet")
ds = pytest.importorskip("pyarrow.dataset")
pl = pytest.importorskip("polars")
duckdb = pytest.importorskip("duckdb")

TRAFFIC = str(Path(__file__).with_name("traffic.py"))


def canonical(flows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(f, sort_keys=True) for f in flows)


def test_parquet_files_hold_exactly_the_flows_stdout_printed(tmp_path: Path) -> None:
    from flowkit.arrow import from_arrow

    directory = tmp_path / "flows"
    with Pair.create("fkPq") as pair:
        left, right = pair.left, pair.right
        env = {"EXPORT": "stdout,parquet", "PARQUET_DIRECTORY": str(directory),
               "INTERFACES": right.ifname, "CACHE_ACTIVE_TIMEOUT": "500ms"}
        with AgentRun(right.ns, env) as agent:
            agent.wait_traced(right.ifname)
            sink = right.ns.popen([sys.executable, TRAFFIC, "udp-sink", "5001", "2"],
                                  stdout=subprocess.PIPE, text=True)
            for i in range(30):
                left.ns.run(sys.executable, TRAFFIC, "udp-send", right.ip4, str(5001 + i % 3),
                            str(42000 + i), str(1 + i), str(100 + 10 * i))
            left.ns.run("ping", "-q", "-c", "3", "-i", "0.05", right.ip6)
            sink.wait(30)
            assert agent.stop() == 0
    printed = agent.flows
    assert len(printed) > 30

    table = ds.dataset(directory, format="parquet", partitioning="hive").to_table()
    assert canonical(from_arrow(table).to_dicts()) == canonical(printed)

    # The numbers a user computes with each tool equal those of the JSON lines.
    by_port: dict[int, int] = defaultdict(int)
    for f in printed:
        by_port[f["DstPort"]] += f["Bytes"]
    total_packets = sum(f["Packets"] for f in printed)
    glob = str(directory / "**" / "*.parquet")

    frame = pl.scan_parquet(glob, hive_partitioning=True).collect()
    assert frame["packets"].sum() == total_packets
    grouped = frame.group_by("dst_port").agg(pl.col("bytes").sum())
    assert dict(grouped.iter_rows()) == by_port

    rows = duckdb.sql(f"select dst_port, sum(bytes)::bigint from read_parquet('{glob}', "
                      "hive_partitioning = true) group by dst_port").fetchall()
    assert dict(rows) == by_port

    pandas_frame = table.to_pandas()
    assert int(pandas_frame["packets"].sum()) == total_packets
    assert {int(k): int(v) for k, v in pandas_frame.groupby("dst_port")["bytes"].sum().items()
            } == by_port
    names = set(pandas_frame["interface"].astype(str))
    assert names == {f["Interface"] for f in printed}
    icmp6 = pandas_frame[pandas_frame["proto_name"] == "ICMPv6"]
    assert int(icmp6["packets"].sum()) == sum(f["Packets"] for f in printed if f["Proto"] == 58)


def test_sigkill_leaves_only_complete_files(tmp_path: Path) -> None:
    from flowkit.metrics import Metrics
    from flowkit_plugins.parquet_exporter import ParquetExporter, ParquetSettings

    directory = tmp_path / "flows"
    env = dict(os.environ, TRACER="synthetic", ACCOUNTER="native", LISTEN_INTERFACES="poll",
               EXPORT="parquet", PARQUET_DIRECTORY=str(directory), SYNTHETIC_FLOWS="20000",
               SYNTHETIC_RATE="0", CACHE_ACTIVE_TIMEOUT="200ms", CACHE_MAX_FLOWS="20000",
               PARQUET_ROW_GROUP_SIZE="4096", PARQUET_MAX_FILE_SIZE="65536",
               LOG_LEVEL="warning")
    proc = subprocess.Popen(agent_command(), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(list(directory.rglob("*.parquet"))) < 5:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no files were completed"
            time.sleep(0.1)
        # Kill while a file is being written.
        while not list(directory.rglob(".*.parquet.tmp")):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    complete = list(directory.rglob("*.parquet"))
    for path in complete:
        table = pq.read_table(path)  # a footer and every row group: the file is whole
        assert table.num_rows == pq.ParquetFile(path).metadata.num_rows > 0
    assert ds.dataset(directory, partitioning="hive").count_rows() == sum(
        pq.ParquetFile(p).metadata.num_rows for p in complete)
    leftovers = list(directory.rglob(".*.parquet.tmp"))
    assert leftovers  # the file being written when the agent died...
    with pytest.raises(Exception):  # noqa: B017 - ...is not a readable Parquet file
        pq.read_table(leftovers[0])
    # ...and the next exporter on that directory removes it.
    ParquetExporter(ParquetSettings(parquet_directory=str(directory)), Metrics()).shutdown(1)
    assert not list(directory.rglob(".*.parquet.tmp"))
    assert len(list(directory.rglob("*.parquet"))) == len(complete)
