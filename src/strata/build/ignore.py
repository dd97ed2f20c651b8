"""``.dockerignore``: reading the file and matching context paths, with docker's semantics.

This module owns the pattern language docker and BuildKit use for build contexts:

- one pattern a line; lines *starting* with ``#`` are comments; surrounding whitespace and
  empty lines are dropped; a UTF-8 byte order mark on the first line is ignored;
- ``!`` makes an exception; each pattern is cleaned like Go's ``filepath.Clean`` and a
  leading ``/`` is stripped (patterns are relative to the context root);
- ``*`` matches any run of characters but ``/``, ``?`` one character but ``/``, ``[...]``
  a class, ``\\`` escapes; ``**`` matches any number of directories (even none);
- a pattern matching a directory matches everything below it;
- patterns are applied in order and the *last* one that matches a path decides.

It must not walk directories (:mod:`strata.build.context` does) nor know the Dockerfile's name:
the Dockerfile and ``.dockerignore`` are always read by the builder, yet an ignore pattern
still hides them from ``COPY``/``ADD``, as docker documents.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from strata.errors import InvalidArgument

__all__ = [
    "IgnoreRules",
    "Pattern",
    "go_clean",
    "read_patterns",
]

_ESCAPE_FOR_REGEX = frozenset(".+()|{}$^")


def go_clean(path: str) -> str:
    """Go's ``path/filepath.Clean`` on a slash-separated path.

    Repeated slashes collapse, ``.`` elements go, ``..`` removes the previous element (and is
    dropped after a leading ``/``), a trailing slash goes, and the empty path becomes ``.``.
    """
    if path == "":
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    cleaned = "/".join(out)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


def read_patterns(text: str) -> list[str]:
    """The patterns of a ``.dockerignore`` file, normalised as docker's ``ReadAll`` does.

    Args:
        text: the file's content.

    Returns:
        Patterns in file order, exceptions keeping their ``!`` prefix.
    """
    patterns: list[str] = []
    for number, raw in enumerate(text.split("\n")):
        line = raw[1:] if number == 0 and raw.startswith("\ufeff") else raw
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        patterns.append("!" + pattern if invert else pattern)
    return patterns


class _MatchType(StrEnum):
    EXACT = "exact"
    PREFIX = "prefix"
    SUFFIX = "suffix"
    REGEXP = "regexp"


def _check_go_match_syntax(pattern: str) -> None:
    """Reject what Go's ``filepath.Match`` calls ``ErrBadPattern`` (unclosed class, bad range)."""
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            i += 1
            if i < n and pattern[i] == "^":
                i += 1
            first = True
            closed = False
            while i < n:
                c = pattern[i]
                if c == "]" and not first:
                    closed = True
                    break
                first = False
                if c == "\\":
                    i += 1
                    if i >= n:
                        break
                if i + 2 < n and pattern[i + 1] == "-" and pattern[i + 2] != "]":
                    lo = pattern[i]
                    hi = pattern[i + 2]
                    if hi == "\\" and i + 3 < n:
                        hi = pattern[i + 3]
                        i += 1
                    if lo > hi:
                        raise InvalidArgument(f"syntax error in pattern {pattern!r}: bad range")
                    i += 2
                i += 1
            if not closed:
                raise InvalidArgument(f"syntax error in pattern {pattern!r}: unterminated [")
            i += 1
            continue
        i += 1
    if pattern.endswith("\\") and not pattern.endswith("\\\\"):
        raise InvalidArgument(f"syntax error in pattern {pattern!r}: trailing backslash")


