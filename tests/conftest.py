"""Suite-wide rules.

- Everything under tests/integration is marked ``integration``.
- Integration tests need root (network namespaces, eBPF): without it they skip, saying so.
- Under CI (``CI=true``) a skipped integration test is a failure: CI runs as root on a machine
  that has everything, so a skip there means something is broken, not absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).parent / "integration"
UNDER_CI = os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("integration") and os.geteuid() != 0:
            item.add_marker(
                pytest.mark.skip(
                    reason="integration test: needs root (network namespaces, eBPF, tc); "
                    "run `sudo make test`"
                )
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if UNDER_CI and report.skipped and item.get_closest_marker("integration"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"integration test skipped under CI=true, which counts as a failure: {reason}"
        )
