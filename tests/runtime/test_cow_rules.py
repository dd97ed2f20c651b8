"""docker's change rules on hand-made overlay upper directories (no container needed):
whiteouts, opaque directories, copied-up parents, order; SizeRw; and the ``-f`` template
subset ``inspect`` uses."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest

from strata.cli.containers import format_template
from strata.runtime.changes import WritableLayer, changes, size_rw


def _layer(tmp_path: Path) -> tuple[Path, Path, WritableLayer]:
    lower = tmp_path / "lower"
    upper = tmp_path / "upper"
    for d in ("etc", "usr/lib", "var/spool", "home"):
        (lower / d).mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("root:x:0:0\n")
    (lower / "usr" / "lib" / "libc.so").write_text("elf\n")
    (lower / "var" / "spool" / "job").write_text("job\n")
    (lower / "host").symlink_to("/")  # a hostile image's link to the host's root
    upper.mkdir()
    return lower, upper, WritableLayer(upper, (lower,), True)


def _copy_up_dir(lower: Path, upper: Path, rel: str) -> None:
    """What overlay's copy-up does to a parent directory: same mode and times."""
    (upper / rel).mkdir(parents=True, exist_ok=True)
    st = os.lstat(lower / rel)
    os.chmod(upper / rel, st.st_mode & 0o7777)
    os.utime(upper / rel, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_changes_follow_dockers_rules(tmp_path: Path) -> None:
    lower, upper, layer = _layer(tmp_path)
    # A modified file: it and its parent directory (docker: a directory holding a change).
    _copy_up_dir(lower, upper, "etc")
    (upper / "etc" / "passwd").write_text("root:x:0:0\nnew:x:1:1\n")
    _copy_up_dir(lower, upper, "etc")  # writing changed nothing in the directory itself
    # A deleted file: its parents are reported modified, then the whiteout.
    _copy_up_dir(lower, upper, "var")
    _copy_up_dir(lower, upper, "var/spool")
    _copy_up_dir(lower, upper, "var")
    os.mknod(upper / "var" / "spool" / "job", 0o600 | 0o020000, os.makedev(0, 0))
    # An opaque directory replacing one below: modified; its new entries added, what it
    # hides below deleted.
    (upper / "usr").mkdir()
    os.setxattr(upper / "usr", "trusted.overlay.opaque", b"y")
    (upper / "usr" / "fresh").write_text("new\n")
    # A new tree: everything in it added.
    (upper / "opt" / "app").mkdir(parents=True)
    (upper / "opt" / "app" / "run").write_text("#!/bin/sh\n")
    # A directory replacing the image's link to the host's /: modified, and what is under
    # it added (never compared with the host's /etc, where the link points).
    (upper / "host" / "etc").mkdir(parents=True)
    assert [str(c) for c in changes(layer)] == [
        "C /etc", "C /etc/passwd",
        "C /host", "A /host/etc",
        "A /opt", "A /opt/app", "A /opt/app/run",
        "C /usr", "A /usr/fresh", "D /usr/lib",
        "C /var", "C /var/spool", "D /var/spool/job",
    ]
    # SizeRw: the files' bytes (the whiteout and directories hold none).
    assert size_rw(layer) == len("root:x:0:0\nnew:x:1:1\n") + len("new\n") + len("#!/bin/sh\n")


def test_hardlinks_count_once_in_size_rw(tmp_path: Path) -> None:
    _, upper, layer = _layer(tmp_path)
    (upper / "a").write_bytes(b"x" * 100)
    os.link(upper / "a", upper / "b")
    (upper / "l").symlink_to("a")
    assert size_rw(layer) == 100 + len("a")


@pytest.mark.parametrize(("template", "expected"), [
    ("{{.Name}}", "/web"),
    ("{{.State.Running}} {{.State.Pid}}", "true 42"),
    ("{{json .Config.Cmd}}", '["sh", "-c", "x"]'),
    ("{{.Config.Labels}}", "map[a:1 b:2]"),
    ("{{.Config.Entrypoint}}", "<nil>"),
    ("id={{ .Id }}!", "id=abc!"),
    ("{{.Config.Cmd}}", "[sh -c x]"),
], ids=["string", "bool-int", "json", "map", "nil", "spaces-and-text", "list"])
def test_format_template_subset(template: str, expected: str) -> None:
    obj = {"Name": "/web", "Id": "abc", "State": {"Running": True, "Pid": 42},
           "Config": {"Cmd": ["sh", "-c", "x"], "Labels": {"b": "2", "a": "1"},
                      "Entrypoint": None}}
    assert format_template(template, obj) == expected


def test_format_template_unknown_field() -> None:
    with pytest.raises(click.UsageError, match="no field 'Nope'"):
        format_template("{{.Nope}}", {"Name": "x"})
    with pytest.raises(click.UsageError, match="unsupported action"):
        format_template("{{range .X}}", {"X": []})
