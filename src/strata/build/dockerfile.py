"""The Dockerfile language: parser and syntax tree, following BuildKit's frontend.

This module owns turning Dockerfile text into a :class:`Dockerfile` value: parser directives
(``# syntax=``, ``# escape=``, only at the very top), comments, line continuations (comments
and empty lines inside them), JSON (exec) and shell forms, builder flags, heredocs, the split
into meta ``ARG`` s and stages, and the per-instruction checks BuildKit makes before building
(argument counts, known flags, ``FROM ... AS name`` names, ``ONBUILD`` triggers, ``HEALTHCHECK``
options). Errors carry the file and line (:class:`strata.errors.DockerfileError`).

It must not expand variables (the executor knows the environment at each step and calls
:mod:`strata.build.expand`) nor touch files.

``Instruction.args`` holds, per form:

- JSON form (``RUN``/``CMD``/``ENTRYPOINT``/``SHELL``/``COPY``/``ADD``/``VOLUME``): the strings.
- Shell form: a 1-tuple with the raw text after the flags (``()`` when there is none).
- ``HEALTHCHECK``: docker's ``Test`` shape, ``("NONE",)``, ``("CMD", *argv)`` (JSON form) or
  ``("CMD-SHELL", text)``.
- ``ONBUILD``: the trigger's text (what docker stores in ``config.OnBuild``), and
  ``Instruction.trigger`` is the trigger parsed.

``Instruction.words`` is the raw (unexpanded) split BuildKit makes before expansion:
whitespace-delimited for ``COPY``/``ADD``/``VOLUME``/``EXPOSE``/``FROM`` (quotes kept, each
word is then expanded on its own), quote-aware for ``ENV``/``LABEL``/``ARG``;
:meth:`Instruction.pairs` gives the ``key=value`` pairs of the latter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from strata.errors import DockerfileError

from .expand import expand_words

__all__ = [
    "Dockerfile",
    "Flags",
    "Heredoc",
    "Instruction",
    "Stage",
    "Warning",
    "parse",
    "parse_duration",
    "parse_instruction",
]



class Flags(Mapping[str, tuple[str, ...]]):
    """An immutable, hashable mapping of flag name -> values (so instructions can be hashed)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self._items: dict[str, tuple[str, ...]] = dict(items or {})

    def __getitem__(self, key: str) -> tuple[str, ...]:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items.items())))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Flags({self._items!r})"


_EMPTY_FLAGS = Flags()

#: Every instruction BuildKit knows (lower-case keyword -> how its arguments are parsed).
_KNOWN = frozenset(
    {
        "add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck",
        "label", "maintainer", "onbuild", "run", "shell", "stopsignal", "user", "volume", "workdir",
    }
)

#: Flags each instruction accepts: name -> kind ("str", "bool", "list" = repeatable).
_FLAGS: dict[str, dict[str, str]] = {
    "FROM": {"platform": "str"},
    "RUN": {"mount": "list", "network": "str", "security": "str"},
    "COPY": {
        "from": "str",
        "chown": "str",
        "chmod": "str",
        "link": "bool",
        "parents": "bool",
        "exclude": "list",
    },
    "ADD": {
        "chown": "str",
        "chmod": "str",
        "link": "bool",
        "keep-git-dir": "bool",
        "checksum": "str",
        "exclude": "list",
    },
    "HEALTHCHECK": {
        "interval": "str",
        "timeout": "str",
        "start-period": "str",
        "start-interval": "str",
        "retries": "str",
    },
}

_HEREDOC_INSTRUCTIONS = frozenset({"RUN", "COPY", "ADD"})
_JSON_CAPABLE = frozenset({"RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"})
_WHITESPACE_SPLIT = frozenset({"COPY", "ADD", "VOLUME", "EXPOSE", "FROM"})
_PAIR_INSTRUCTIONS = frozenset({"ENV", "LABEL", "ARG"})

