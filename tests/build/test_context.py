"""The build context (strata.build.context): listing, sources, checksums, tars and stdin."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from strata.build.context import Context, has_wildcards, match_component
from strata.errors import InvalidArgument, InvalidContent, NotFound, UnsafeArchive


def _tree(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


@pytest.fixture
def ctx_dir(tmp_path: Path) -> Path:
    return _tree(
        tmp_path / "ctx",
        {
            "Dockerfile": "FROM scratch\n",
            ".dockerignore": "*.log\n!keep.log\nbuild\n!build/keep\nsecret*\n",
            "a.txt": "a\n",
            "b.txt": "b\n",
            "x.log": "x\n",
            "keep.log": "k\n",
            "secret.key": "s\n",
            "src/main.c": "int main;\n",
            "src/util.c": "u\n",
            "src/inc/util.h": "h\n",
            "src/lib/x.h": "x\n",
            "build/out.o": "o\n",
            "build/keep/k": "k\n",
            "build/other/o": "o\n",
        },
    )


# ------------------------------------------------------------------ listing


def test_context_lists_what_dockerignore_leaves(ctx_dir: Path) -> None:
    ctx = Context.from_directory(ctx_dir)
    assert ctx.files() == [
        ".dockerignore",
        "Dockerfile",
        "a.txt",
        "b.txt",
        "build",
        "build/keep",
        "build/keep/k",
        "keep.log",
        "src",
        "src/inc",
        "src/inc/util.h",
        "src/lib",
        "src/lib/x.h",
        "src/main.c",
        "src/util.c",
    ]


def test_context_included(ctx_dir: Path) -> None:
    ctx = Context.from_directory(ctx_dir)
    assert ctx.included("a.txt")
    assert ctx.included("/a.txt")
    assert ctx.included(".")
    assert not ctx.included("x.log")
    assert ctx.included("keep.log")
    assert ctx.included("build")  # parent of a re-included path
    assert ctx.included("build/keep/k")
    assert not ctx.included("build/out.o")
    assert not ctx.included("build/other")
    assert not ctx.included("secret.key")
    assert not ctx.included("missing.log")


def test_context_walk_entries_carry_metadata(ctx_dir: Path) -> None:
    os.chmod(ctx_dir / "a.txt", 0o600)
    os.symlink("a.txt", ctx_dir / "link")
    ctx = Context.from_directory(ctx_dir)
    entries = {e.path: e for e in ctx.walk()}
    assert entries["a.txt"].mode & 0o777 == 0o600
    assert entries["a.txt"].size == 2
    assert entries["link"].target == "a.txt"
    assert entries["src"].size == 0
    assert [e.path for e in ctx.walk("src/inc")] == ["src/inc", "src/inc/util.h"]
    assert [e.path for e in ctx.walk("a.txt")] == ["a.txt"]
    assert list(ctx.walk("x.log")) == []


def test_context_without_dockerignore_includes_everything(tmp_path: Path) -> None:
    root = _tree(tmp_path / "c", {"a": "1", "d/b": "2"})
    ctx = Context.from_directory(root)
    assert ctx.files() == ["a", "d", "d/b"]
    assert not ctx.rules


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "c",
        {
            ".dockerignore": "a\n",
            "a": "1",
            "b": "2",
            "sub/Dockerfile.dev": "FROM x\n",
            "sub/Dockerfile.dev.dockerignore": "b\n",
        },
    )
    assert not Context.from_directory(root).included("a")
    ctx = Context.from_directory(root, dockerfile=root / "sub" / "Dockerfile.dev")
    assert ctx.included("a")
    assert not ctx.included("b")


def test_context_refuses_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        Context.from_directory(tmp_path / "nope")


def test_context_reports_a_malformed_dockerignore(tmp_path: Path) -> None:
    root = _tree(tmp_path / "c", {".dockerignore": "[\n"})
    with pytest.raises(InvalidArgument):
        Context.from_directory(root)


# ------------------------------------------------------------------ Dockerfile


def test_read_dockerfile_default_and_outside(ctx_dir: Path, tmp_path: Path) -> None:
    ctx = Context.from_directory(ctx_dir)
    assert ctx.read_dockerfile() == ("FROM scratch\n", "Dockerfile")
    outside = tmp_path / "elsewhere" / "Containerfile"
    outside.parent.mkdir()
    outside.write_text("FROM busybox\n")
    assert ctx.read_dockerfile(outside) == ("FROM busybox\n", "Containerfile")


def test_read_dockerfile_even_when_ignored(tmp_path: Path) -> None:
    root = _tree(tmp_path / "c", {".dockerignore": "Dockerfile\n.dockerignore\n", "Dockerfile": "FROM x\n"})
    ctx = Context.from_directory(root)
    assert ctx.read_dockerfile()[0] == "FROM x\n"
    assert ctx.files() == []


def test_read_dockerfile_missing(tmp_path: Path) -> None:
    ctx = Context.from_directory(_tree(tmp_path / "c", {}))
    with pytest.raises(NotFound, match="failed to read dockerfile"):
        ctx.read_dockerfile()


def test_read_dockerfile_not_utf8(tmp_path: Path) -> None:
    root = _tree(tmp_path / "c", {})
    (root / "Dockerfile").write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidContent):
        Context.from_directory(root).read_dockerfile()


# ------------------------------------------------------------------ sources


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("a.txt", ["a.txt"]),
        ("/a.txt", ["a.txt"]),
        ("./a.txt", ["a.txt"]),
        ("src", ["src"]),
        ("src/", ["src"]),
        (".", ["."]),
        ("/", ["."]),
        ("src/../a.txt", ["a.txt"]),
        ("*.txt", ["a.txt", "b.txt"]),
        ("?.txt", ["a.txt", "b.txt"]),
        ("[a].txt", ["a.txt"]),
        ("[^a].txt", ["b.txt"]),
        ("*.log", ["keep.log"]),
        ("src/*.c", ["src/main.c", "src/util.c"]),
        ("src/*/*.h", ["src/inc/util.h", "src/lib/x.h"]),
        ("src/i*", ["src/inc"]),
        ("*", [".dockerignore", "Dockerfile", "a.txt", "b.txt", "build", "keep.log", "src"]),
        ("build/*", ["build/keep"]),
    ],
    ids=repr,
)
def test_resolve_sources(ctx_dir: Path, source: str, found: list[str]) -> None:
    assert Context.from_directory(ctx_dir).resolve_sources(source) == found


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ("missing.txt", NotFound, 'failed to compute cache key: "/missing.txt" not found: not found'),
        ("x.log", NotFound, "not found"),
        ("secret.key", NotFound, "not found"),
        ("build/out.o", NotFound, "not found"),
        ("*.nothing", NotFound, "no source files were specified"),
        ("secret*", NotFound, "no source files were specified"),
        ("../outside", InvalidArgument, "forbidden path outside the build context"),
        ("..", InvalidArgument, "forbidden path outside the build context"),
        ("src/../../x", InvalidArgument, "forbidden path outside the build context"),
        ("[", InvalidArgument, "syntax error in pattern"),
    ],
    ids=repr,
)
def test_resolve_sources_refuses(ctx_dir: Path, source: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        Context.from_directory(ctx_dir).resolve_sources(source)
    assert message in str(info.value)


def test_resolve_sources_refuses_parents_leading_out(tmp_path: Path) -> None:
    outside = _tree(tmp_path / "outside", {"f": "x"})
    root = _tree(tmp_path / "c", {})
    os.symlink(outside, root / "escape")
    with pytest.raises(InvalidArgument, match="outside the build context"):
        Context.from_directory(root).resolve_sources("escape/f")


def test_resolve_sources_keeps_a_symlink_source(tmp_path: Path) -> None:
    root = _tree(tmp_path / "c", {"target": "t"})
    os.symlink("target", root / "link")
    os.symlink("nowhere", root / "dangling")
    ctx = Context.from_directory(root)
    assert ctx.resolve_sources("link") == ["link"]
    assert ctx.resolve_sources("dangling") == ["dangling"]


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*", "anything", True),
        ("*", ".hidden", True),
        ("*.c", "a.c", True),
        ("*.c", "a.h", False),
        ("a*b*c", "aXXbYYc", True),
        ("a*b*c", "aXXbYY", False),
        ("?", "x", True),
        ("?", "xy", False),
        ("[abc]", "b", True),
        ("[a-z]x", "qx", True),
        ("[^a-z]", "Q", True),
        ("[^a-z]", "q", False),
        ("[!a]", "!", True),
        ("\\*", "*", True),
        ("\\*", "x", False),
        ("[\\]]", "]", True),
        ("", "", True),
        ("a", "", False),
    ],
    ids=repr,
)
def test_match_component_is_go_filepath_match(pattern: str, name: str, matches: bool) -> None:
    assert match_component(pattern, name) is matches


@pytest.mark.parametrize("pattern", ["[", "[a", "[z-a]", "\\"])
def test_match_component_rejects_bad_patterns(pattern: str) -> None:
    with pytest.raises(InvalidArgument):
        match_component(pattern, "a")


def test_has_wildcards() -> None:
    assert has_wildcards("*.c")
    assert has_wildcards("a?")
    assert has_wildcards("[ab]")
    assert has_wildcards("a\\b")
    assert not has_wildcards("plain/path.txt")


# ------------------------------------------------------------------ checksums


def test_checksum_ignores_timestamps(ctx_dir: Path) -> None:
    ctx = Context.from_directory(ctx_dir)
    before = ctx.checksum(["src"])
    os.utime(ctx_dir / "src" / "main.c", (1, 1))
    os.utime(ctx_dir / "src", (2, 2))
    assert Context.from_directory(ctx_dir).checksum(["src"]) == before


def test_checksum_follows_content_mode_and_names(ctx_dir: Path) -> None:
    def digest() -> str:
        return str(Context.from_directory(ctx_dir).checksum(["src"]))

    seen = {digest()}
    (ctx_dir / "src" / "main.c").write_text("int main(void);\n")
    seen.add(digest())
    os.chmod(ctx_dir / "src" / "util.c", 0o755)
    seen.add(digest())
    os.rename(ctx_dir / "src" / "util.c", ctx_dir / "src" / "util2.c")
    seen.add(digest())
    (ctx_dir / "src" / "new").mkdir()
    seen.add(digest())
    os.symlink("main.c", ctx_dir / "src" / "ln")
    seen.add(digest())
    assert len(seen) == 6


def test_checksum_of_symlink_target_text(tmp_path: Path) -> None:
    root = _tree(tmp_path / "c", {"d/a": "1", "d/b": "1"})
    os.symlink("a", root / "d" / "l")
    first = Context.from_directory(root).checksum(["d"])
    os.remove(root / "d" / "l")
    os.symlink("b", root / "d" / "l")
    assert Context.from_directory(root).checksum(["d"]) != first


def test_checksum_unaffected_by_ignored_files(ctx_dir: Path) -> None:
    before = Context.from_directory(ctx_dir).checksum(["."])
    (ctx_dir / "x.log").write_text("changed\n")
    (ctx_dir / "new.log").write_text("new\n")
    (ctx_dir / "build" / "out.o").write_text("rebuilt\n")
    assert Context.from_directory(ctx_dir).checksum(["."]) == before
    (ctx_dir / "keep.log").write_text("changed\n")
    assert Context.from_directory(ctx_dir).checksum(["."]) != before


def test_checksum_depends_on_sources_and_their_order(ctx_dir: Path) -> None:
    ctx = Context.from_directory(ctx_dir)
    ab = ctx.checksum(["a.txt", "b.txt"])
    ba = ctx.checksum(["b.txt", "a.txt"])
    a = ctx.checksum(["a.txt"])
    assert len({ab, ba, a}) == 3
    assert ctx.checksum(["a.txt", "b.txt"]) == ab
    assert str(ab).startswith("sha256:")


def test_checksum_same_content_in_two_contexts(tmp_path: Path) -> None:
    one = _tree(tmp_path / "one", {"d/f": "same\n"})
    two = _tree(tmp_path / "two", {"d/f": "same\n"})
    assert Context.from_directory(one).checksum(["d"]) == Context.from_directory(two).checksum(["d"])


def test_checksum_follows_a_top_level_symlink(tmp_path: Path) -> None:
    root = _tree(tmp_path / "c", {"t1": "one", "t2": "two", "t3": "one"})
    os.symlink("t1", root / "l")
    first = Context.from_directory(root).checksum(["l"])
    unfollowed = Context.from_directory(root).checksum(["l"], follow_top_symlink=False)
    assert first != unfollowed
    os.remove(root / "l")
    os.symlink("t3", root / "l")  # same content behind another name: the same files copied
    assert Context.from_directory(root).checksum(["l"]) == first
    assert Context.from_directory(root).checksum(["l"], follow_top_symlink=False) != unfollowed
    os.remove(root / "l")
    os.symlink("t2", root / "l")
    assert Context.from_directory(root).checksum(["l"]) != first


def test_checksum_of_a_vanished_source(tmp_path: Path) -> None:
    ctx = Context.from_directory(_tree(tmp_path / "c", {}))
    with pytest.raises(NotFound):
        ctx.checksum(["gone"])


def test_file_digest(tmp_path: Path) -> None:
    ctx = Context.from_directory(_tree(tmp_path / "c", {"f": "abc"}))
    assert ctx.file_digest("f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ------------------------------------------------------------------ tars and stdin


def _tar(members: dict[str, str], *, gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, content in members.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o640
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_context_from_tar(tmp_path: Path, gz: bool) -> None:
    members = {"Dockerfile": "FROM x\n", "dir/f": "f\n", ".dockerignore": "*.tmp\n", "junk.tmp": "j"}
    data = _tar(members, gz=gz)
    with Context.from_tar(io.BytesIO(data), workdir=tmp_path) as ctx:
        root = ctx.root
        assert ctx.files() == [".dockerignore", "Dockerfile", "dir", "dir/f"]
        assert (root / "dir" / "f").stat().st_mode & 0o777 == 0o640
        assert ctx.read_dockerfile()[0] == "FROM x\n"
    assert not root.exists()


def test_context_from_tar_refuses_escaping_members(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive):
        Context.from_tar(io.BytesIO(_tar({"../evil": "x"})), workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_context_from_tar_refuses_garbage(tmp_path: Path) -> None:
    with pytest.raises(InvalidContent):
        Context.from_tar(io.BytesIO(b"not a tar" * 100), workdir=tmp_path)


def test_context_from_stdin_dockerfile(tmp_path: Path) -> None:
    ctx, text = Context.from_stdin(io.BytesIO(b"FROM busybox\nRUN true\n"), workdir=tmp_path)
    try:
        assert text == "FROM busybox\nRUN true\n"
        assert ctx.files() == []
    finally:
        ctx.close()
    assert list(tmp_path.iterdir()) == []


def test_context_from_stdin_tar(tmp_path: Path) -> None:
    data = _tar({"Dockerfile": "FROM x\n", "a": "1"}, gz=True)
    ctx, text = Context.from_stdin(io.BytesIO(data), workdir=tmp_path)
    with ctx:
        assert text is None
        assert ctx.files() == ["Dockerfile", "a"]


def test_context_close_leaves_a_user_directory_alone(ctx_dir: Path) -> None:
    ctx = Context.from_directory(ctx_dir)
    ctx.close()
    assert ctx_dir.is_dir()


def test_digest_memo_is_used_and_filled(tmp_path: Path) -> None:
    root = _tree(tmp_path / "c", {"f": "abc"})
    memo: dict[str, str] = {}
    first = Context.from_directory(root, digest_memo=memo).checksum(["f"])
    assert list(memo.values()) == ["ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]
    # a memo entry is trusted while the file's identity and times are unchanged ...
    (key,) = memo
    memo[key] = "0" * 64
    assert Context.from_directory(root, digest_memo=memo).checksum(["f"]) != first
    # ... and a rewrite (new ctime) is hashed again
    (root / "f").write_text("abc")
    assert Context.from_directory(root, digest_memo=memo).checksum(["f"]) == first


@pytest.mark.parametrize(
    ("patterns", "files"),
    [
        ("*\n!keep", ["keep"]),
        ("**\n!dir/keep", ["dir", "dir/keep"]),
        ("dir\n!dir/sub/deep", ["dir", "dir/sub", "dir/sub/deep", "keep"]),
        ("*/\n", []),
        ("", ["dir", "dir/drop", "dir/keep", "dir/sub", "dir/sub/deep", "keep"]),
    ],
    ids=["star-except-one", "all-except-nested", "deep-exception", "trailing-slash-cleaned", "nothing"],
)
def test_context_listing_with_exceptions(tmp_path: Path, patterns: str, files: list[str]) -> None:
    root = _tree(tmp_path / "c", {"keep": "k", "dir/keep": "k", "dir/drop": "d", "dir/sub/deep": "x"})
    ignore = tmp_path / "c.dockerignore"
    ignore.write_text(patterns)
    ctx = Context.from_directory(root, dockerfile=tmp_path / "c")
    assert ctx.files() == files


class _Trickle(io.RawIOBase):
    """A pipe that hands out at most 7 bytes a read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(7, len(buffer), len(self._data))
        buffer[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_context_from_stdin_reads_a_pipe_in_small_pieces(tmp_path: Path, gz: bool) -> None:
    data = _tar({"Dockerfile": "FROM x\n", "big": "y" * 100_000}, gz=gz)
    ctx, text = Context.from_stdin(_Trickle(data), workdir=tmp_path)  # type: ignore[arg-type]
    with ctx:
        assert text is None
        assert (ctx.root / "big").read_text() == "y" * 100_000


def test_context_from_stdin_short_dockerfile(tmp_path: Path) -> None:
    ctx, text = Context.from_stdin(_Trickle(b"FROM x\n"), workdir=tmp_path)  # type: ignore[arg-type]
    with ctx:
        assert text == "FROM x\n"
