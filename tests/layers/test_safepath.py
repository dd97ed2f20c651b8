"""Lexical rules for member names and links, and SecureJoin-style resolution in a root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from strata.errors import UnsafeArchive
from strata.layers.safepath import (
    RootResolver,
    check_symlink_target,
    clean_hardlink_target,
    clean_name,
)


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("a", "a"),
        ("./a", "a"),
        ("././a/", "a"),
        ("a/b/", "a/b"),
        (".", ""),
        ("./", ""),
        ("a/..", ""),
        ("a/./b", "a/b"),
        ("a//b", "a/b"),
        ("a/b/../c", "a/c"),
        (".hidden/.x", ".hidden/.x"),
        ("..x/y..", "..x/y.."),
        ("a/.wh..wh..opq", "a/.wh..wh..opq"),
    ],
)
def test_clean_name(name: str, clean: str) -> None:
    assert clean_name(name) == clean


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../a", "escapes the root"),
        ("a/../../b", "escapes the root"),
        ("..", "escapes the root"),
        ("./../a", "escapes the root"),
        ("/etc/passwd", "absolute path"),
        ("/", "absolute path"),
        ("a\x00b", "NUL byte"),
        ("x" * 256, "path component too long"),
        ("/".join(["y" * 200] * 21), "name too long"),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "bare-dotdot",
        "dot-dotdot",
        "absolute",
        "slash",
        "nul",
        "component",
        "path",
    ],
)
def test_clean_name_refuses(name: str, reason: str) -> None:
    with pytest.raises(UnsafeArchive, match=reason) as raised:
        clean_name(name)
    assert raised.value.member == name


@pytest.mark.parametrize(
    ("name", "target", "ok"),
    [
        ("l", "/etc/passwd", True),
        ("l", "/../../../etc", True),  # absolute: resolved against the container's root
        ("a/b/l", "../../x", True),
        ("a/b/l", "../../../x", False),
        ("l", "..", False),
        ("l", "./../x", False),
        ("a/l", "b/../../..", False),
        ("a/l", "b/../..", True),
        ("l", "x/../../y", False),
        ("l", "..data", True),
    ],
)
def test_check_symlink_target(name: str, target: str, ok: bool) -> None:
    if ok:
        check_symlink_target(name, target, name)
    else:
        with pytest.raises(UnsafeArchive, match="invalid symlink"):
            check_symlink_target(name, target, name)


def test_hardlink_targets_are_relative_to_the_root() -> None:
    assert clean_hardlink_target("/usr/bin/x", "h") == "usr/bin/x"
    assert clean_hardlink_target("./a/../b", "h") == "b"
    with pytest.raises(UnsafeArchive, match="escapes root"):
        clean_hardlink_target("../x", "h")


def test_resolver_follows_symlinks_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "real/deep").mkdir(parents=True)
    os.symlink("/real", tmp_path / "abs")
    os.symlink("../../../../real", tmp_path / "climb")
    os.symlink("deep", tmp_path / "real/rel")
    os.symlink("abs/rel", tmp_path / "chain")
    resolver = RootResolver(str(tmp_path))
    assert resolver.resolve("abs", "m", create=False) == "real"
    assert resolver.resolve("climb/deep", "m", create=False) == "real/deep"
    assert resolver.resolve("chain", "m", create=False) == "real/deep"
    assert resolver.resolve("missing/dir", "m", create=False) is None
    assert resolver.resolve("abs/new/dirs", "m", create=True) == "real/new/dirs"
    assert (tmp_path / "real/new/dirs").is_dir()


def test_resolver_refuses_symlink_loops_and_files(tmp_path: Path) -> None:
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    (tmp_path / "f").write_bytes(b"")
    resolver = RootResolver(str(tmp_path))
    with pytest.raises(UnsafeArchive, match="too many levels"):
        resolver.resolve("a", "a/x", create=True)
    with pytest.raises(UnsafeArchive, match="not a directory"):
        resolver.resolve("f", "f/x", create=True)
    assert resolver.resolve("f", "f/x", create=False) is None