_RE_DIRECTIVE = re.compile(r"^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$")
_VALID_DIRECTIVES = frozenset({"syntax", "escape", "check"})
_RE_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_RE_HEREDOC = re.compile(r"^(\d*)<<(-?)([^<]*)$")
_RE_LEADING_TABS = re.compile(r"(?m)^\t+")
_RE_STAGE_NAME = re.compile(r"^[a-z][a-z0-9\-_.]*$")
_RE_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


@dataclass(frozen=True, slots=True)
class Heredoc:
    """A here-document attached to a ``RUN``/``COPY``/``ADD`` (``<<EOF`` ... ``EOF``).

    Attributes:
        name: the delimiter word without quotes (``EOF``); for ``COPY <<EOF /dst`` it is
            also the source's name.
        content: the body, every line ending in ``\\n``; with ``chomp`` the leading tabs of
            each line are already removed.
        expand: False when the delimiter was quoted (``<<'EOF'``, ``<<"EOF"``): no expansion
            of the body.
        chomp: ``<<-EOF``.
        fd: the file descriptor written before ``<<`` (``3<<EOF``), or None.
    """

    name: str
    content: str
    expand: bool
    chomp: bool
    fd: int | None = None


@dataclass(frozen=True, slots=True)
class Instruction:
    """One instruction, as written (nothing expanded).

    Attributes:
        keyword: upper-case keyword (``RUN``, ``COPY``...).
        args: see the module docstring.
        json_form: the arguments were a JSON array (exec form).
        flags: ``--name=value`` flags by name; a repeatable flag (``--mount``, ``--exclude``)
            holds every value in order; a boolean flag given bare holds ``("true",)``.
        heredocs: here-documents, in the order of their ``<<`` words.
        line: first line (1-based), end_line: last line including heredoc bodies.
        original: the logical line (continuations joined) as BuildKit keeps it.
        words: the raw split before expansion (see the module docstring).
        trigger: for ``ONBUILD``, the trigger instruction.
    """

    keyword: str
    args: tuple[str, ...]
    json_form: bool
    flags: Mapping[str, tuple[str, ...]]
    heredocs: tuple[Heredoc, ...]
    line: int
    end_line: int
    original: str
    words: tuple[str, ...] = ()
    trigger: Instruction | None = None

    def flag(self, name: str) -> str | None:
        """The last value of flag ``name`` (``--from=x`` -> ``"x"``), or None if absent."""
        values = self.flags.get(name)
        return values[-1] if values else None

    def bool_flag(self, name: str) -> bool:
        """Whether boolean flag ``name`` (``--link``, ``--keep-git-dir``) is on."""
        value = self.flag(name)
        return value is not None and value.lower() in ("true", "1", "")

    def pairs(self) -> tuple[tuple[str, str | None], ...]:
        """Raw ``(key, value)`` pairs of ``ENV``/``LABEL``/``ARG`` (value None: ``ARG name``).

        The legacy one-pair form ``ENV key value with spaces`` gives one pair whose value is
        the rest of the line. Keys and values still need :func:`strata.build.expand.expand`
        (which also removes their quotes).
        """
        if self.keyword not in _PAIR_INSTRUCTIONS:
            return ()
        words = self.words
        if self.keyword == "ARG":
            out: list[tuple[str, str | None]] = []
            for word in words:
                key, sep, value = word.partition("=")
                out.append((key, value if sep else None))
            return tuple(out)
        if words and "=" not in words[0]:
            text = self.args[0] if self.args else ""
            parts = _RE_WHITESPACE.split(text.strip(), maxsplit=1)
            return ((parts[0], parts[1] if len(parts) > 1 else ""),)
        return tuple((w.partition("=")[0], w.partition("=")[2]) for w in words)

    @property
    def shell_text(self) -> str:
        """The raw text of a shell-form instruction (``""`` for JSON form or no arguments)."""
        return "" if self.json_form or not self.args else self.args[0]


