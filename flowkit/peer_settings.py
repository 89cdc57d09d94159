"""Settings pieces shared by the exporters that send to a peer: TLS files, retry backoff, disk
spool.

The ``grpc``, ``otlp``, ``ipfix`` and ``kafka`` exporters take the same kinds of settings under
their own prefixes (``TARGET_TLS_CA_CERT_PATH``, ``OTLP_RETRY_MAX_BACKOFF``,
``KAFKA_SPOOL_DIR``...). The fields are declared in each settings model, one line each, because
the field name is the setting's name; what they share is here, written once: the field
definitions (default, bounds, description) and the checks across fields. A plugin that sends to
a peer can use them the same way::

    class HttpSettings(BaseModel):
        http_tls_ca_cert_path: str = tls_ca_cert_path("the server's")
        http_tls_user_cert_path: str = tls_user_cert_path("HTTP_TLS_USER_KEY_PATH")
        http_tls_user_key_path: str = tls_user_key_path("HTTP_TLS_USER_CERT_PATH")
        http_retry_initial_backoff: Duration = retry_initial_backoff("a failed request")
        http_retry_max_backoff: Duration = retry_max_backoff("a failed request")

        @model_validator(mode="after")
        def _check(self) -> HttpSettings:
            check_tls_files("HTTP", self.http_tls_ca_cert_path, self.http_tls_user_cert_path,
                            self.http_tls_user_key_path)
            check_backoff("HTTP", self.http_retry_initial_backoff, self.http_retry_max_backoff)
            return self

and build its :class:`~flowkit.delivery.Sender` with ``RetryPolicy(initial, maximum)``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from flowkit.delivery import RetryPolicy
from flowkit.settings_types import check_pem_file

__all__ = [
    "check_backoff",
    "check_tls_files",
    "retry_initial_backoff",
    "retry_max_backoff",
    "spool_dir",
    "spool_fsync",
    "spool_max_bytes",
    "spool_segment_bytes",
    "tls_ca_cert_path",
    "tls_user_cert_path",
    "tls_user_key_path",
]

DEFAULT_RETRY = RetryPolicy()
"""The backoff every exporter starts from: 0.5 s, doubling up to 30 s."""


# -- TLS ---------------------------------------------------------------------------------------
def tls_ca_cert_path(whose: str, *, turns_tls_on: bool = True) -> Any:
    """``<X>_TLS_CA_CERT_PATH``: PEM file of the CA that signed ``whose`` certificate(s)
    (``"the collector's"``)."""
    return Field(default="", description=f"PEM file of the CA that signed {whose} certificate"
                 + ("; turns TLS on." if turns_tls_on else "s."))


def tls_user_cert_path(key_setting: str) -> Any:
    """``<X>_TLS_USER_CERT_PATH``: the client certificate of mutual TLS."""
    return Field(default="", description=f"PEM client certificate for mutual TLS (with "
                 f"{key_setting}).")


def tls_user_key_path(cert_setting: str) -> Any:
    """``<X>_TLS_USER_KEY_PATH``: the private key of the client certificate."""
    return Field(default="", description=f"PEM private key of {cert_setting}, for mutual TLS.")


def check_tls_files(prefix: str, ca: str, cert: str, key: str) -> None:
    """The TLS files of ``<prefix>_TLS_CA_CERT_PATH``, ``<prefix>_TLS_USER_CERT_PATH`` and
    ``<prefix>_TLS_USER_KEY_PATH``: each set one is a readable PEM file of its kind, and the
    client certificate and key go together. Raises ``ValueError`` naming the setting."""
    if ca:
        check_pem_file(f"{prefix}_TLS_CA_CERT_PATH", ca)
    if bool(cert) != bool(key):
        raise ValueError(
            f"{prefix}_TLS_USER_CERT_PATH and {prefix}_TLS_USER_KEY_PATH go together: set both "
            "for mutual TLS, or neither"
        )
    if cert:
        check_pem_file(f"{prefix}_TLS_USER_CERT_PATH", cert)
        check_pem_file(f"{prefix}_TLS_USER_KEY_PATH", key, "key")


def _scoped(scope: str, text: str) -> str:
    """``text`` after ``scope`` (``"TCP: "``), lower-cased at its start when there is one."""
    return scope + (text[:1].lower() + text[1:] if scope else text)


# -- retry -------------------------------------------------------------------------------------
def retry_initial_backoff(what: str, scope: str = "") -> Any:
    """``<X>_RETRY_INITIAL_BACKOFF``: the wait before the first retry of ``what``."""
    return Field(default=DEFAULT_RETRY.initial, gt=0,
                 description=_scoped(scope, f"Wait before the first retry of {what} (doubles)."))


def retry_max_backoff(what: str, scope: str = "") -> Any:
    """``<X>_RETRY_MAX_BACKOFF``: the longest wait between two retries of ``what``."""
    return Field(default=DEFAULT_RETRY.maximum, gt=0,
                 description=_scoped(scope, f"Longest wait between two retries of {what}."))


def check_backoff(prefix: str, initial: float, maximum: float) -> None:
    """``<prefix>_RETRY_MAX_BACKOFF`` may not be shorter than ``<prefix>_RETRY_INITIAL_BACKOFF``."""
    if maximum < initial:
        raise ValueError(
            f"{prefix}_RETRY_MAX_BACKOFF must not be shorter than {prefix}_RETRY_INITIAL_BACKOFF"
        )


# -- disk spool --------------------------------------------------------------------------------
def spool_dir(outage: str, units: str, scope: str = "") -> Any:
    """``<X>_SPOOL_DIR``: the spool directory (empty: no spool); ``outage`` says when it is
    used (``"the collector is unreachable"``), ``units`` what it keeps."""
    return Field(
        default="",
        description=_scoped(scope, f"Absolute path of a directory for an on-disk spool: while "
                            f"{outage}, {units} are written there and sent in order once that "
                            "is over, also after a restart. Empty: no spool."),
    )


def spool_max_bytes() -> Any:
    """``<X>_SPOOL_MAX_BYTES``: the spool's byte budget."""
    return Field(default=1 << 30, ge=0,
                 description="Most bytes the spool takes on disk (e.g. 512MiB); beyond it the "
                 "oldest segments are dropped and counted (reason spool_full).")


def spool_segment_bytes() -> Any:
    """``<X>_SPOOL_SEGMENT_BYTES``: the size of one segment file."""
    return Field(default=16 << 20, ge=0,
                 description="Size at which the spool starts a new segment file (the unit the "
                 "budget drops).")


def spool_fsync() -> Any:
    """``<X>_SPOOL_FSYNC``: when spooled data is forced to disk."""
    return Field(default="segment",
                 description="When spooled data is forced to disk: always (every record), segment "
                 "(when a segment is complete and at stop) or never (left to the kernel).")