@dataclass(frozen=True, slots=True)
class Pattern:
    """One compiled pattern.

    Attributes:
        text: the cleaned pattern without ``!``.
        exclusion: it was an exception (``!pattern``).
    """

    text: str
    exclusion: bool
    match_type: _MatchType
    regex: re.Pattern[str] | None

    @classmethod
    def compile(cls, raw: str) -> Pattern:
        """Compile one pattern line (already normalised by :func:`read_patterns` or not).

        Raises:
            InvalidArgument: ``!`` alone or a malformed ``[...]`` class.
        """
        text = go_clean(raw.strip())
        exclusion = False
        if text.startswith("!"):
            if len(text) == 1:
                raise InvalidArgument('illegal exclusion pattern: "!"')
            exclusion = True
            text = text[1:]
        _check_go_match_syntax(text)
        match_type = _MatchType.EXACT
        regex = "^"
        i = 0
        n = len(text)
        index = 0
        while i < n:
            ch = text[i]
            i += 1
            if ch == "*":
                if i < n and text[i] == "*":
                    i += 1
                    if i < n and text[i] == "/":
                        i += 1
                    if i >= n:
                        if match_type == _MatchType.EXACT:
                            match_type = _MatchType.PREFIX
                        else:
                            regex += ".*"
                            match_type = _MatchType.REGEXP
                    else:
                        regex += "(.*/)?"
                        match_type = _MatchType.REGEXP
                    if index == 0:
                        match_type = _MatchType.SUFFIX
                else:
                    regex += "[^/]*"
                    match_type = _MatchType.REGEXP
            elif ch == "?":
                regex += "[^/]"
                match_type = _MatchType.REGEXP
            elif ch in _ESCAPE_FOR_REGEX:
                regex += "\\" + ch
            elif ch == "\\":
                if i < n:
                    regex += "\\" + text[i]
                    i += 1
                else:
                    regex += "\\\\"
            elif ch in "[]":
                if ch == "[" and i < n and text[i] == "^":
                    regex += "[^"
                    i += 1
                else:
                    regex += ch
                match_type = _MatchType.REGEXP
            else:
                regex += ch
            index += 1
        compiled: re.Pattern[str] | None = None
        if match_type == _MatchType.REGEXP:
            try:
                compiled = re.compile(regex + "$", re.DOTALL)
            except re.error as exc:
                raise InvalidArgument(f"syntax error in pattern {raw!r}: {exc}") from None
        return cls(text=text, exclusion=exclusion, match_type=match_type, regex=compiled)

    def matches(self, path: str) -> bool:
        """Whether the slash-separated relative ``path`` matches (parents not considered)."""
        if self.match_type == _MatchType.EXACT:
            return path == self.text
        if self.match_type == _MatchType.PREFIX:
            return path.startswith(self.text[:-2])
        if self.match_type == _MatchType.SUFFIX:
            suffix = self.text[2:]
            if path.endswith(suffix):
                return True
            return suffix.startswith("/") and path == suffix[1:]
        assert self.regex is not None
        return self.regex.match(path) is not None


class IgnoreRules:
    """An ordered list of patterns deciding which context paths are ignored.

    ``IgnoreRules.parse(text)`` reads a ``.dockerignore``; an empty rule set ignores nothing.
    """

    __slots__ = ("_patterns", "has_exclusions")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        """Compile ``patterns`` (docker's ``patternmatcher.New``).

        Raises:
            InvalidArgument: a malformed pattern.
        """
        compiled: list[Pattern] = []
        for raw in patterns:
            if not raw.strip():
                continue
            compiled.append(Pattern.compile(raw))
        self._patterns: tuple[Pattern, ...] = tuple(compiled)
        self.has_exclusions = any(p.exclusion for p in compiled)

    @classmethod
    def parse(cls, text: str) -> IgnoreRules:
        """Rules from the content of a ``.dockerignore`` file.

        Raises:
            InvalidArgument: a malformed pattern.
        """
        return cls(read_patterns(text))

    @property
    def patterns(self) -> Sequence[Pattern]:
        """The compiled patterns in order."""
        return self._patterns

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def ignored(self, path: str) -> bool:
        """Whether the context-relative ``path`` is ignored (docker's ``MatchesOrParentMatches``).

        A pattern matches a path when it matches the path itself or one of its parent
        directories; the last matching pattern decides (an exception re-includes).

        Args:
            path: slash-separated, relative to the context root (a leading ``/`` or ``./``
                is accepted and removed).
        """
        path = go_clean(path.lstrip("/")) if path else "."
        matched = False
        parent = path.rsplit("/", 1)[0] if "/" in path else "."
        parent_parts = parent.split("/") if parent != "." else []
        for pattern in self._patterns:
            if pattern.exclusion != matched:
                continue
            match = pattern.matches(path)
            if not match:
                for i in range(len(parent_parts)):
                    if pattern.matches("/".join(parent_parts[: i + 1])):
                        match = True
                        break
            if match:
                matched = not pattern.exclusion
        return matched

    def may_include_below(self, directory: str) -> bool:
        """Whether some path under an ignored ``directory`` could be re-included by an exception.

        A walker may skip an ignored directory's content when this is False.
        """
        if not self.has_exclusions:
            return False
        prefix = go_clean(directory.lstrip("/"))
        for pattern in self._patterns:
            if not pattern.exclusion:
                continue
            if pattern.match_type != _MatchType.EXACT:
                return True
            if pattern.text == prefix or pattern.text.startswith(prefix + "/") or prefix == ".":
                return True
        return False