@dataclass(frozen=True, slots=True)
class Stage:
    """One ``FROM`` and the instructions up to the next.

    Attributes:
        index: position among the stages (``COPY --from=0``).
        name: the ``AS`` name, lower-cased, or None.
        base: the image (or earlier stage name, or ``scratch``) as written: may hold ``$ARG``
            references to expand with the meta args.
        platform: the ``--platform`` flag as written, or None.
        instructions: the stage's instructions (the ``FROM`` itself excluded).
        line: the ``FROM`` line.
        from_instruction: the ``FROM`` instruction itself.
    """

    index: int
    name: str | None
    base: str
    platform: str | None
    instructions: tuple[Instruction, ...]
    line: int
    from_instruction: Instruction | None = None


@dataclass(frozen=True, slots=True)
class Warning:
    """A problem BuildKit reports without failing (an empty continuation line)."""

    line: int
    message: str


@dataclass(frozen=True, slots=True)
class Dockerfile:
    """A parsed Dockerfile.

    Attributes:
        meta_args: the ``ARG`` instructions before the first ``FROM``.
        stages: the stages in order.
        escape: the escape character (``\\`` unless ``# escape=`` said otherwise).
        syntax: the ``# syntax=`` directive's value, or None (recorded, not acted on).
        path: the file name used in errors.
        warnings: non-fatal findings.
    """

    meta_args: tuple[Instruction, ...]
    stages: tuple[Stage, ...]
    escape: str
    syntax: str | None
    path: str
    warnings: tuple[Warning, ...] = field(default=())

    def stage(self, name_or_index: str) -> Stage:
        """The stage named ``name_or_index`` (case-insensitive) or at that index.

        Raises:
            DockerfileError: no such stage.
        """
        wanted = name_or_index.lower()
        for stage in self.stages:
            if stage.name == wanted:
                return stage
        if name_or_index.isdigit() and int(name_or_index) < len(self.stages):
            return self.stages[int(name_or_index)]
        raise DockerfileError(f"stage {name_or_index!r} not found", path=self.path)


class _Fail(Exception):
    """Internal: a message to be raised as DockerfileError with the current location."""


# --------------------------------------------------------------------------------------------
# Lines


def _trim_newline(line: str) -> str:
    if line.endswith("\r"):
        return line[:-1]
    return line


def _is_comment(line: str) -> bool:
    return _trim_newline(line).lstrip().startswith("#")


class _Directives:
    def __init__(self) -> None:
        self.escape = "\\"
        self.syntax: str | None = None
        self.done = False
        self.seen: set[str] = set()
        self.continuation = re.compile(r"\\[ \t]*$")

    def set_escape(self, value: str) -> None:
        if value not in ("`", "\\"):
            raise _Fail(f"invalid escape token '{value}' does not match ` or \\")
        self.escape = value
        self.continuation = re.compile(re.escape(value) + r"[ \t]*$")

    def possible_directive(self, line: str) -> None:
        if self.done:
            return
        match = _RE_DIRECTIVE.match(line)
        if match is None:
            self.done = True
            return
        key = match.group(1).lower()
        if key not in _VALID_DIRECTIVES:
            self.done = True
            return
        if key in self.seen:
            raise _Fail(f"only one {key} parser directive can be used")
        self.seen.add(key)
        if key == "escape":
            self.set_escape(match.group(2))
        elif key == "syntax":
            self.syntax = match.group(2)

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        match = self.continuation.search(line)
        if match is None:
            return line, True
        return line[: match.start()], False


def _process_line(d: _Directives, token: str, *, strip_left: bool) -> str:
    token = _trim_newline(token)
    if strip_left:
        token = token.lstrip()
    d.possible_directive(token)
    if token.startswith("#"):
        return ""
    return token


# --------------------------------------------------------------------------------------------
# Words and flags


