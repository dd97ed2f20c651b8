"""Variable expansion and word splitting of Dockerfile arguments, as BuildKit's shell lexer does.

This module owns the small shell dialect the Dockerfile frontend understands outside ``RUN``:
``$VAR``, ``${VAR}``, ``${VAR:-word}``, ``${VAR-word}``, ``${VAR:+word}``, ``${VAR+word}``,
``${VAR:?msg}``, ``${VAR?msg}``, ``${VAR#pat}``, ``${VAR##pat}``, ``${VAR%pat}``,
``${VAR%%pat}``, ``${VAR/pat/repl}``, ``${VAR//pat/repl}``, nesting inside the ``word``,
single quotes (literal), double quotes (expanding; the escape character escapes only ``"``,
``$`` and itself), and the escape character (``\\`` or the ``# escape=`` directive's) outside
quotes.

It must not know about build state: the caller (the executor) passes the environment in effect
at the step (build args in use, ``ENV`` so far). It never runs a shell: ``RUN`` in shell form is
given to the image's shell untouched.

Two entry points mirror BuildKit's ``ProcessWord`` and ``ProcessWords``:

- :func:`expand` turns one argument into one string; unquoted whitespace is kept
  (``WORKDIR``, ``USER``, ``ENV`` values, each ``COPY`` source).
- :func:`expand_words` splits on unquoted whitespace (also inside expanded values) and expands
  each field (``EXPOSE`` words, heredoc detection).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence

from strata.errors import DockerfileError

__all__ = [
    "EXPANDING_INSTRUCTIONS",
    "expand",
    "expand_pairs",
    "expand_words",
]

#: Instructions whose arguments the builder expands (Dockerfile reference, "Environment
#: replacement"); ``ONBUILD`` triggers are expanded when they run, as their own instruction.
#: ``ARG`` default values are expanded too (with the args and env known so far). ``RUN``,
#: ``CMD``, ``ENTRYPOINT``, ``SHELL`` and ``HEALTHCHECK`` are not: their shell does it.
EXPANDING_INSTRUCTIONS: frozenset[str] = frozenset(
    {"ADD", "ARG", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
)

_SPECIAL_PARAMS = frozenset("@*#?-$!")
_EOF = ""


class _ExpansionFailed(Exception):
    """Internal: carries a lexer error up to the public functions, which add the word."""


class _Words:
    """Field splitting as BuildKit's ``wordsStruct``: expansion results split, quoted text not."""

    __slots__ = ("in_word", "word", "words")

    def __init__(self) -> None:
        self.word = ""
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word = ""
                self.in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.word += ch
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw_string(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def get_words(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word = ""
            self.in_word = False
        return self.words


class _Lexer:
    """One pass over one word; ``raw_quotes``/``raw_escapes`` keep quotes and escapes in the output."""

    def __init__(
        self,
        text: str,
        env: Mapping[str, str],
        escape: str,
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
    ) -> None:
        self.text = text
        self.pos = 0
        self.env = env
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else _EOF

    def next(self) -> str:
        if self.pos >= len(self.text):
            return _EOF
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    def process(self) -> tuple[str, list[str]]:
        return self.process_stop_on(_EOF)

    def process_stop_on(self, stop: str) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        while self.peek() != _EOF:
            ch = self.peek()
            if stop and ch == stop:
                self.next()
                return "".join(result), words.get_words()
            if ch in ("'", '"', "$"):
                if ch == "'":
                    tmp = self.single_quote()
                elif ch == '"':
                    tmp = self.double_quote()
                else:
                    tmp = self.dollar()
                result.append(tmp)
                if ch == "$":
                    words.add_string(tmp)
                else:
                    words.add_raw_string(tmp)
                continue
            ch = self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    words.add_raw_char(ch)
                    result.append(ch)
                ch = self.next()
                if ch == _EOF:
                    break
                words.add_raw_char(ch)
            else:
                words.add_char(ch)
            result.append(ch)
        if stop:
            raise _ExpansionFailed(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.get_words()

    def single_quote(self) -> str:
        out: list[str] = []
        ch = self.next()
        if self.raw_quotes:
            out.append(ch)
        while True:
            ch = self.next()
            if ch == _EOF:
                raise _ExpansionFailed("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def double_quote(self) -> str:
        out: list[str] = []
        ch = self.next()
        if self.raw_quotes:
            out.append(ch)
        while True:
            ch = self.peek()
            if ch == _EOF:
                raise _ExpansionFailed("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self.peek()
                if following == _EOF:
                    continue
                if following in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        out: list[str] = []
        while self.peek() != _EOF:
            ch = self.peek()
            if not out and ch.isdigit():
                while self.peek() != _EOF and self.peek().isdigit():
                    out.append(self.next())
                return "".join(out)
            if not out and ch in _SPECIAL_PARAMS:
                return self.next()
            if not (ch.isalnum() or ch == "_"):
                break
            out.append(self.next())
        return "".join(out)

    def lookup(self, name: str) -> tuple[str, bool]:
        value = self.env.get(name)
        if value is None:
            return "", False
        return value, True

    def dollar(self) -> str:
        self.next()  # the '$'
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            return self.lookup(name)[0]
        self.next()  # the '{'
        ch = self.peek()
        if ch == _EOF:
            raise _ExpansionFailed("syntax error: missing '}'")
        if ch in ("{", "}", ":"):
            raise _ExpansionFailed("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if ch == "}":
            return self.lookup(name)[0]
        if ch == _EOF:
            raise _ExpansionFailed("syntax error: missing '}'")
        value, is_set = self.lookup(name)
        if ch == ":":
            modifier = self.next()
            word = self._modifier_word()
            if modifier == "-":
                return word if value == "" else value
            if modifier == "+":
                return word if value != "" else ""
            if modifier == "?":
                if not is_set:
                    raise _ExpansionFailed(f"{name}: {word or 'is not allowed to be unset'}")
                if value == "":
                    raise _ExpansionFailed(f"{name}: {word or 'is not allowed to be empty'}")
                return value
            raise _ExpansionFailed(f"unsupported modifier ({modifier}) in substitution")
        if ch in ("-", "+", "?"):
            word = self._modifier_word()
            if ch == "-":
                return value if is_set else word
            if ch == "+":
                return word if is_set else ""
            if not is_set:
                raise _ExpansionFailed(f"{name}: {word or 'is not allowed to be unset'}")
            return value
        if ch in ("#", "%"):
            longest = self.peek() == ch
            if longest:
                self.next()
            pattern = self._modifier_word()
            return _remove_affix(value, pattern, prefix=ch == "#", longest=longest)
        if ch == "/":
            every = self.peek() == "/"
            if every:
                self.next()
            try:
                pattern, _ = self.process_stop_on("/")
            except _ExpansionFailed as exc:
                raise _ExpansionFailed("syntax error: missing '/' in ${var/pattern/replacement}") from exc
            replacement = self._modifier_word()
            regex = re.compile(_glob_regex(pattern), re.DOTALL)
            if every:
                return regex.sub(lambda _m: replacement, value)
            found = regex.search(value)
            if found is None:
                return value
            return value[: found.start()] + replacement + value[found.end() :]
        raise _ExpansionFailed(f"unsupported modifier ({ch}) in substitution")

    def _modifier_word(self) -> str:
        try:
            word, _ = self.process_stop_on("}")
        except _ExpansionFailed as exc:
            if self.peek() == _EOF:
                raise _ExpansionFailed("syntax error: missing '}'") from exc
            raise
        return word


def _remove_affix(value: str, pattern: str, *, prefix: bool, longest: bool) -> str:
    """``${v#p}``/``${v##p}``/``${v%p}``/``${v%%p}``: drop the shortest/longest matching prefix/suffix."""
    regex = re.compile(fnmatch.translate(pattern), re.DOTALL)
    cuts = range(len(value) + 1)
    if prefix:
        order = reversed(cuts) if longest else iter(cuts)
        for i in order:
            if regex.match(value[:i]):
                return value[i:]
    else:
        order = iter(cuts) if longest else reversed(cuts)
        for i in order:
            if regex.match(value[i:]):
                return value[:i]
    return value


def _glob_regex(pattern: str) -> str:
    """An unanchored regex for a shell glob: ``*`` any run (greedy), ``?`` one character,
    ``[...]`` a class (``!``/``^`` negate), ``\\`` escapes."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "\\" and i < len(pattern):
            out.append(re.escape(pattern[i]))
            i += 1
        elif ch == "[":
            end = pattern.find("]", i + 1 if i < len(pattern) and pattern[i] in "!^" else i)
            if end < 0:
                out.append(re.escape(ch))
                continue
            body = pattern[i:end]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _check_escape(escape: str) -> None:
    if escape not in ("\\", "`"):
        raise DockerfileError(f"invalid escape token {escape!r} does not match ` or \\")


def expand(word: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """Expand variables in one argument and remove its quotes, keeping unquoted whitespace.

    This is BuildKit's ``ProcessWord``: ``"a b"'$x'${y:-z}`` is one string.

    Args:
        word: the raw argument as the Dockerfile holds it.
        env: the variables in scope (build args in use and ``ENV`` so far); a missing
            variable expands to the empty string.
        escape: the escape character (``\\`` or ``# escape=`` backtick).

    Returns:
        The expanded string.

    Raises:
        DockerfileError: an unterminated quote, ``${`` without ``}``, a bad substitution or an
            unset ``${VAR?}``.
    """
    _check_escape(escape)
    try:
        result, _ = _Lexer(word, env, escape).process()
    except _ExpansionFailed as exc:
        raise DockerfileError(f'failed to process "{word}": {exc}') from None
    return result


def expand_words(
    text: str,
    env: Mapping[str, str],
    *,
    escape: str = "\\",
    raw_quotes: bool = False,
    raw_escapes: bool = False,
) -> list[str]:
    """Split ``text`` into fields on unquoted whitespace and expand each (BuildKit ``ProcessWords``).

    Whitespace inside an unquoted expansion splits too (``$LIST`` with ``"a b"`` gives two
    fields); quoted text never does; empty fields are dropped.

    Args:
        text: the raw arguments.
        env: the variables in scope.
        escape: the escape character.
        raw_quotes: keep quote characters in the fields (the parser uses this to find heredocs).
        raw_escapes: keep escape characters in the fields.

    Returns:
        The fields.

    Raises:
        DockerfileError: as :func:`expand`.
    """
    _check_escape(escape)
    lexer = _Lexer(text, env, escape, raw_quotes=raw_quotes, raw_escapes=raw_escapes)
    try:
        _, words = lexer.process()
    except _ExpansionFailed as exc:
        raise DockerfileError(f'failed to process "{text}": {exc}') from None
    return words


def expand_pairs(
    pairs: Sequence[tuple[str, str | None]],
    env: Mapping[str, str],
    *,
    escape: str = "\\",
) -> list[tuple[str, str | None]]:
    """Expand the keys and values of ``ENV``/``LABEL``/``ARG`` pairs, all against the same ``env``.

    Every pair sees the environment from before the instruction, as docker documents:
    ``ENV a=x b=$a`` gives ``b`` the *previous* ``a``. The caller applies the pairs after.
    A ``None`` value (``ARG name`` without default) stays ``None``.

    Args:
        pairs: raw pairs from :meth:`strata.build.dockerfile.Instruction.pairs`.
        env: the variables in scope before the instruction.
        escape: the escape character.

    Returns:
        The expanded pairs, in order.

    Raises:
        DockerfileError: as :func:`expand`.
    """
    out: list[tuple[str, str | None]] = []
    for key, value in pairs:
        new_value = None if value is None else expand(value, env, escape=escape)
        out.append((expand(key, env, escape=escape), new_value))
    return out
