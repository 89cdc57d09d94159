"""``flowkit-agent``: run the agent, list plugins, check the host, inspect eBPF objects.

Only the CLI configures logging and installs signal handlers (the library never does).
Exit status: 0 success, 1 runtime failure (e.g. a missing capability), 2 bad configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, NoReturn

import orjson

import flowkit
from flowkit.components import ComponentStartError
from flowkit.config import AgentConfig, ConfigError, SettingInfo, load_config, settings_table
from flowkit.pipeline import Pipeline, resolve_pipeline
from flowkit.plugins import PluginError, PluginManager
from flowkit.privileges import PrivilegeError

PROG = "flowkit-agent"
COMMANDS = ("run", "replay", "top", "plugins", "check", "inspect")
_PRINTING = ("top", "plugins", "check", "inspect")  # commands whose result is what they print
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _STRUCTURED_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


# Fields a log call may attach with ``extra=`` that JSON logs carry as structured values.
_STRUCTURED_FIELDS = ("flows", "counters", "interfaces")


def configure_logging(level: str) -> None:
    """Human-readable logs on a terminal, JSON lines otherwise; always on standard error."""
    handler = logging.StreamHandler(sys.stderr)
    if sys.stderr.isatty():
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    else:
        handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return status


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line (the full usage lists every setting: see --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


def build_run_parser(table: dict[str, SettingInfo]) -> argparse.ArgumentParser:
    """The parser of ``flowkit-agent [run]``: one flag per setting, core and plugins."""
    parser = _Parser(
        prog=PROG,
        usage=f"{PROG} [--config FILE] [--SETTING VALUE ...]\n"
        f"       {PROG} {{replay FILE,top,plugins,check,inspect}} ...",
        description="Capture network flows with eBPF and export them. Every setting can also "
        "be given as an environment variable (NetObserv names) or in a YAML file; precedence: "
        "flags > environment > file > defaults.",
        epilog="commands: run (default), replay FILE (a pcap/pcapng capture through the eBPF "
        "program, flows to the exporters), top (live view of the busiest flows; --sort, "
        "--filter), plugins (list installed components as JSON), check "
        "(preflight: privileges, kernel features), inspect OBJECT (describe an eBPF object). "
        "Settings reference: docs/configuration.md",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {flowkit.__version__}")
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings")
    core = parser.add_argument_group("agent settings")
    plugin = parser.add_argument_group("plugin settings (used when the component is selected)")
    for name, info in table.items():
        group = core if info.owners[0] == "core" else plugin
        owner = "" if info.owners[0] == "core" else f" [{', '.join(info.owners)}]"
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": None,
            "metavar": "VALUE",
            "help": (
                f"{info.field.description or ''}{owner} (env {info.env}, "
                + ("required" if info.field.is_required() else f"default {info.default_text}")
                + ")"
            ).replace("%", "%%"),
        }
        if info.field.annotation is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        group.add_argument(info.flag, **kwargs)
    return parser


def _install_signal_handlers(agent: flowkit.Agent) -> None:
    interrupts = {"count": 0}

    def handler(signum: int, frame: FrameType | None) -> None:
        interrupts["count"] += 1
        if interrupts["count"] > 1 and signum == signal.SIGINT:
            os.write(2, b"flowkit-agent: second interrupt, exiting now\n")
            os._exit(130)
        agent.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def prepare_config(
    argv: Sequence[str],
    *,
    prog: str = PROG,
    defaults: dict[str, Any] | None = None,
    forced: dict[str, Any] | None = None,
) -> Pipeline | int:
    """Parse the agent's flags and resolve the pipeline they describe, or return the exit status.

    ``defaults`` replace built-in defaults (flags, environment and file still win); ``forced``
    settings win over everything (``replay`` forces its tracer).
    """
    try:
        pm = PluginManager()
        table = settings_table(pm)
    except PluginError as exc:
        return _fail(str(exc), 2)
    parser = build_run_parser(table)
    parser.prog = prog
    args = parser.parse_args(list(argv))
    cli = {name: getattr(args, name) for name in table if getattr(args, name) is not None}
    cli.update(forced or {})
    # Logging is set up before the settings are read, so that what loading logs (a deprecated
    # variable) is a JSON line like every other; the level is set again once it is known.
    configure_logging(str(cli.get("log_level") or os.environ.get("LOG_LEVEL", "info")).lower())
    try:
        config = load_config(cli=cli, config_file=args.config, plugin_manager=pm,
                             defaults=defaults)
        pipeline = resolve_pipeline(config, pm)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    return dataclasses.replace(pipeline, load_messages=tuple(pm.messages))


def cmd_run(argv: Sequence[str]) -> int:
    """Run the agent until SIGTERM/SIGINT."""
    prepared = prepare_config(argv)
    if isinstance(prepared, int):
        return prepared
    return run_agent(prepared)


def run_agent(pipeline: Pipeline) -> int:
    """Start the agent, wait until it is asked to stop (or stops itself), shut it down."""
    config = pipeline.config
    configure_logging(config.log_level)
    for level, message in pipeline.load_messages:  # plugin loading, now that logs show
        logging.getLogger("flowkit.plugins").log(level, "%s", message)
    agent = flowkit.Agent(pipeline)
    # The threads started from here on block SIGTERM/SIGINT, so that the kernel delivers them
    # to this thread, whose wait below they interrupt: it needs no timeout to see them.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        status, server = _start_agent(agent, config)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    if status is not None:
        return status
    try:
        agent.stop_requested.wait()
    finally:
        # A hard deadline: whatever happens in the orderly stop, the process ends.
        timer = threading.Timer(config.shutdown_timeout + 5.0, lambda: os._exit(1))
        timer.daemon = True
        timer.start()
        agent.shutdown()
        timer.cancel()
        if server is not None:
            server.close()
    error = getattr(agent.tracer, "error", None)
    if error is not None:  # a replay that met a bad frame: what came before was exported
        return _fail(str(error), 1)
    if agent.failure:
        return _fail(agent.failure, agent.exit_status)
    return 0


def _start_agent(agent: flowkit.Agent, config: AgentConfig) -> tuple[int | None, Any]:
    """Serve metrics (when enabled), install the signal handlers and start the agent. Returns
    (an exit status if something could not start, else None; the metrics server or None)."""
    log = logging.getLogger("flowkit.cli")
    server: Any = None
    if config.metrics_enable:
        from flowkit.metrics import MetricsServer

        where = f"{config.metrics_server_address or '*'}:{config.metrics_server_port}"
        try:
            server = MetricsServer(agent.metrics, config.metrics_server_address,
                                   config.metrics_server_port, health=agent.health)
        except OSError as exc:
            reason = exc.strerror or _one_line(exc)
            return _fail(f"invalid settings METRICS_SERVER_ADDRESS/METRICS_SERVER_PORT: cannot "
                         f"serve metrics on {where}: {reason}", 2), None
    _install_signal_handlers(agent)
    try:
        agent.start()  # unwinds whatever it started before raising
    except PrivilegeError as exc:
        return _fail(str(exc), 1), server
    except ComponentStartError as exc:
        return _fail(str(exc), exc.exit_status), server
    except (ConfigError, PluginError) as exc:
        return _fail(str(exc), 2), server
    except Exception as exc:
        log.debug("start failed", exc_info=True)
        return _fail(f"cannot start: {_one_line(exc)}", 1), server
    return None, server


def _one_line(exc: BaseException) -> str:
    """An exception as one line: its message, or its type when it has none."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def cmd_replay(argv: Sequence[str]) -> int:
    """Replay a pcap/pcapng file through the eBPF program into the configured exporters."""
    from flowkit.offline import REPLAY_DEFAULTS

    args = list(argv)
    if not args or args[0].startswith("-"):
        if args and args[0] in ("-h", "--help"):
            print(f"usage: {PROG} replay FILE [--SETTING VALUE ...]\n\n"
                  "Run every frame of a pcap or pcapng capture through flowkit's eBPF program "
                  "(BPF_PROG_TEST_RUN) and export the flows, with the capture's timestamps as "
                  f"flow times. Settings as for {PROG} --help (REPLAY_DIRECTION, "
                  "REPLAY_IF_INDEX, EXPORT, ...).")
            return 0
        return _fail(f"replay needs a capture file: {PROG} replay FILE [--SETTING VALUE ...]", 2)
    path, rest = args[0], args[1:]
    defaults = {k: v for k, v in REPLAY_DEFAULTS.items() if k != "tracer"}
    prepared = prepare_config(rest, prog=f"{PROG} replay FILE", defaults=defaults,
                              forced={"tracer": "replay", "replay_file": path})
    if isinstance(prepared, int):
        return prepared
    return run_agent(prepared)


