"""Benchmark of the disk spool (flowkit/spool.py): write, reopen (checking), replay.

For each fsync policy, one fresh spool directory is filled with ``--mib`` MiB of records holding
raw flow batches (the Kafka and IPFIX exporters' payload: ``encode_batch`` of ``--batch``
synthetic flows, ``FLOW_DTYPE.itemsize`` bytes per flow), then closed, reopened (which checks
every record's CRC: the cost of a restart) and replayed with peek / begin / ack until empty
(the cost of a replay without the sink). One JSON object per policy and phase: records, flows
and MiB per second of wall time and of CPU time. Run::

    .venv/bin/python bench/bench_spool.py [--mib 512] [--batch 5000] [--dir /var/tmp]

The directory defaults to the system's temporary directory; the file system it is on (and the
page cache: a spool smaller than free memory is written and read back from memory) decides the
numbers far more than the code does.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure import cpu_seconds, peak_rss_mib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowkit.spool import Spool, SpoolConfig, encode_batch
from flowkit.testing import synthetic_flows


def rates(phase: str, policy: str, records: int, flows: int, nbytes: int, wall: float,
          cpu: float) -> dict[str, Any]:
    mib = nbytes / (1 << 20)
    return {
        "phase": phase,
        "fsync": policy,
        "records": records,
        "flows": flows,
        "mib": round(mib, 1),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "mib_per_s": round(mib / wall, 1),
        "flows_per_s": round(flows / wall),
        "flows_per_cpu_s": round(flows / cpu) if cpu else None,
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def run(policy: str, root: Path, mib: int, batch_flows: int) -> list[dict[str, Any]]:
    directory = root / f"spool-{policy}"
    shutil.rmtree(directory, ignore_errors=True)
    payload = encode_batch(synthetic_flows(batch_flows))
    records = max(1, (mib << 20) // len(payload))
    config = SpoolConfig(directory, max_bytes=(records + 16) * (len(payload) + 64) + (64 << 20),
                         segment_bytes=16 << 20, fsync=policy)  # type: ignore[arg-type]
    out = []

    wall0, cpu0 = time.monotonic(), cpu_seconds()
    with Spool(config, name="bench") as spool:
        for _ in range(records):
            spool.append(payload, batch_flows)
    out.append(rates("write", policy, records, records * batch_flows, records * len(payload),
                     time.monotonic() - wall0, cpu_seconds() - cpu0))

    wall0, cpu0 = time.monotonic(), cpu_seconds()
    spool = Spool(config, name="bench")
    assert spool.recovered_flows == records * batch_flows
    out.append(rates("reopen", policy, records, records * batch_flows, records * len(payload),
                     time.monotonic() - wall0, cpu_seconds() - cpu0))

    wall0, cpu0 = time.monotonic(), cpu_seconds()
    replayed = 0
    while (record := spool.peek()) is not None:
        spool.begin(record)
        spool.ack(record)
        replayed += 1
    spool.close()
    assert replayed == records
    assert not list(directory.glob("*.seg"))
    out.append(rates("replay", policy, records, records * batch_flows, records * len(payload),
                     time.monotonic() - wall0, cpu_seconds() - cpu0))
    shutil.rmtree(directory, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--fsync", default="never,segment,always")
    args = parser.parse_args()
    root = Path(args.dir)
    for policy in args.fsync.split(","):
        for result in run(policy, root, args.mib, args.batch):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