def _parse_words(rest: str, escape: str) -> list[str]:
    """BuildKit's ``parseWords``: split on whitespace outside quotes, keeping quotes and escapes."""
    words: list[str] = []
    word = ""
    quote = ""
    blank_ok = False
    phase = "spaces"
    pos = 0
    n = len(rest)
    while pos <= n:
        ch = rest[pos] if pos < n else ""
        if phase == "spaces":
            if pos == n:
                break
            if ch.isspace():
                pos += 1
                continue
            phase = "word"
        if phase in ("word", "quote") and pos == n:
            if blank_ok or word:
                words.append(word)
            break
        if phase == "word":
            if ch.isspace():
                phase = "spaces"
                if blank_ok or word:
                    words.append(word)
                word = ""
                blank_ok = False
                pos += 1
                continue
            if ch in ("'", '"'):
                quote = ch
                blank_ok = True
                phase = "quote"
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue
                word += ch
                pos += 1
                ch = rest[pos]
            word += ch
            pos += 1
            continue
        # in a quote
        if ch == quote:
            phase = "word"
        if ch == escape and quote != "'":
            if pos + 1 == n:
                phase = "word"
                pos += 1
                continue
            word += ch
            pos += 1
            ch = rest[pos]
        word += ch
        pos += 1
    return words


def _extract_flags(line: str) -> tuple[str, list[str]]:
    """BuildKit's ``extractBuilderFlags``: leading ``--flag`` words, then the rest of the line."""
    words: list[str] = []
    word = ""
    quote = ""
    blank_ok = False
    phase = "spaces"
    pos = 0
    n = len(line)
    while pos <= n:
        ch = line[pos] if pos < n else ""
        if phase == "spaces":
            if pos == n:
                break
            if ch.isspace():
                pos += 1
                continue
            if ch != "-" or pos + 1 == n or line[pos + 1] != "-":
                return line[pos:], words
            phase = "word"
        if phase in ("word", "quote") and pos == n:
            if word != "--" and (blank_ok or word):
                words.append(word)
            break
        if phase == "word":
            if ch.isspace():
                phase = "spaces"
                if word == "--":
                    return line[pos:], words
                if blank_ok or word:
                    words.append(word)
                word = ""
                blank_ok = False
                pos += 1
                continue
            if ch in ("'", '"'):
                quote = ch
                blank_ok = True
                phase = "quote"
                pos += 1
                continue
            if ch == "\\":
                if pos + 1 == n:
                    pos += 1
                    continue
                pos += 1
                ch = line[pos]
            word += ch
            pos += 1
            continue
        if ch == quote:
            phase = "word"
            pos += 1
            continue
        if ch == "\\":
            if pos + 1 == n:
                phase = "word"
                pos += 1
                continue
            pos += 1
            ch = line[pos]
        word += ch
        pos += 1
    return "", words


def _parse_flags(keyword: str, raw: list[str]) -> Mapping[str, tuple[str, ...]]:
    allowed = _FLAGS.get(keyword, {})
    out: dict[str, list[str]] = {}
    for word in raw:
        if not word.startswith("--"):
            raise _Fail(f"arg should start with -- : {word}")
        body = word[2:]
        if not body:
            raise _Fail("empty flag name")
        name, sep, value = body.partition("=")
        kind = allowed.get(name)
        if kind is None:
            raise _Fail(f"unknown flag: {name}")
        if kind == "bool":
            if sep and value.lower() not in ("true", "false", "1", "0", ""):
                raise _Fail(f'expecting boolean value for flag {name}, not: {value}')
            value = value if sep else "true"
        elif not sep:
            raise _Fail(f"missing a value on flag: {name}")
        if kind != "list" and name in out:
            raise _Fail(f"duplicate flag specified: {name}")
        out.setdefault(name, []).append(value)
    if not out:
        return _EMPTY_FLAGS
    return Flags({k: tuple(v) for k, v in out.items()})


def _parse_json(rest: str) -> list[str] | None:
    """A JSON array of strings, or None when ``rest`` is not JSON (shell form then)."""
    text = rest.lstrip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(item, str) for item in value):
        raise _Fail("when using JSON array syntax, arrays must be comprised of strings only")
    return value


