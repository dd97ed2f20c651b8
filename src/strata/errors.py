"""The one exception tree of strata.

Errors are classed by what the caller should do about them (containerd's ``errdefs``):
retry, fix the input, create the thing first, authenticate.  Every package raises only
these (or subclasses of them) and translates foreign exceptions at its boundary with
``raise ... from exc``.  This module imports nothing from strata.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "CannotExecute",
    "CommandNotFound",
    "DigestMismatch",
    "DockerfileError",
    "FailedPrecondition",
    "InvalidArgument",
    "InvalidContent",
    "NotFound",
    "NotSupported",
    "SizeMismatch",
    "StrataError",
    "Unauthorized",
    "Unavailable",
    "UnsafeArchive",
]


class StrataError(Exception):
    """Base of every error strata raises on purpose.

    ``exit_code`` is what the CLI exits with when this error ends a command.
    """

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(StrataError):
    """An image, tag, blob, snapshot or container does not exist."""


class AlreadyExists(StrataError):
    """The thing to create exists already."""


class InvalidArgument(StrataError):
    """A reference, flag or digest string is malformed."""


class InvalidContent(InvalidArgument):
    """Malformed content: a manifest, config, archive or Dockerfile.

    Attributes:
        path: the file or archive member concerned, when known.
        line: the line number, when known.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.line = line


class DigestMismatch(InvalidContent):
    """Bytes did not hash to the digest they were announced with."""

    def __init__(self, message: str, *, expected: str, actual: str, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.expected = expected
        self.actual = actual


class DockerfileError(InvalidContent):
    """A Dockerfile (or a build's context) is malformed; ``path`` and ``line`` say where.

    ``str()`` reads ``Dockerfile:3: unknown instruction: FOO`` like a compiler error.
    """

    def __init__(self, message: str, *, path: str = "Dockerfile", line: int | None = None) -> None:
        super().__init__(message, path=path, line=line)
        self.reason = message

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.path}: {self.reason}"
        return f"{self.path}:{self.line}: {self.reason}"


class SizeMismatch(InvalidContent):
    """Bytes were not as many as announced."""

    def __init__(self, message: str, *, expected: int, actual: int, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.expected = expected
        self.actual = actual


class UnsafeArchive(InvalidContent):
    """A layer archive member would escape the target or cannot be created safely.

    Attributes:
        member: the archive member's name.
        reason: why it was refused (``"../" in path``, ``symlink escapes root``, ...).
    """

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"unsafe layer member {member!r}: {reason}", path=member)
        self.member = member
        self.reason = reason


class FailedPrecondition(StrataError):
    """The operation is not allowed in the current state (image in use, snapshot has children)."""


class Unauthorized(StrataError):
    """A registry refused the credentials (401/403)."""

    def __init__(self, message: str, *, registry: str = "", scope: str = "") -> None:
        super().__init__(message)
        self.registry = registry
        self.scope = scope


class Unavailable(StrataError):
    """A network failure, 5xx or 429, or a resource held by another process."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class NotSupported(StrataError):
    """This host or format lacks what the operation needs (no overlay, unknown media type)."""


class CommandNotFound(NotFound):
    """A container's command does not exist in its rootfs (docker run exits 127)."""

    exit_code = 127


class CannotExecute(FailedPrecondition):
    """A container's command exists but cannot be executed (docker run exits 126)."""

    exit_code = 126
