"""Registry errors: the distribution spec's error body mapped onto strata's error tree.

A registry answers a failed request with ``{"errors": [{"code", "message", "detail"}]}``
(distribution-spec "Error Codes").  :class:`RegistryError` carries those entries and the HTTP
status; its subclasses also derive from the strata error a caller acts on (``NotFound``,
``Unauthorized``, ``Unavailable``, ``InvalidArgument``), as go-containerregistry's
``transport.Error`` does.  This module performs no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from strata.errors import InvalidArgument, NotFound, StrataError, Unauthorized, Unavailable

__all__ = [
    "ErrorInfo",
    "RegistryError",
    "RegistryInvalid",
    "RegistryNotFound",
    "RegistryUnauthorized",
    "RegistryUnavailable",
    "error_for_status",
    "parse_errors",
]


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """One entry of a registry's ``errors`` array."""

    code: str
    message: str
    detail: str = ""

    def __str__(self) -> str:
        out = f"{self.code}: {self.message}" if self.message else self.code
        return f"{out} ({self.detail})" if self.detail else out


class RegistryError(StrataError):
    """A registry refused a request.

    Attributes:
        status: the HTTP status code (0 when there was no response).
        errors: the spec error entries the registry sent (may be empty).
        registry: the registry host.
    """

    def __init__(self, message: str, *, status: int = 0, errors: tuple[ErrorInfo, ...] = (),
                 registry: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.errors = errors
        self.registry = registry

    @property
    def code(self) -> str:
        """The first error code (``MANIFEST_UNKNOWN``, ``DENIED``...), or ``""``."""
        return self.errors[0].code if self.errors else ""


class RegistryNotFound(RegistryError, NotFound):
    """404: ``NAME_UNKNOWN``, ``MANIFEST_UNKNOWN``, ``BLOB_UNKNOWN``..."""


class RegistryUnauthorized(RegistryError, Unauthorized):
    """401/403: ``UNAUTHORIZED``, ``DENIED``."""

    def __init__(self, message: str, *, status: int = 0, errors: tuple[ErrorInfo, ...] = (),
                 registry: str = "", scope: str = "") -> None:
        super().__init__(message, status=status, errors=errors, registry=registry)
        self.scope = scope


class RegistryUnavailable(RegistryError, Unavailable):
    """5xx, 429 (``TOOMANYREQUESTS``), or no answer at all."""

    def __init__(self, message: str, *, status: int = 0, errors: tuple[ErrorInfo, ...] = (),
                 registry: str = "", retryable: bool = True) -> None:
        super().__init__(message, status=status, errors=errors, registry=registry)
        self.retryable = retryable


class RegistryInvalid(RegistryError, InvalidArgument):
    """400-class answers: ``MANIFEST_INVALID``, ``DIGEST_INVALID``, ``BLOB_UPLOAD_INVALID``..."""


def parse_errors(body: bytes) -> tuple[ErrorInfo, ...]:
    """The ``errors`` entries of a response body; empty when it is not the spec's shape."""
    try:
        obj = json.loads(body)
    except ValueError:
        return ()
    if not isinstance(obj, dict) or not isinstance(obj.get("errors"), list):
        return ()
    out: list[ErrorInfo] = []
    for entry in obj["errors"]:
        if not isinstance(entry, dict):
            continue
        detail = entry.get("detail")
        if detail is None:
            detail_text = ""
        elif isinstance(detail, str):
            detail_text = detail
        else:
            detail_text = json.dumps(detail, sort_keys=True)
        out.append(ErrorInfo(str(entry.get("code") or "UNKNOWN"), str(entry.get("message") or ""),
                             detail_text))
    return tuple(out)


def error_for_status(status: int, body: bytes, *, what: str, registry: str,
                     scope: str = "") -> RegistryError:
    """The typed error for a failed response.

    Args:
        status: the HTTP status.
        body: the response body (the spec's error JSON, or anything).
        what: what was asked for (``manifest localhost:5000/a:b``), for the message.
        registry: the registry host.
        scope: the token scope in use, for 401/403.
    """
    errors = parse_errors(body)
    detail = "; ".join(str(e) for e in errors)
    if not detail:
        text = body[:200].decode(errors="replace").strip()
        detail = f"HTTP {status}" + (f": {text}" if text and not text.startswith("<") else "")
    message = f"{what}: {detail}"
    if status in (401, 403):
        return RegistryUnauthorized(f"{what}: unauthorized: {detail}", status=status, errors=errors,
                                    registry=registry, scope=scope)
    if status == 404:
        return RegistryNotFound(message, status=status, errors=errors, registry=registry)
    if status == 429 or status >= 500:
        return RegistryUnavailable(message, status=status, errors=errors, registry=registry)
    return RegistryInvalid(message, status=status, errors=errors, registry=registry)