# --------------------------------------------------------------------------------------------
# Heredocs


def _heredoc_words(line: str) -> list[tuple[int | None, bool, str, bool]]:
    """The ``<<WORD`` words of a line: (fd, chomp, name, expand)."""
    out: list[tuple[int | None, bool, str, bool]] = []
    try:
        words = expand_words(line, {}, escape="\\", raw_quotes=True, raw_escapes=True)
    except DockerfileError:
        return out  # BuildKit ignores a line its lexer cannot split: no heredocs then
    for word in words:
        match = _RE_HEREDOC.match(word)
        if match is None:
            continue
        fd_text, chomp, rest = match.groups()
        try:
            plain = expand_words(rest, {}, escape="\\")
            raw = expand_words(rest, {}, escape="\\", raw_quotes=True)
        except DockerfileError as exc:
            raise _Fail(exc.reason) from None
        if len(plain) != 1:
            continue
        if len(raw) != 1:
            raise _Fail(f"internal lexing of heredoc produced inconsistent results: {rest}")
        quotes = plain[0].count("'") + plain[0].count('"')
        raw_quotes = raw[0].count("'") + raw[0].count('"')
        out.append((int(fd_text) if fd_text else None, chomp == "-", plain[0], quotes == raw_quotes))
    return out


# --------------------------------------------------------------------------------------------
# Instructions


def _count_error(keyword: str, kind: str) -> _Fail:
    if kind == "one":
        return _Fail(f"{keyword} requires exactly one argument")
    if kind == "two":
        return _Fail(f"{keyword} requires at least two arguments")
    return _Fail(f"{keyword} requires at least one argument")


