"""Variable expansion (strata.build.expand) as BuildKit's shell lexer does it."""

from __future__ import annotations

import pytest

from strata.build.dockerfile import parse
from strata.build.expand import EXPANDING_INSTRUCTIONS, expand, expand_pairs, expand_words
from strata.errors import DockerfileError, InvalidArgument

ENV = {
    "A": "a",
    "B": "b",
    "EMPTY": "",
    "SPACED": "x y",
    "PATH": "/usr/bin:/bin",
    "FILE": "archive.tar.gz",
    "DIR": "/usr/local/lib/python",
    "A_B": "underscored",
    "1": "one",
}


@pytest.mark.parametrize(
    ("word", "result"),
    [
        ("plain", "plain"),
        ("$A", "a"),
        ("${A}", "a"),
        ("$A$B", "ab"),
        ("${A}_x", "a_x"),
        ("$A_B", "underscored"),
        ("$A-x", "a-x"),
        ("$UNSET", ""),
        ("${UNSET}", ""),
        ("pre-$A-post", "pre-a-post"),
        ("$", "$"),
        ("a$", "a$"),
        ("$/x", "$/x"),
        ("$1", "one"),
        ("$12", ""),
        ("${A}${B}", "ab"),
        ("$PATH:/opt", "/usr/bin:/bin:/opt"),
        # escapes
        ("\\$A", "$A"),
        ("\\${A}", "${A}"),
        ("a\\ b", "a b"),
        ("\\\\", "\\"),
        ("a\\", "a"),
        ("\\x", "x"),
        # quotes
        ("'$A'", "$A"),
        ("'a b'", "a b"),
        ("'a\\b'", "a\\b"),
        ('"$A"', "a"),
        ('"a b"', "a b"),
        ('"a\\"b"', 'a"b'),
        ('"\\$A"', "$A"),
        ('"a\\b"', "a\\b"),
        ('"a\\\\b"', "a\\b"),
        ('"${A} $B"', "a b"),
        ("'\"'", '"'),
        ("\"'\"", "'"),
        ("a'b'c\"d\"e", "abcde"),
        ('""', ""),
        ("''", ""),
        # unquoted whitespace is kept by expand (ProcessWord)
        ("a  b", "a  b"),
        ("$SPACED", "x y"),
    ],
    ids=repr,
)
def test_expand(word: str, result: str) -> None:
    assert expand(word, ENV) == result


