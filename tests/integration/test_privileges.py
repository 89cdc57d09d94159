"""Without the capabilities the eBPF tracer needs, the agent names them and exits 1."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

AGENT = str(Path(sys.executable).with_name("flowkit-agent"))
CAPSH = shutil.which("capsh")


@pytest.mark.skipif(CAPSH is None, reason="capsh (libcap2-bin) is not installed")
@pytest.mark.parametrize(
    ("dropped", "named"),
    [
        ("cap_bpf,cap_net_admin,cap_perfmon,cap_sys_admin", "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"),
        ("cap_net_admin", "CAP_NET_ADMIN"),
    ],
)
def test_missing_capabilities_are_named_and_exit_1(dropped: str, named: str) -> None:
    assert CAPSH is not None
    result = subprocess.run(
        [CAPSH, f"--drop={dropped}", "--", "-c", f"{AGENT} --interfaces lo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flowkit-agent: the ebpf tracer needs")
    assert f"missing: {named}." in lines[0]
    assert result.stdout == ""


@pytest.mark.skipif(CAPSH is None, reason="capsh (libcap2-bin) is not installed")
def test_synthetic_tracer_needs_no_capability() -> None:
    """Only components that declare capabilities are checked."""
    assert CAPSH is not None
    result = subprocess.run(
        [CAPSH, "--drop=cap_bpf,cap_net_admin,cap_perfmon,cap_sys_admin", "--", "-c",
         f"{AGENT} --tracer synthetic --accounter python --listen-interfaces poll "
         "--synthetic-max-records 3 --synthetic-flows 3 --cache-active-timeout 200ms & "
         "sleep 2; kill -TERM $!; wait $!"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
