""".dockerignore reading and matching (strata.build.ignore), with docker's semantics."""

from __future__ import annotations

import pytest

from strata.build.ignore import IgnoreRules, Pattern, go_clean, read_patterns
from strata.errors import InvalidArgument


@pytest.mark.parametrize(
    ("path", "cleaned"),
    [
        ("", "."),
        (".", "."),
        ("a", "a"),
        ("a/", "a"),
        ("a//b", "a/b"),
        ("./a", "a"),
        ("a/./b", "a/b"),
        ("a/../b", "b"),
        ("a/..", "."),
        ("../a", "../a"),
        ("../../a/../b", "../../b"),
        ("/", "/"),
        ("//a", "/a"),
        ("/../a", "/a"),
        ("/a/b/../../..", "/"),
        ("a/b/c/../../d", "a/d"),
    ],
)
def test_go_clean(path: str, cleaned: str) -> None:
    assert go_clean(path) == cleaned


def test_read_patterns_normalises_like_docker() -> None:
    text = (
        "\ufeff# comment\n"
        "*.log\n"
        "\n"
        "   \n"
        "  spaced.txt  \n"
        "/abs\n"
        "./dot/\n"
        "a/../b\n"
        "! exception\n"
        "!/abs-exception\n"
        " #not-a-comment\n"
        "dir//sub/\n"
    )
    assert read_patterns(text) == [
        "*.log",
        "spaced.txt",
        "abs",
        "dot",
        "b",
        "!exception",
        "!abs-exception",
        "#not-a-comment",
        "dir/sub",
    ]


def test_read_patterns_keeps_root_slash_and_bare_exclamation() -> None:
    assert read_patterns("/\n!\n") == ["/", "!"]


def _ignored(patterns: str, path: str) -> bool:
    return IgnoreRules.parse(patterns).ignored(path)


@pytest.mark.parametrize(
    ("patterns", "path", "ignored"),
    [
        # plain names and parents
        ("a.txt", "a.txt", True),
        ("a.txt", "b.txt", False),
        ("a.txt", "dir/a.txt", False),
        ("dir", "dir", True),
        ("dir", "dir/x", True),
        ("dir", "dir/x/y", True),
        ("dir/", "dir/x", True),
        ("dir", "dirx", False),
        ("/abs", "abs", True),
        ("/abs", "sub/abs", False),
        ("dir/sub", "dir/sub/file", True),
        ("dir/sub", "dir/file", False),
        # * and ?
        ("*.log", "a.log", True),
        ("*.log", "dir/a.log", False),
        ("*/*.log", "dir/a.log", True),
        ("*/*.log", "a.log", False),
        ("*", "anything", True),
        ("*", "dir/inside", True),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("a?c", "abbc", False),
        ("a.b*", "axb", False),
        ("a.b*", "a.bc", True),
        ("file+1", "file+1", True),
        ("(x)", "(x)", True),
        # classes
        ("[a-c].txt", "b.txt", True),
        ("[a-c].txt", "d.txt", False),
        ("[^a].txt", "b.txt", True),
        ("[^a].txt", "a.txt", False),
        # **
        ("**/*.log", "a.log", True),
        ("**/*.log", "x/y/a.log", True),
        ("**/*.log", "x/a.txt", False),
        ("**/tmp", "tmp", True),
        ("**/tmp", "a/b/tmp", True),
        ("**/tmp", "a/b/tmp/file", True),
        ("**/tmp", "atmp", False),
        ("**", "anything/at/all", True),
        ("dir/**", "dir/x", True),
        ("dir/**", "dir/x/y", True),
        ("dir/**", "dir", False),
        ("dir/**", "dirx/y", False),
        ("docs/**/*.md", "docs/a.md", True),
        ("docs/**/*.md", "docs/x/y/b.md", True),
        ("docs/**/*.md", "docs/readme.txt", False),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/x/y/c", False),
        # comments and exceptions
        ("# x\nx", "x", True),
        ("*.md\n!README.md", "README.md", False),
        ("*.md\n!README.md", "other.md", True),
        ("!README.md\n*.md", "README.md", True),
        ("dir\n!dir/keep", "dir/keep", False),
        ("dir\n!dir/keep", "dir/drop", True),
        ("dir\n!dir/keep", "dir/keep/inner", False),
        ("**\n!keep", "keep", False),
        ("**\n!keep", "other", True),
        ("*.log\n!keep.log\nkeep.log", "keep.log", True),
        ("*\n!*.txt\nsecret.txt", "secret.txt", True),
        ("*\n!*.txt\nsecret.txt", "public.txt", False),
        # the Dockerfile and .dockerignore are matched like anything else
        ("Dockerfile\n.dockerignore", "Dockerfile", True),
        ("Dockerfile\n.dockerignore", ".dockerignore", True),
        ("", "anything", False),
    ],
    ids=repr,
)
def test_ignore_matching(patterns: str, path: str, ignored: bool) -> None:
    assert _ignored(patterns, path) is ignored


def test_ignore_accepts_leading_slash_and_dot_in_paths() -> None:
    rules = IgnoreRules.parse("dir\n")
    assert rules.ignored("/dir/x")
    assert rules.ignored("./dir/x")
    assert not rules.ignored(".")


def test_ignore_the_documented_example() -> None:
    # the Dockerfile reference's .dockerignore example
    rules = IgnoreRules.parse("# comment\n*/temp*\n*/*/temp*\ntemp?\n")
    assert rules.ignored("somedir/temporary.txt")
    assert rules.ignored("somedir/temp")
    assert rules.ignored("somedir/subdir/temporary.txt")
    assert rules.ignored("tempa")
    assert rules.ignored("tempb")
    assert not rules.ignored("temporary.txt")
    assert not rules.ignored("a/b/c/temp")


def test_ignore_rules_truthiness_and_patterns() -> None:
    assert not IgnoreRules()
    rules = IgnoreRules(["a", "!b"])
    assert rules
    assert [(p.text, p.exclusion) for p in rules.patterns] == [("a", False), ("b", True)]
    assert rules.has_exclusions


@pytest.mark.parametrize("pattern", ["!", "[", "a[b", "[z-a]", "x\\"])
def test_ignore_rejects_malformed_patterns(pattern: str) -> None:
    with pytest.raises(InvalidArgument):
        IgnoreRules([pattern])


def test_pattern_compile_strips_and_cleans() -> None:
    p = Pattern.compile("  ./a//b/  ")
    assert p.text == "a/b"
    assert not p.exclusion
    assert p.matches("a/b")


@pytest.mark.parametrize(
    ("patterns", "directory", "may"),
    [
        ("dir", "dir", False),
        ("dir\n!dir/keep", "dir", True),
        ("dir\n!other/keep", "dir", False),
        ("dir\n!*.txt", "dir", True),
        ("dir\n!dir", "dir", True),
    ],
)
def test_ignore_may_include_below(patterns: str, directory: str, may: bool) -> None:
    assert IgnoreRules.parse(patterns).may_include_below(directory) is may