@pytest.mark.parametrize(
    ("word", "result"),
    [
        ("${A:-d}", "a"),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${A-d}", "a"),
        ("${UNSET-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${A:+alt}", "alt"),
        ("${UNSET:+alt}", ""),
        ("${EMPTY:+alt}", ""),
        ("${A+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET:-}", ""),
        ("${UNSET:-$A}", "a"),
        ("${UNSET:-${B}}", "b"),
        ("${UNSET:-${ALSO:-deep}}", "deep"),
        ("${UNSET:-a b}", "a b"),
        ("${UNSET:-'q $A'}", "q $A"),
        ('${UNSET:-"q $A"}', "q a"),
        ("${A:+${B}x}", "bx"),
        ("${UNSET:-\\}}", "}"),
        ("${A:?}", "a"),
        ("${A?}", "a"),
        ("${EMPTY?}", ""),
        # pattern removal
        ("${FILE#*.}", "tar.gz"),
        ("${FILE##*.}", "gz"),
        ("${FILE%.*}", "archive.tar"),
        ("${FILE%%.*}", "archive"),
        ("${DIR#/usr}", "/local/lib/python"),
        ("${DIR##*/}", "python"),
        ("${DIR%/*}", "/usr/local/lib"),
        ("${FILE#nomatch}", "archive.tar.gz"),
        ("${UNSET#x}", ""),
        # replacement
        ("${FILE/tar/zip}", "archive.zip.gz"),
        ("${FILE/./-}", "archive-tar.gz"),
        ("${FILE//./-}", "archive-tar-gz"),
        ("${FILE/a*e/X}", "X.tar.gz"),
        ("${FILE/?r/_}", "_chive.tar.gz"),
        ("${FILE/[ct]/_}", "ar_hive.tar.gz"),
        ("${FILE//[!a.]/}", "a.a."),
        ("${FILE/nomatch/x}", "archive.tar.gz"),
        ("${FILE/tar/}", "archive..gz"),
        ("${PATH//:/ }", "/usr/bin /bin"),
        ("${FILE/.tar/$A}", "archivea.gz"),
        ("${UNSET/x/y}", ""),
    ],
    ids=repr,
)
def test_expand_modifiers(word: str, result: str) -> None:
    assert expand(word, ENV) == result


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${A", "missing '}'"),
        ("${", "missing '}'"),
        ("${}", "bad substitution"),
        ("${:-x}", "bad substitution"),
        ("${{A}", "bad substitution"),
        ("${A:-x", "missing '}'"),
        ("${A*}", "unsupported modifier (*)"),
        ("${A:*x}", "unsupported modifier (*)"),
        ("'open", "matching single-quote"),
        ('"open', "matching double-quote"),
        ("${UNSET:?}", "UNSET: is not allowed to be unset"),
        ("${UNSET?custom message}", "UNSET: custom message"),
        ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
        ("${A/x}", "missing '/'"),
    ],
    ids=repr,
)
def test_expand_errors(word: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        expand(word, ENV)
    assert message in str(info.value)
    assert isinstance(info.value, InvalidArgument)


@pytest.mark.parametrize(
    ("word", "result"),
    [
        ("`$A", "$A"),
        ("\\$A", "\\a"),
        ("C:\\dir\\$A", "C:\\dir\\a"),
        ('"a`"b"', 'a"b'),
        ("a` b", "a b"),
        ("``", "`"),
    ],
    ids=repr,
)
def test_expand_with_backtick_escape(word: str, result: str) -> None:
    assert expand(word, ENV, escape="`") == result


def test_expand_rejects_a_bad_escape_character() -> None:
    with pytest.raises(DockerfileError):
        expand("x", ENV, escape="!")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a b  c", ["a", "b", "c"]),
        ("  lead trail  ", ["lead", "trail"]),
        ('"a b" c', ["a b", "c"]),
        ("'a b' c", ["a b", "c"]),
        ("a\\ b c", ["a b", "c"]),
        ("$SPACED", ["x", "y"]),
        ('"$SPACED"', ["x y"]),
        ("pre$SPACED", ["prex", "y"]),
        ("$EMPTY", []),
        ('"" x', ["x"]),
        ("", []),
        ("80/tcp ${A}", ["80/tcp", "a"]),
        ("a\tb\nc", ["a", "b", "c"]),
    ],
    ids=repr,
)
def test_expand_words(text: str, words: list[str]) -> None:
    assert expand_words(text, ENV) == words


def test_expand_words_raw_keeps_quotes_and_escapes() -> None:
    assert expand_words("cat '<<EOF' \\x", {}, raw_quotes=True, raw_escapes=True) == [
        "cat",
        "'<<EOF'",
        "\\x",
    ]


def test_expand_pairs_see_the_environment_before_the_instruction() -> None:
    # docker documents: ENV abc=hello / ENV abc=bye def=$abc  ->  def=hello
    env = {"abc": "hello"}
    ins = parse("FROM x\nENV abc=bye def=$abc ghi=\"$abc 2\"\n").stages[0].instructions[0]
    assert expand_pairs(ins.pairs(), env) == [("abc", "bye"), ("def", "hello"), ("ghi", "hello 2")]


def test_expand_pairs_legacy_form_and_arg_without_value() -> None:
    df = parse("ARG V\nFROM x\nENV K some $A value\nLABEL \"a b\"='c $A'\n")
    env_ins, label_ins = df.stages[0].instructions
    assert expand_pairs(env_ins.pairs(), ENV) == [("K", "some a value")]
    assert expand_pairs(label_ins.pairs(), ENV) == [("a b", "c $A")]
    assert expand_pairs(df.meta_args[0].pairs(), ENV) == [("V", None)]


def test_expand_pairs_with_backtick_escape() -> None:
    df = parse("# escape=`\nFROM x\nENV P=C:\\dir Q=`$A\n")
    ins = df.stages[0].instructions[0]
    assert expand_pairs(ins.pairs(), ENV, escape=df.escape) == [("P", "C:\\dir"), ("Q", "$A")]


def test_expand_escaped_space_in_env_value() -> None:
    ins = parse("FROM x\nENV C=three\\ words\n").stages[0].instructions[0]
    assert expand_pairs(ins.pairs(), {}) == [("C", "three words")]


def test_expanding_instructions_follow_the_reference() -> None:
    documented = ("ADD", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")
    for keyword in documented:
        assert keyword in EXPANDING_INSTRUCTIONS
    for keyword in ("RUN", "CMD", "ENTRYPOINT", "SHELL", "HEALTHCHECK", "MAINTAINER"):
        assert keyword not in EXPANDING_INSTRUCTIONS
