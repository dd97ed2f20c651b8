"""apply() on hostile layers: refused with a clear error, or kept inside the root — never out.

Each row builds its layers in code (``strata.testing.tars``) around a jail: ``root`` is the
target and ``outside`` a sentinel tree next to it, whose full state is compared before and
after.  ``{out}`` in a name stands for the sentinel's absolute host path.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from strata.errors import InvalidContent, StrataError, UnsafeArchive
from strata.layers import ApplyOptions, apply, open_decompressed, scan
from strata.oci import Compression
from strata.testing.tars import Entry, Jail, build

Layers = Callable[[str], list[bytes]]
Planter = Callable[[Path], None]
Check = Callable[[Path, str], None]


@dataclass(frozen=True)
class Case:
    """One hostile input: the layers, what is planted first, and what must happen."""

    layers: Layers
    error: type[StrataError] | None = None
    member: str | None = None
    reason: str = ""
    plant: Planter | None = None
    check: Check | None = None
    options: ApplyOptions = field(default_factory=ApplyOptions)
    lexical: bool = False  # scan() must refuse it too


def one(*entries: Entry) -> Layers:
    return lambda out: [build(entries)]


def each(*layers: list[Entry]) -> Layers:
    return lambda out: [build(layer) for layer in layers]


def with_out(make: Callable[[str], list[list[Entry]]]) -> Layers:
    return lambda out: [build(layer) for layer in make(out)]


def plant_symlink(name: str, target: str) -> Planter:
    def plant(root: Path) -> None:
        os.symlink(target, root / name)

    return plant


def plant_loop(root: Path) -> None:
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")


def exists(rel: str, content: bytes | None = None) -> Check:
    def check(root: Path, out: str) -> None:
        path = root / rel.format(out=out.lstrip("/"))
        assert os.path.lexists(path), path
        if content is not None:
            assert path.read_bytes() == content

    return check


def truncated_member() -> Layers:
    data = build([Entry.file("ok", b"fine"), Entry.file("big", b"x" * 4096)])
    return lambda out: [data[: 512 * 3 + 1000]]


def truncated_header() -> Layers:
    data = build([Entry.file("ok", b"fine"), Entry.file("next", b"y")])
    return lambda out: [data[: 512 * 2 + 200]]


def truncated(compression: Compression) -> Layers:
    data = build([Entry.file("a", os.urandom(200_000))], compression=compression)
    return lambda out: [data[: len(data) // 2]]


def corrupt_gzip() -> Layers:
    data = bytearray(build([Entry.file("a", b"hello" * 50_000)], compression=Compression.GZIP))
    data[len(data) // 2] ^= 0x5A
    return lambda out: [bytes(data)]


def bad_checksum() -> Layers:
    data = bytearray(build([Entry.file("a", b"1")]))
    data[0] = ord("b")
    return lambda out: [bytes(data)]


CASES = {
    "dotdot-path": Case(
        one(Entry.file("../outside/pwned", b"x")),
        UnsafeArchive,
        "../outside/pwned",
        "escapes the root",
        lexical=True,
    ),
    "dotdot-nested": Case(
        one(Entry.file("a/b/../../../outside/pwned", b"x")),
        UnsafeArchive,
        "a/b/../../../outside/pwned",
        "escapes the root",
        lexical=True,
    ),
    "dotdot-directory": Case(
        one(Entry.dir("../outside/newdir")),
        UnsafeArchive,
        "../outside/newdir",
        "escapes the root",
        lexical=True,
    ),
    "absolute-path": Case(
        lambda out: [build([Entry.file(f"{out}/pwned", b"x")])],
        UnsafeArchive,
        "{out}/pwned",
        "absolute path",
        lexical=True,
    ),
    "absolute-etc": Case(
        one(Entry.file("/etc/strata-pwned", b"x")),
        UnsafeArchive,
        "/etc/strata-pwned",
        "absolute path",
        lexical=True,
    ),
    "symlink-escape-relative": Case(
        one(Entry.dir("a"), Entry.symlink("a/b", "../../outside")),
        UnsafeArchive,
        "a/b",
        "invalid symlink",
        lexical=True,
    ),
    "symlink-escape-dotdot-at-root": Case(
        one(Entry.symlink("up", "..")),
        UnsafeArchive,
        "up",
        "invalid symlink",
        lexical=True,
    ),
    "symlink-then-write-through": Case(
        one(Entry.symlink("l", "../outside"), Entry.file("l/pwned", b"x")),
        UnsafeArchive,
        "l",
        "invalid symlink",
        lexical=True,
    ),
    "write-through-escaping-symlink": Case(
        one(Entry.file("esc/pwned", b"inside")),
        plant=plant_symlink("esc", "../outside"),
        check=exists("outside/pwned", b"inside"),  # `..` stops at the root
    ),
    "write-through-absolute-symlink": Case(
        with_out(lambda out: [[Entry.symlink("abs", out)], [Entry.file("abs/pwned", b"in")]]),
        check=exists("{out}/pwned", b"in"),  # an absolute target restarts at the root
    ),
    "symlinked-parent-dir": Case(
        each(
            [Entry.symlink("d", "/")],
            [Entry.file("d/x", b"1"), Entry.dir("d/sub"), Entry.file("d/sub/y", b"2")],
        ),
        check=exists("sub/y", b"2"),
    ),
    "symlink-chain-climbing": Case(
        one(Entry.file("a/outside/pwned", b"in")),
        plant=plant_symlink("a", "b/../../../../.."),
        check=exists("outside/pwned", b"in"),
    ),
    "hardlink-outside-root": Case(
        one(Entry.hardlink("h", "../outside/secret")),
        UnsafeArchive,
        "h",
        "escapes root",
        lexical=True,
    ),
    "hardlink-absolute-missing": Case(
        lambda out: [build([Entry.hardlink("h", f"{out}/secret")])],
        UnsafeArchive,
        "h",
        "does not exist",
    ),
    "hardlink-via-escaping-symlink": Case(
        one(Entry.hardlink("h", "esc/secret")),
        UnsafeArchive,
        "h",
        "does not exist",
        plant=plant_symlink("esc", "../outside"),
    ),
    "hardlink-to-directory": Case(
        one(Entry.dir("d"), Entry.hardlink("h", "d")),
        UnsafeArchive,
        "h",
        "is a directory",
    ),
    "hardlink-to-root": Case(
        one(Entry.hardlink("h", "./")),
        UnsafeArchive,
        "h",
        "root directory",
        lexical=True,
    ),
    "whiteout-dotdot": Case(
        one(Entry.file("sub/.wh...", b"")),
        UnsafeArchive,
        "sub/.wh...",
        "names no deletable entry",
        lexical=True,
    ),
    "whiteout-dot": Case(
        one(Entry.file(".wh..", b"")),
        UnsafeArchive,
        ".wh..",
        "names no deletable entry",
        lexical=True,
    ),
    "whiteout-empty": Case(
        one(Entry.file(".wh.", b"")),
        UnsafeArchive,
        ".wh.",
        "names no deletable entry",
        lexical=True,
    ),
    "whiteout-escape": Case(
        one(Entry.file("../.wh.outside", b"")),
        UnsafeArchive,
        "../.wh.outside",
        "escapes the root",
        lexical=True,
    ),
    "opaque-escape": Case(
        one(Entry.opaque("../outside")),
        UnsafeArchive,
        "../outside/.wh..wh..opq",
        "escapes the root",
        lexical=True,
    ),
    "whiteout-through-escaping-symlink": Case(
        one(Entry.whiteout("esc/secret"), Entry.opaque("esc/sub")),
        plant=plant_symlink("esc", "../outside"),
    ),
    "root-retyped-to-file": Case(
        one(Entry.file(".", b"x")),
        UnsafeArchive,
        ".",
        "type of the root directory",
        lexical=True,
    ),
    "root-retyped-to-symlink": Case(
        one(Entry.symlink("./", "/")),
        UnsafeArchive,
        "./",
        "type of the root directory",
        lexical=True,
    ),
    "root-retyped-via-dotdot": Case(
        one(Entry.dir("a"), Entry.symlink("a/..", "../outside")),
        UnsafeArchive,
        "a/..",
        "type of the root directory",
        lexical=True,
    ),
    "truncated-member-data": Case(
        truncated_member(), InvalidContent, "big", "unexpected end of data in member"
    ),
    "truncated-header": Case(truncated_header(), InvalidContent, None, "truncated tar header"),
    "truncated-gzip": Case(
        truncated(Compression.GZIP), InvalidContent, None, "truncated gzip stream in layer"
    ),
    "truncated-zstd": Case(
        truncated(Compression.ZSTD), InvalidContent, None, "truncated zstd stream in layer"
    ),
    "corrupt-gzip": Case(corrupt_gzip(), InvalidContent, None, "gzip stream in layer"),
    "bad-header-checksum": Case(bad_checksum(), InvalidContent, None, "bad checksum"),
    "device-not-allowed": Case(
        one(Entry.char("dev/mem", 1, 1)),
        UnsafeArchive,
        "dev/mem",
        "device nodes are not allowed",
        options=ApplyOptions(allow_devices=False),
    ),
    "nul-in-name": Case(
        one(Entry("a", pax={"path": "ok\x00/../../outside/pwned"})),
        UnsafeArchive,
        "ok",
        "NUL byte in name",
        lexical=True,
    ),
    "name-too-long": Case(
        one(Entry.file("d/" + "x" * 300, b"")),
        UnsafeArchive,
        "d/" + "x" * 300,
        "too long",
        lexical=True,
    ),
    "symlink-loop-parent": Case(
        one(Entry.file("a/x", b"")),
        UnsafeArchive,
        "a/x",
        "too many levels of symbolic links",
        plant=plant_loop,
    ),
    "parent-is-a-file": Case(
        one(Entry.file("f", b""), Entry.file("f/x", b"")),
        UnsafeArchive,
        "f/x",
        "is not a directory",
    ),
    "sparse-member": Case(
        one(Entry("sparse", type=b"S", data=b"")),
        InvalidContent,
        "sparse",
        "sparse member",
        lexical=True,
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_apply_hostile_layer(jail: Jail, case: Case) -> None:
    out = str(jail.outside)
    if case.plant is not None:
        case.plant(jail.root)
    blobs = case.layers(out)
    for blob in blobs[:-1]:
        with open_decompressed(io.BytesIO(blob)) as stream:
            apply(jail.root, stream, case.options)
    with open_decompressed(io.BytesIO(blobs[-1])) as stream:
        if case.error is None:
            apply(jail.root, stream, case.options)
        else:
            with pytest.raises(case.error) as raised:
                apply(jail.root, stream, case.options)
            error = raised.value
            assert type(error) is case.error, repr(error)
            assert case.reason in str(error)
            if case.member is not None:
                member = case.member.format(out=out)
                assert member in str(error)
                if isinstance(error, UnsafeArchive):
                    assert error.member.startswith(member) and case.reason in error.reason
    assert jail.escapes() == []
    if case.check is not None:
        case.check(jail.root, out)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES.values() if c.lexical],
    ids=[name for name, c in CASES.items() if c.lexical],
)
def test_scan_refuses_what_apply_refuses_lexically(case: Case) -> None:
    assert case.error is not None
    with pytest.raises(case.error) as raised:
        for blob in case.layers("/nonexistent-outside"):
            scan(open_decompressed(io.BytesIO(blob)))
    assert case.reason in str(raised.value)


USERNS_SCRIPT = textwrap.dedent(
    """
    import io, sys
    from pathlib import Path
    from strata.errors import UnsafeArchive
    from strata.layers import apply
    try:
        apply(Path(sys.argv[1]), io.BytesIO(sys.stdin.buffer.read()))
    except UnsafeArchive as exc:
        print(f"{type(exc).__name__}|{exc.member}|{exc.reason}")
        sys.exit(3)
    print("applied")
    """
)


def test_apply_device_in_user_namespace_fails_cleanly(jail: Jail) -> None:
    """mknod without CAP_MKNOD (a user namespace): an UnsafeArchive naming the member."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "true"], check=False)
    assert probe.returncode == 0, "user namespaces are required (the runtime needs them too)"
    data = build([Entry.fifo("run/ok"), Entry.char("dev/null", 1, 3)])
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", USERNS_SCRIPT, jail.root],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr.decode()
    kind, member, reason = result.stdout.decode().strip().split("|")
    assert (kind, member) == ("UnsafeArchive", "dev/null")
    assert reason == "cannot create device node: operation not permitted"
    assert os.path.exists(jail.root / "run/ok")  # the fifo before it was fine
    assert jail.escapes() == []
