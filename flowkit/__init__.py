"""flowkit: network flows from eBPF, exported through plugins.

Published as the distribution ``flowkit-ebpf`` (``pip install flowkit-ebpf``); the import
package is ``flowkit``.

Public API: :data:`hookimpl` (mark plugin hook implementations), :class:`Agent`,
:class:`AgentConfig`, :func:`capture`, :func:`replay` (a pcap/pcapng file through the eBPF
program), and the data model :class:`Flow` / :class:`FlowBatch`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from flowkit.hookspecs import hookimpl
from flowkit.model import Flow, FlowBatch

try:
    __version__ = version("flowkit-ebpf")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from flowkit.agent import Agent, capture
    from flowkit.config import AgentConfig
    from flowkit.offline import replay

__all__ = ["Agent", "AgentConfig", "Flow", "FlowBatch", "__version__", "capture", "hookimpl",
           "replay"]


def __getattr__(name: str) -> Any:
    # The agent pulls in threads, metrics and the plugin manager: import it on first use only.
    if name in {"Agent", "capture"}:
        from flowkit import agent

        return getattr(agent, name)
    if name == "replay":
        from flowkit.offline import replay

        return replay
    if name == "AgentConfig":
        from flowkit.config import AgentConfig

        return AgentConfig
    raise AttributeError(f"module 'flowkit' has no attribute {name!r}")