def cmd_top(argv: Sequence[str]) -> int:
    """A live terminal view of the busiest flows."""
    from flowkit.top import run_top

    return run_top(list(argv))


def cmd_plugins(argv: Sequence[str]) -> int:
    """Print installed plugin distributions and their components as JSON."""
    argparse.ArgumentParser(prog=f"{PROG} plugins",
                            description="List plugins and components as JSON").parse_args(argv)
    try:
        pm = PluginManager()
        described = pm.describe()
    except PluginError as exc:
        return _fail(str(exc), 2)
    configure_logging("info")
    pm.log_messages()
    sys.stdout.write(orjson.dumps(described, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def cmd_check(argv: Sequence[str]) -> int:
    """Preflight: can this host run the configured agent?"""
    from flowkit import preflight

    return preflight.main(list(argv))


def cmd_inspect(argv: Sequence[str]) -> int:
    """Describe an eBPF object file (programs, maps, variables)."""
    from flowkit.ebpf import inspect

    status: int = inspect.main(list(argv))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``flowkit-agent``."""
    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args and args[0] in COMMANDS else "run"
    if args and args[0] == command:
        args = args[1:]
    handlers = {"run": cmd_run, "replay": cmd_replay, "top": cmd_top, "plugins": cmd_plugins,
                "check": cmd_check, "inspect": cmd_inspect}
    if sys.stdout is None:
        # Started with standard output closed (`flowkit-agent >&-`): keep descriptor 1 taken
        # by /dev/null, so that no file, socket or eBPF map the agent opens lands on it and
        # receives what is meant for standard output. sys.stdout stays None: what needs it
        # (the stdout exporter, `check`) says that it is closed.
        devnull = os.open(os.devnull, os.O_WRONLY)
        if devnull != 1:
            os.dup2(devnull, 1)
            os.close(devnull)
        if command in _PRINTING:
            return _fail(f"{command}: standard output is closed; nothing to print to", 1)
    try:
        status = handlers[command](args)
        if sys.stdout is not None:
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`flowkit-agent check | head -1`): what it wanted, it has.
        # Point stdout at /dev/null so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
