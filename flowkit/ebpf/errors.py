"""Errors raised by the eBPF object loader."""

from __future__ import annotations

__all__ = ["LoaderError"]


class LoaderError(Exception):
    """An eBPF object cannot be read, adjusted or loaded.

    The message names what is wrong (the file, section, program, map or variable) and, for
    load failures, ends with libbpf's log (including the verifier's) when there is one.
    ``log`` holds that log on its own.
    """

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(f"{message}\n{log.rstrip()}" if log.strip() else message)
        self.log = log
