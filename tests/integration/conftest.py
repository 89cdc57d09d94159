"""Fixtures for integration tests that need a Kafka broker (see kafka_broker.py)."""

from __future__ import annotations

try:  # tests/ laid out as packages
    from .kafka_broker import kafka_broker
except ImportError:  # rootdir-relative imports (pytest's default "prepend" mode)
    from kafka_broker import kafka_broker  # type: ignore[no-redef]

__all__ = ["kafka_broker"]
