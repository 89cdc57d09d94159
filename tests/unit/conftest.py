"""Fixtures for the unit tests of the core: plugin managers, scripted components, settings.

Every test builds its own :class:`~flowkit.plugins.PluginManager` with no entry points loaded and
registers what it needs, so what is installed in the environment never changes a unit test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fk_doubles import BUILTIN_MODULES, ScriptedPlugin

from flowkit.config import AgentConfig
from flowkit.plugins import PluginManager


@pytest.fixture
def builtin_pm() -> PluginManager:
    """A plugin manager holding flowkit's built-in plugins only (no entry points loaded)."""
    pm = PluginManager(load_entrypoints=False, disabled=())
    for name, module in BUILTIN_MODULES.items():
        pm.register(module, name=name, distribution="flowkit-ebpf", version="test")
    return pm


@pytest.fixture
def scripted(builtin_pm: PluginManager) -> ScriptedPlugin:
    """The scripted tracer and recording exporters, registered into ``builtin_pm``."""
    components = ScriptedPlugin()
    builtin_pm.register(components, name="test-components", distribution="tests")
    return components


@pytest.fixture
def load(builtin_pm: PluginManager) -> Callable[..., AgentConfig]:
    """``load(**settings)``: an AgentConfig from settings given by name, environment ignored."""

    def _load(**settings: Any) -> AgentConfig:
        return AgentConfig.load(cli=settings, environ={}, plugin_manager=builtin_pm)

    return _load
