"""Copy-on-write as the documents describe it, with both runtimes: a container that writes a
new file, modifies a lower file and deletes a lower file changes its upper directory (new
file, copied-up file, whiteout) and nothing else; a second container sees the originals;
``inspect -s`` SizeRw is the bytes written; ``diff`` lists exactly the changes; ``commit``
makes an image whose new layer holds exactly what ``diff`` listed, and ``run`` of it shows
the changes.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.engine import Engine
from strata.runtime.changes import writable_layer
from strata.runtime.container import upper_key
from strata.testing import tools, trees
from strata.testing.baseimages import BUSYBOX_REF

RUNTIMES = ("builtin", "runc")

NEW_TEXT = "a new file written by the container\n"
APPENDED = "changed:x:4242:4242::/:/bin/sh\n"
SCRIPT = (f"printf '{NEW_TEXT}' > /created.txt; printf '{APPENDED}' >> /etc/passwd;"
          " rm /bin/true")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Iterator[Path]:
    """A strata root holding the busybox image, shared by this module's tests."""
    tools.require("runc")
    path = tmp_path_factory.mktemp("cow") / "root"
    tools.StrataCLI(path)("load", "-i", busybox_layout)
    yield path
    tools.assert_no_mounts_under(path)


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _mtimes(top: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, top)] = os.lstat(path).st_mtime_ns
    return out


def _layer_entries(engine: Engine, ref: str) -> list[tarfile.TarInfo]:
    """The members of the image's top layer, read back from the content store."""
    layer = engine.resolve(ref).image.layers()[-1]
    with layer.open_uncompressed() as stream:
        data = stream.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def _as_changes(members: list[tarfile.TarInfo], lowers: tuple[Path, ...]) -> set[str]:
    """docker-diff lines for a layer's members: ``.wh.X`` → D, present below → C, else A."""
    out = set()
    for m in members:
        name = m.name.rstrip("/").removeprefix("./")
        head, _, base = name.rpartition("/")
        if base.startswith(".wh."):
            out.add(f"D /{head + '/' if head else ''}{base[4:]}")
            continue
        below = any(os.path.lexists(lower / name) for lower in lowers)
        out.add(f"{'C' if below else 'A'} /{name}")
    return out


def test_copy_on_write_diff_size_commit(root: Path, runtime: str) -> None:
    cli = tools.StrataCLI(root)
    engine = Engine(root)
    name = f"cow-{runtime}"
    cid = cli("create", "--runtime", runtime, "--network", "none", "--name", name,
              BUSYBOX_REF, "sh", "-c", SCRIPT).stdout.strip()
    layer = writable_layer(engine.snapshotter, cid)
    init = engine.snapshotter.stat(upper_key(cid)).parent
    assert init is not None and layer.overlay
    assert layer.lowers[0] == engine.snapshotter.fs_path(init)  # type: ignore[attr-defined]
    before = {lower: (trees.snapshot(lower), _mtimes(lower)) for lower in layer.lowers}
    original_passwd = next(
        (lower / "etc" / "passwd").read_bytes() for lower in layer.lowers
        if (lower / "etc" / "passwd").exists())
    assert os.listdir(layer.upper) == []

    out = cli("start", "-a", name, check=False)
    assert out.returncode == 0, out.stderr

    # The upper directory: the new file, the copied-up file, the whiteout; only their parents
    # besides.
    upper = layer.upper
    assert (upper / "created.txt").read_text() == NEW_TEXT
    assert (upper / "etc" / "passwd").read_bytes() == original_passwd + APPENDED.encode()
    true_st = os.lstat(upper / "bin" / "true")
    assert stat.S_ISCHR(true_st.st_mode) and true_st.st_rdev == 0
    found = sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))
    assert found == ["bin", "bin/true", "created.txt", "etc", "etc/passwd"]
    # ... and nowhere else: every lower directory unchanged, byte for byte and in its times.
    for lower, (tree, mtimes) in before.items():
        assert trees.snapshot(lower) == tree, f"{lower} changed"
        assert _mtimes(lower) == mtimes, f"{lower}: times changed"

    # A second container of the same image sees the originals.
    out = cli("run", "--runtime", runtime, "--network", "none", "--rm", BUSYBOX_REF, "sh",
              "-c", "cat /created.txt 2>&1; grep -c changed: /etc/passwd; ls /bin/true")
    assert out.stdout.splitlines() == [
        "cat: can't open '/created.txt': No such file or directory", "0", "/bin/true"]

    # inspect -s: SizeRw is the bytes written (the new file and the whole copied-up file;
    # a whiteout holds none), SizeRootFs adds the image's size.
    written = len(NEW_TEXT) + len(original_passwd) + len(APPENDED)
    (inspected,) = json.loads(cli("inspect", "-s", name).stdout)
    assert inspected["SizeRw"] == written
    image_size = json.loads(cli("image", "inspect", BUSYBOX_REF).stdout)[0]["Size"]
    assert inspected["SizeRootFs"] == image_size + written
    assert inspected["GraphDriver"]["Data"]["UpperDir"] == str(upper)
    assert cli("inspect", "-s", "-f", "{{.SizeRw}}", name).stdout == f"{written}\n"
    assert "SizeRw" not in json.loads(cli("inspect", name).stdout)[0]

    # diff: exactly the three changes and the directories holding them.
    lines = cli("diff", name).stdout.splitlines()
    assert lines == ["C /bin", "D /bin/true", "A /created.txt", "C /etc", "C /etc/passwd"]

    # commit: the new layer's entries are what diff listed, and run of the image shows the
    # changes.
    image_id = cli("commit", "-m", "cow test", "-a", "R4 <r4@example.com>", name,
                   f"localhost/cow-{runtime}:1").stdout.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    members = _layer_entries(engine, f"localhost/cow-{runtime}:1")
    assert _as_changes(members, layer.lowers) == set(lines)
    assert sorted(m.name for m in members) == ["bin", "bin/.wh.true", "created.txt", "etc",
                                               "etc/passwd"]
    out = cli("run", "--runtime", runtime, "--network", "none", "--rm",
              f"localhost/cow-{runtime}:1", "sh", "-c",
              "cat /created.txt; tail -n 1 /etc/passwd; ls /bin/true 2>&1; echo done")
    assert out.stdout.splitlines() == [NEW_TEXT.strip(), APPENDED.strip(),
                                       "ls: /bin/true: No such file or directory", "done"]
    (image,) = json.loads(cli("image", "inspect", f"localhost/cow-{runtime}:1").stdout)
    assert image["Id"] == image_id
    assert image["Comment"] == "cow test" and image["Author"] == "R4 <r4@example.com>"
    assert image["Container"] == cid
    assert image["Config"]["Cmd"] == ["sh", "-c", SCRIPT]
    top = Engine(root).history(f"localhost/cow-{runtime}:1")[0]
    assert (top.id, top.created_by, top.comment) == (image_id, f"sh -c {SCRIPT}", "cow test")
    cli("rm", name)
    cli("rmi", f"localhost/cow-{runtime}:1")


