"""The distribution spec's error codes, their HTTP statuses and JSON bodies.

Owns :class:`RegistryHTTPError`, which a handler raises and the app turns into
``{"errors": [{"code", "message", "detail"}]}`` with the code's status.  Messages are the
ones distribution uses, so clients that print them show familiar text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from strata.errors import StrataError

__all__ = ["CODES", "ErrorCode", "RegistryHTTPError", "error_body"]


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One error code of the spec: its name, default message and HTTP status."""

    code: str
    message: str
    status: int


CODES: Mapping[str, ErrorCode] = {
    c.code: c
    for c in (
        ErrorCode("BLOB_UNKNOWN", "blob unknown to registry", 404),
        ErrorCode("BLOB_UPLOAD_INVALID", "blob upload invalid", 400),
        ErrorCode("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", 404),
        ErrorCode("DIGEST_INVALID", "provided digest did not match uploaded content", 400),
        ErrorCode("MANIFEST_BLOB_UNKNOWN", "blob unknown to registry", 400),
        ErrorCode("MANIFEST_INVALID", "manifest invalid", 400),
        ErrorCode("MANIFEST_UNKNOWN", "manifest unknown", 404),
        ErrorCode("NAME_INVALID", "invalid repository name", 400),
        ErrorCode("NAME_UNKNOWN", "repository name not known to registry", 404),
        ErrorCode("SIZE_INVALID", "provided length did not match content length", 400),
        ErrorCode("TAG_INVALID", "manifest tag did not match URI", 400),
        ErrorCode("UNAUTHORIZED", "authentication required", 401),
        ErrorCode("DENIED", "requested access to the resource is denied", 403),
        ErrorCode("UNSUPPORTED", "The operation is unsupported.", 405),
        ErrorCode("TOOMANYREQUESTS", "too many requests", 429),
        ErrorCode("RANGE_INVALID", "invalid content range", 416),
        ErrorCode("PAGINATION_NUMBER_INVALID", "invalid number of results requested", 400),
        ErrorCode("UNKNOWN", "unknown error", 500),
    )
}


class RegistryHTTPError(StrataError):
    """An error answer of the registry API.

    Attributes:
        code: the spec's error code (a key of :data:`CODES`).
        status: the HTTP status (the code's, unless overridden).
        detail: structured detail for the body (JSON-serialisable), or ``None``.
        headers: extra response headers (``WWW-Authenticate``, ``Range``).
        more: further ``(code, detail)`` entries of the same answer (every missing blob of
            a manifest, as distribution lists them).
    """

    def __init__(
        self,
        code: str,
        detail: object = None,
        *,
        message: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        more: tuple[tuple[str, object], ...] = (),
    ) -> None:
        spec = CODES[code]
        super().__init__(message or spec.message)
        self.code = code
        self.status = status or spec.status
        self.detail = detail
        self.headers = dict(headers or {})
        self.more = more


def error_body(error: RegistryHTTPError) -> bytes:
    """The JSON body the spec prescribes for ``error``."""
    entry: dict[str, object] = {"code": error.code, "message": error.message}
    if error.detail is not None:
        entry["detail"] = error.detail
    entries = [entry]
    for code, detail in error.more:
        extra: dict[str, object] = {"code": code, "message": CODES[code].message}
        if detail is not None:
            extra["detail"] = detail
        entries.append(extra)
    return json.dumps({"errors": entries}, separators=(",", ":")).encode() + b"\n"
