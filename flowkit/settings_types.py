"""Value types for settings models: Go-style durations, byte sizes, comma-separated lists, CIDRs.

Settings arrive as strings from the environment and CLI flags and as YAML values from files; these
annotated types accept both. Use them in plugin settings models::

    class KafkaSettings(BaseModel):
        kafka_brokers: CommaList = Field(default_factory=list, description="...")
        kafka_timeout: Duration = Field(default=10.0, description="...")
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(value: Any) -> float:
    """Parse a Go-style duration (``500ms``, ``5s``, ``1m30s``) into seconds.

    Plain numbers (int/float, or a numeric string) are taken as seconds.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration like 500ms, 5s or 1m30s")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"{text!r} is not a duration; expected a duration like 500ms, 5s or 1m30s"
                ) from None
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a finite duration; use e.g. 5s or 10m")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """Format seconds the way :func:`parse_duration` reads them (for docs and help)."""
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


_BYTE_SIZE = re.compile(r"(\d+)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_byte_size(value: Any) -> int:
    """Parse a size in bytes: ``1048576``, ``64KiB``, ``512MiB``, ``2GiB`` (also ``k``/``M``/``G``).

    Units are binary (``k`` = ``KiB`` = 1024 bytes), as in ``ulimit`` and Kubernetes' ``Ki``.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size like 1048576, 64KiB, 512MiB or 2GiB")
    if isinstance(value, int):
        size = value
    else:
        match = _BYTE_SIZE.fullmatch(str(value).strip())
        if match is None:
            raise ValueError(
                f"{value!r} is not a size; expected a size like 1048576, 64KiB, 512MiB or 2GiB"
            )
        unit = (match.group(2) or "").lower()[:1] if match.group(2) not in ("b", "B") else "b"
        size = int(match.group(1)) * _BYTE_UNITS[unit]
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def format_byte_size(size: int) -> str:
    """Format bytes the way :func:`parse_byte_size` reads them (for docs and help)."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def split_commas(value: Any) -> list[str]:
    """Accept ``"a,b , c"`` or a YAML list; empty items are dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(v).strip() for v in value if str(v).strip()]
    raise ValueError("expected a comma-separated list")


def parse_bool(value: Any) -> Any:
    """Accept true/false/1/0/yes/no/on/off (any case) besides real booleans."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"true", "1", "yes", "on"}:
            return True
        if lowered in {"false", "0", "no", "off", ""}:
            return False
        raise ValueError(f"{value!r} is not a boolean; use true or false")
    return value


def _parse_cidrs(value: Any) -> list[str]:
    out = []
    for item in split_commas(value):
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not a CIDR like 198.18.0.0/15 or fd00::/8") from None
    return out


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds, written as ``500ms``, ``5s``, ``1m30s`` (or a plain number of seconds)."""

ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]
"""A number of bytes, written ``1048576``, ``64KiB``, ``512MiB`` or ``2GiB`` (binary units)."""

CommaList = Annotated[list[str], BeforeValidator(split_commas)]
"""A list of strings, written ``a,b,c`` in the environment and flags, or as a YAML list."""

Bool = Annotated[bool, BeforeValidator(parse_bool)]
"""A boolean, written true/false (also 1/0, yes/no, on/off)."""

CidrList = Annotated[list[str], BeforeValidator(_parse_cidrs)]
"""A list of IP networks, written ``198.18.0.0/15,fd00::/8``."""


_PEM_LABELS = {
    "certificate": ("CERTIFICATE",),
    "key": ("PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY"),
}


def check_pem_file(setting: str, path: str, kind: str = "certificate") -> None:
    """Raise ``ValueError`` naming ``setting`` unless ``path`` is a readable PEM file holding a
    ``kind`` (``certificate`` or ``key``): a DER file or a wrong path fails here, at start,
    instead of at the first TLS handshake."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 20)
    except OSError as exc:
        raise ValueError(f"cannot read {setting} file {path}: {exc.strerror or exc}") from None
    labels = _PEM_LABELS[kind]
    if not any(b"-----BEGIN " + label.encode() + b"-----" in head for label in labels):
        raise ValueError(
            f"{setting} file {path} is not a PEM {kind} (no '-----BEGIN {labels[0]}-----' line)"
        )


def parse_host_port(value: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` -> (host, port); ``ValueError`` otherwise."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r} is not [address]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"{value!r} is not host:port (write an IPv6 address as [addr]:port)")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port with a port from 1 to 65535")
    return host, int(port)