def test_commit_change_and_empty_layer(root: Path, runtime: str) -> None:
    cli = tools.StrataCLI(root)
    name = f"same-{runtime}"
    cli("run", "--runtime", runtime, "--network", "none", "--name", name, BUSYBOX_REF,
        "true")
    assert cli("diff", name).stdout == ""
    image_id = cli("commit", "-c", "ENV FOO=bar", "-c", 'CMD ["sh", "-c", "echo $FOO"]',
                   name, f"localhost/same-{runtime}").stdout.strip()
    (image,) = json.loads(cli("image", "inspect", f"localhost/same-{runtime}").stdout)
    (base,) = json.loads(cli("image", "inspect", BUSYBOX_REF).stdout)
    assert image["Id"] == image_id
    # No change: no new layer (docker records an empty_layer history entry instead).
    assert image["RootFS"]["Layers"] == base["RootFS"]["Layers"]
    out = cli("run", "--runtime", runtime, "--network", "none", "--rm",
              f"localhost/same-{runtime}")
    assert out.stdout == "bar\n"
    cli("rm", name)
    cli("rmi", f"localhost/same-{runtime}")


def test_opaque_directory_and_deleted_directory(root: Path, runtime: str) -> None:
    cli = tools.StrataCLI(root)
    name = f"opq-{runtime}"
    cli("run", "--runtime", runtime, "--network", "none", "--name", name, BUSYBOX_REF, "sh",
        "-c", "rm -r /usr && mkdir /usr && echo only > /usr/only && rm -r /var/spool &&"
        " mkdir -p /home/new/deep && echo x > /home/new/deep/f")
    lines = cli("diff", name).stdout.splitlines()
    # /usr was replaced by a directory of the same name (overlay made it opaque): what it
    # held below is deleted, its new entry added.
    assert lines == ["C /home", "A /home/new", "A /home/new/deep", "A /home/new/deep/f",
                     "C /usr", "A /usr/only", "D /usr/sbin", "C /var", "D /var/spool"]
    cli("commit", name, f"localhost/opq-{runtime}")
    members = {m.name for m in _layer_entries(Engine(root), f"localhost/opq-{runtime}")}
    assert {"usr/.wh..wh..opq", "var/.wh.spool", "home/new/deep/f", "usr/only"} <= members
    out = cli("run", "--runtime", runtime, "--network", "none", "--rm",
              f"localhost/opq-{runtime}", "sh", "-c", "ls /usr; ls /var; cat /home/new/deep/f")
    assert out.stdout.splitlines() == ["only", "x"]
    cli("rm", name)
    cli("rmi", f"localhost/opq-{runtime}")


def test_native_snapshotter_diff_size_commit(busybox_layout: Path, tmp_path: Path) -> None:
    """Where overlay cannot be used, the same commands compare the container's full copy with
    its init layer's (docker's naive diff)."""
    root = tmp_path / "native-root"
    cli = tools.StrataCLI(root, env={"STRATA_SNAPSHOTTER": "native"})
    cli("load", "-i", busybox_layout)
    cli("run", "--network", "none", "--name", "n1", BUSYBOX_REF, "sh", "-c", SCRIPT)
    assert cli("diff", "n1").stdout.splitlines() == [
        "C /bin", "D /bin/true", "A /created.txt", "C /etc", "C /etc/passwd"]
    passwd = len(cli("run", "--rm", "--network", "none", BUSYBOX_REF, "cat",
                     "/etc/passwd").stdout)
    size = cli("inspect", "-s", "-f", "{{.SizeRw}}", "n1").stdout
    assert size == f"{len(NEW_TEXT) + passwd + len(APPENDED)}\n"
    cli("commit", "n1", "localhost/native-commit")
    out = cli("run", "--rm", "--network", "none", "localhost/native-commit", "sh", "-c",
              "cat /created.txt; tail -n 1 /etc/passwd; ls /bin/true 2>&1", check=False)
    assert out.stdout.splitlines() == [NEW_TEXT.strip(), APPENDED.strip(),
                                       "ls: /bin/true: No such file or directory"]
    cli("rm", "n1")
    assert str(root) not in Path("/proc/self/mountinfo").read_text()
