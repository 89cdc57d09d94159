"""Live batches as data: the flows an agent captures on a veth, read through Arrow, polars,
DuckDB and pandas (the PyCapsule interface and ``to_arrow()``), give the numbers the stdout
exporter printed in the same run.

The agent runs in a Python process inside the namespace (as a notebook would run it), with
EXPORT=stdout and a batch listener keeping every batch; the test sends known UDP traffic from
the other end of the veth.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

try:
    from .netns import Pair
except ImportError:
    from netns import Pair  # type: ignore[no-redef]

pytest.importorskip("pyarrow")
pytest.importorskip("polars")
pytest.importorskip("duckdb")
pytest.importorskip("pandas")

TRAFFIC = str(Path(__file__).with_name("traffic.py"))

SCRIPT = r'''
import json, logging, sys, threading
from collections import defaultdict

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa

from flowkit.agent import Agent
from flowkit.config import AgentConfig
from flowkit.pipeline import resolve_pipeline
from flowkit.plugins import PluginManager

traced = threading.Event()

class Watch(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith(f"tracing interface {sys.argv[1]} "):
            traced.set()

logging.getLogger("flowkit").addHandler(Watch())
logging.getLogger("flowkit").setLevel(logging.INFO)
pm = PluginManager()
config = AgentConfig.load(cli={"interfaces": sys.argv[1], "cache_active_timeout": "300ms",
                               "export": "stdout"}, environ={}, plugin_manager=pm)
agent = Agent(resolve_pipeline(config, pm))
batches = []
agent.add_batch_listener(lambda batch: batches.append(batch.copy()))
agent.start()
assert traced.wait(30), "the interface was never traced"
print("READY", file=sys.stderr, flush=True)
sys.stdin.readline()
agent.shutdown()

out = {"batches": len(batches)}
table = pa.Table.from_batches([b.to_arrow() for b in batches])
out["arrow"] = {"flows": table.num_rows,
                "packets": pa.compute.sum(table["packets"]).as_py(),
                "by_port": {str(r["dst_port"]): r["bytes_sum"] for r in
                            table.group_by("dst_port").aggregate([("bytes", "sum")]).to_pylist()}}
frame = pl.concat([pl.DataFrame(b) for b in batches])  # __arrow_c_stream__
out["polars"] = {"flows": frame.height, "packets": int(frame["packets"].sum()),
                 "by_port": {str(p): int(b) for p, b in
                             frame.group_by("dst_port").agg(pl.col("bytes").sum()).iter_rows()}}
duck = {"flows": 0, "packets": 0, "by_port": defaultdict(int)}
for batch in batches:  # DuckDB scans the FlowBatch by its variable name
    for port, nbytes, packets, flows in duckdb.sql(
            "select dst_port, sum(bytes)::bigint, sum(packets)::bigint, count(*) from batch "
            "group by dst_port").fetchall():
        duck["by_port"][str(port)] += nbytes
        duck["packets"] += packets
        duck["flows"] += flows
out["duckdb"] = duck
pandas = pd.concat([b.to_pandas() for b in batches])
out["pandas"] = {"flows": len(pandas), "packets": int(pandas["packets"].sum()),
                 "by_port": {str(p): int(b) for p, b in
                             pandas.groupby("dst_port")["bytes"].sum().items()},
                 "interfaces": sorted(set(pandas["interface"].astype(str)))}
print("SUMMARY " + json.dumps(out), flush=True)
'''


def test_live_batches_read_by_each_tool_equal_what_stdout_printed(tmp_path: Path) -> None:
    script = tmp_path / "live.py"
    script.write_text(SCRIPT)
    with Pair.create("fkAr") as pair:
        left, right = pair.left, pair.right
        proc = right.ns.popen([sys.executable, str(script), right.ifname],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            ready = proc.stderr.readline()
            assert ready.strip() == "READY", ready + proc.stderr.read()
            sink = right.ns.popen([sys.executable, TRAFFIC, "udp-sink", "5001", "2"],
                                  stdout=subprocess.PIPE, text=True)
            for i in range(12):
                left.ns.run(sys.executable, TRAFFIC, "udp-send", right.ip4, str(5001 + i % 3),
                            str(42000 + i), str(2 + i), str(64 + 16 * i))
            sink.wait(30)
            stdout, stderr = proc.communicate("stop\n", timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0, stderr[-3000:]
    printed: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith("SUMMARY "):
            summary = json.loads(line[len("SUMMARY "):])
        elif line.startswith("{"):
            printed.append(json.loads(line))
    assert summary["batches"] > 0
    by_port: dict[str, int] = defaultdict(int)
    for flow in printed:
        by_port[str(flow["DstPort"])] += flow["Bytes"]
    expected = {"flows": len(printed), "packets": sum(f["Packets"] for f in printed),
                "by_port": dict(by_port)}
    # The traffic sent is in there: 12 UDP flows to ports 5001-5003 (ingress on the veth).
    sent = [f for f in printed if f["DstPort"] in (5001, 5002, 5003) and f["Proto"] == 17]
    assert sum(f["Packets"] for f in sent) == sum(2 + i for i in range(12))
    for tool in ("arrow", "polars", "duckdb", "pandas"):
        got = {key: summary[tool][key] for key in ("flows", "packets", "by_port")}
        assert got == expected, tool
    assert summary["pandas"]["interfaces"] == sorted({f["Interface"] for f in printed})