def _build_instruction(
    line_text: str,
    escape: str,
    line: int,
    end_line: int,
    heredocs: tuple[Heredoc, ...] = (),
    *,
    nested: bool = False,
) -> Instruction:
    """Turn one logical line (continuations joined) into a checked Instruction."""
    stripped = line_text.strip()
    parts = _RE_WHITESPACE.split(stripped, maxsplit=1)
    cmd = parts[0]
    keyword = cmd.upper()
    raw_rest = parts[1] if len(parts) == 2 else ""
    rest, raw_flags = _extract_flags(raw_rest) if raw_rest else ("", [])
    rest = rest.strip()
    if keyword.lower() not in _KNOWN:
        raise _Fail(f"unknown instruction: {cmd}")
    flags = _parse_flags(keyword, raw_flags)

    json_form = False
    args: tuple[str, ...]
    words: tuple[str, ...] = ()
    trigger: Instruction | None = None

    if keyword in _JSON_CAPABLE:
        parsed = _parse_json(rest) if rest else None
        if parsed is not None:
            json_form = True
            args = tuple(parsed)
            words = args
        else:
            args = (rest,) if rest else ()
            words = tuple(_RE_WHITESPACE.split(rest)) if rest and keyword in _WHITESPACE_SPLIT else args
    elif keyword in _PAIR_INSTRUCTIONS:
        args = (rest,) if rest else ()
        words = tuple(_parse_words(rest, escape))
    elif keyword in _WHITESPACE_SPLIT:
        args = (rest,) if rest else ()
        words = tuple(_RE_WHITESPACE.split(rest)) if rest else ()
    elif keyword == "HEALTHCHECK":
        args, json_form = _healthcheck_args(rest, flags)
        words = args
    elif keyword == "ONBUILD":
        if not rest:
            raise _count_error(keyword, "many")
        trigger_keyword = _RE_WHITESPACE.split(rest, maxsplit=1)[0].upper()
        if trigger_keyword == "ONBUILD":
            raise _Fail("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if trigger_keyword in ("MAINTAINER", "FROM"):
            raise _Fail(f"{trigger_keyword} isn't allowed as an ONBUILD trigger")
        trigger = _build_instruction(rest, escape, line, end_line, heredocs, nested=True)
        expression = re.sub(r"(?i)^\s*ONBUILD\s*", "", line_text)
        for doc in heredocs:
            expression += "\n" + doc.content + doc.name
        args = (expression,)
        words = args
    else:  # MAINTAINER STOPSIGNAL USER WORKDIR: one string
        args = (rest,) if rest else ()
        words = args

    _check_arity(keyword, args, words, json_form, heredocs)
    return Instruction(
        keyword=keyword,
        args=args,
        json_form=json_form,
        flags=flags,
        heredocs=heredocs if not nested or keyword in _HEREDOC_INSTRUCTIONS else (),
        line=line,
        end_line=end_line,
        original=line_text,
        words=words,
        trigger=trigger,
    )


def _healthcheck_args(rest: str, flags: Mapping[str, tuple[str, ...]]) -> tuple[tuple[str, ...], bool]:
    if not rest:
        raise _Fail("HEALTHCHECK requires at least one argument")
    parts = re.split(r"\s+", rest, maxsplit=1)
    kind = parts[0].upper()
    cmd_rest = parts[1].strip() if len(parts) == 2 else ""
    if kind == "NONE":
        if cmd_rest or flags:
            raise _Fail("HEALTHCHECK NONE takes no arguments")
        return ("NONE",), False
    if kind != "CMD":
        raise _Fail(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    for name in ("interval", "timeout", "start-period", "start-interval"):
        value = flags.get(name)
        if value is not None:
            try:
                duration = parse_duration(value[-1])
            except DockerfileError as exc:
                raise _Fail(exc.reason) from None
            if duration != 0 and duration < 1_000_000:
                raise _Fail(f"Interval {name!r} cannot be less than 1ms")
    retries = flags.get("retries")
    if retries is not None:
        try:
            count = int(retries[-1])
        except ValueError:
            raise _Fail(f"invalid value for --retries: {retries[-1]}") from None
        if count < 0:
            raise _Fail(f"--retries cannot be negative ({count})")
    parsed = _parse_json(cmd_rest) if cmd_rest else None
    if parsed is not None:
        if not parsed:
            raise _Fail("Missing command after HEALTHCHECK CMD")
        return ("CMD", *parsed), True
    if not cmd_rest:
        raise _Fail("Missing command after HEALTHCHECK CMD")
    return ("CMD-SHELL", cmd_rest), False


def _check_arity(
    keyword: str,
    args: tuple[str, ...],
    words: tuple[str, ...],
    json_form: bool,
    heredocs: tuple[Heredoc, ...],
) -> None:
    if keyword in ("COPY", "ADD"):
        if len(words) < 2:
            if len(words) == 1:
                raise _Fail(
                    f"{keyword} requires at least two arguments, but only one was provided. "
                    "Destination could not be determined."
                )
            raise _count_error(keyword, "two")
    elif keyword == "SHELL":
        if not json_form:
            raise _Fail("SHELL requires the arguments to be in JSON form")
        if not args:
            raise _count_error(keyword, "many")
    elif keyword in ("ENV", "LABEL", "ARG", "EXPOSE", "VOLUME"):
        if not words:
            raise _count_error(keyword, "many")
        if keyword in ("ENV", "LABEL") and "=" not in words[0]:
            parts = _RE_WHITESPACE.split(args[0].strip(), maxsplit=1)
            if len(parts) < 2:
                raise _Fail(f"{keyword} must have two arguments")
        elif keyword in ("ENV", "LABEL"):
            for word in words:
                if "=" not in word:
                    raise _Fail(f'Syntax error - can\'t find = in "{word}". Must be of the form: name=value')
                if word.startswith("="):
                    raise _Fail(f"{keyword} names can not be blank")
        if keyword == "ARG":
            for word in words:
                if word.startswith("="):
                    raise _Fail(f"ARG names can not be blank: {word}")
        if keyword == "VOLUME" and any(not w.strip() for w in words):
            raise _Fail("VOLUME specified can not be an empty string")
    elif keyword in ("USER", "WORKDIR", "STOPSIGNAL", "MAINTAINER"):
        if not args:
            raise _count_error(keyword, "one")
        if keyword == "STOPSIGNAL" and len(_RE_WHITESPACE.split(args[0])) != 1:
            raise _count_error(keyword, "one")
    elif keyword == "RUN":
        if not args and not json_form:
            raise _count_error(keyword, "many")
    elif keyword == "FROM" and len(words) not in (1, 3):
        raise _Fail("FROM requires either one or three arguments")


def parse_duration(text: str) -> int:
    """A Go duration (``30s``, ``1m30s``, ``1.5h``, ``0``) in nanoseconds.

    Raises:
        DockerfileError: not a duration.
    """
    if text in ("0", "+0", "-0"):
        return 0
    pos = 0
    total = 0.0
    if not text:
        raise DockerfileError(f"time: invalid duration {text!r}")
    while pos < len(text):
        match = _RE_DURATION_PART.match(text, pos)
        if match is None:
            raise DockerfileError(f"time: invalid duration {text!r}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return int(total)


# --------------------------------------------------------------------------------------------
# Files


def _split_lines(text: str) -> list[str]:
    """Lines as Go's bufio.ScanLines gives them (only ``\\n`` separates; ``\\r`` trimmed later)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _chomp(content: str) -> str:
    return _RE_LEADING_TABS.sub("", content)


def parse_instruction(
    text: str, *, escape: str = "\\", line: int = 1, path: str = "Dockerfile"
) -> Instruction:
    """Parse one instruction given as text (an ``ONBUILD`` trigger from a base image's config).

    Continuations are joined; heredoc bodies following the first line are read as in a file.

    Raises:
        DockerfileError: the text is not one valid instruction.
    """
    parsed = _parse(text, path=path, escape=escape, allow_no_stage=True)
    if len(parsed.meta_args) == 1 and not parsed.stages:
        return parsed.meta_args[0]
    raise DockerfileError("expected exactly one instruction", path=path, line=line)


def parse(text: str, *, path: str = "Dockerfile") -> Dockerfile:
    """Parse Dockerfile ``text``.

    Args:
        text: the Dockerfile's content.
        path: the file name to put in errors.

    Returns:
        The syntax tree: meta args, stages, directives, warnings.

    Raises:
        DockerfileError: a syntax error, unknown instruction or flag, a bad argument count, an
            instruction before the first ``FROM`` other than ``ARG``, a bad or duplicate stage
            name, an unterminated heredoc, or no stage at all.
    """
    return _parse(text, path=path, escape=None, allow_no_stage=False)


def _parse(text: str, *, path: str, escape: str | None, allow_no_stage: bool) -> Dockerfile:
    d = _Directives()
    if escape is not None:
        try:
            d.set_escape(escape)
        except _Fail as exc:
            raise DockerfileError(str(exc), path=path) from None
        d.done = True
    lines = _split_lines(text)
    instructions: list[Instruction] = []
    warnings: list[Warning] = []
    i = 0
    current = 0
    try:
        while i < len(lines):
            raw = lines[i]
            i += 1
            current = i
            processed = _process_line(d, raw, strip_left=True)
            start = current
            logical, end_of_line = d.trim_continuation(processed)
            if end_of_line and logical == "":
                continue
            empty_continuation = False
            while not end_of_line and i < len(lines):
                raw = lines[i]
                i += 1
                current = i
                processed = _process_line(d, raw, strip_left=False)
                if _is_comment(raw):
                    continue
                if not processed.strip():
                    empty_continuation = True
                    continue
                piece, end_of_line = d.trim_continuation(processed)
                logical += piece
            if empty_continuation:
                warnings.append(
                    Warning(current, f"Empty continuation line found in: {logical.strip()}")
                )
            if not logical.strip():
                continue
            heredocs: list[Heredoc] = []
            keyword = _RE_WHITESPACE.split(logical.strip(), maxsplit=1)[0].upper()
            target = keyword
            if keyword == "ONBUILD":
                after = _RE_WHITESPACE.split(logical.strip(), maxsplit=2)
                target = after[1].upper() if len(after) > 1 else ""
            if target in _HEREDOC_INSTRUCTIONS and "<<" in logical and not _looks_json(logical, keyword):
                for fd, chomp, name, do_expand in _heredoc_words(logical):
                    body: list[str] = []
                    terminated = False
                    while i < len(lines):
                        raw = lines[i]
                        i += 1
                        current = i
                        candidate = _trim_newline(raw)
                        if chomp:
                            candidate = candidate.lstrip("\t")
                        if candidate == name:
                            terminated = True
                            break
                        body.append(_trim_newline(raw) + "\n")
                    if not terminated:
                        raise _LocatedFail("unterminated heredoc", start)
                    content = "".join(body)
                    if chomp:
                        content = _chomp(content)
                    heredocs.append(Heredoc(name, content, do_expand, chomp, fd))
            try:
                instructions.append(_build_instruction(logical, d.escape, start, current, tuple(heredocs)))
            except _Fail as exc:
                raise _LocatedFail(str(exc), start) from None
    except _LocatedFail as exc:
        raise DockerfileError(exc.message, path=path, line=exc.line) from None
    except _Fail as exc:
        raise DockerfileError(str(exc), path=path, line=current) from None
    return _assemble(instructions, d, path, tuple(warnings), allow_no_stage=allow_no_stage)


class _LocatedFail(Exception):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def _looks_json(logical: str, keyword: str) -> bool:
    """Whether the instruction is in JSON form (no heredocs then)."""
    if keyword not in _JSON_CAPABLE:
        return False
    parts = _RE_WHITESPACE.split(logical.strip(), maxsplit=1)
    if len(parts) < 2:
        return False
    rest, _ = _extract_flags(parts[1])
    try:
        return _parse_json(rest.strip()) is not None
    except _Fail:
        return True


def _assemble(
    instructions: list[Instruction],
    d: _Directives,
    path: str,
    warnings: tuple[Warning, ...],
    *,
    allow_no_stage: bool,
) -> Dockerfile:
    meta: list[Instruction] = []
    stages: list[Stage] = []
    names: set[str] = set()
    pending: tuple[Instruction, list[Instruction]] | None = None

    def close() -> None:
        if pending is None:
            return
        frm, body = pending
        words = frm.words
        name: str | None = None
        if len(words) == 3:
            if words[1].lower() != "as":
                raise DockerfileError("FROM requires either one or three arguments", path=path, line=frm.line)
            name = words[2].lower()
            if not _RE_STAGE_NAME.match(name):
                raise DockerfileError(
                    f"invalid name for build stage: {words[2]!r}, name can't start with a number or "
                    "contain symbols",
                    path=path,
                    line=frm.line,
                )
            if name in names:
                raise DockerfileError(f"duplicate stage name {name!r}", path=path, line=frm.line)
            names.add(name)
        stages.append(
            Stage(
                index=len(stages),
                name=name,
                base=words[0],
                platform=frm.flag("platform"),
                instructions=tuple(body),
                line=frm.line,
                from_instruction=frm,
            )
        )

    for instruction in instructions:
        if instruction.keyword == "FROM":
            close()
            pending = (instruction, [])
        elif pending is None:
            if instruction.keyword != "ARG" and not allow_no_stage:
                raise DockerfileError(
                    f"{instruction.keyword.lower()} instruction before the first FROM: no build stage in "
                    "current context",
                    path=path,
                    line=instruction.line,
                )
            meta.append(instruction)
        else:
            pending[1].append(instruction)
    close()
    if not stages and not allow_no_stage:
        raise DockerfileError("the Dockerfile has no stage to build (no FROM)", path=path)
    return Dockerfile(
        meta_args=tuple(meta),
        stages=tuple(stages),
        escape=d.escape,
        syntax=d.syntax,
        path=path,
        warnings=warnings,
    )
