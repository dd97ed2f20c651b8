"""``-v``, ``--mount``, named and anonymous volumes, ``volume`` commands, with the built-in
runtime and runc.

The image is busybox plus ``/data`` (owned by 1000, mode 0750, holding ``seed.txt``), an
image ``VOLUME /anon`` holding ``file.txt``, and ``/evil``, an absolute symlink to ``/etc``
(a mount or a seed copy through it must stay inside the container).
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.runtime import volumes
from strata.testing import tools
from strata.testing.baseimages import busybox_rootfs

RUNTIMES = ("builtin", "runc")
IMAGE = "localhost/voltest:latest"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tools.require("runc")
    base = tmp_path_factory.mktemp("volumes")
    rootfs = base / "rootfs"
    busybox_rootfs(rootfs)
    (rootfs / "data").mkdir()
    (rootfs / "data" / "seed.txt").write_text("seeded by the image\n")
    os.chown(rootfs / "data" / "seed.txt", 1000, 1000)
    os.chmod(rootfs / "data" / "seed.txt", 0o640)
    os.chown(rootfs / "data", 1000, 1000)
    os.chmod(rootfs / "data", 0o750)
    (rootfs / "anon").mkdir()
    (rootfs / "anon" / "file.txt").write_text("anonymous seed\n")
    (rootfs / "evil").symlink_to("/etc")
    (rootfs / "etc" / "image-marker").write_text("the image's etc\n")
    tar = base / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        for entry in sorted(os.listdir(rootfs)):
            t.add(rootfs / entry, arcname=entry)
    store = base / "root"
    tools.StrataCLI(store)("import", "-c", "VOLUME /anon", "-c", 'CMD ["sh"]', tar, IMAGE)
    yield store
    tools.assert_no_mounts_under(store)


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Strata:
    def __init__(self, root: Path, runtime: str) -> None:
        self.root = root
        self.runtime = runtime
        self.cli = tools.StrataCLI(root)

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli(*args, check=False)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("run", "--runtime", self.runtime, "--network", "none", *args,
                        check=False)


@pytest.fixture
def strata(root: Path, runtime: str) -> Strata:
    return Strata(root, runtime)


def _volumes(strata: Strata) -> list[str]:
    return strata("volume", "ls", "-q").stdout.split()


# --------------------------------------------------------------------------- binds


def test_bind_mount_read_write(strata: Strata, tmp_path: Path) -> None:
    host = tmp_path / "shared"
    host.mkdir()
    (host / "in.txt").write_text("from the host\n")
    out = strata.run("--rm", "-v", f"{host}:/mnt/h", IMAGE, "sh", "-c",
                     "cat /mnt/h/in.txt; echo from the container > /mnt/h/out.txt")
    assert (out.returncode, out.stdout) == (0, "from the host\n"), out.stderr
    assert (host / "out.txt").read_text() == "from the container\n"


@pytest.mark.parametrize("flag", ["-v", "--mount"])
def test_bind_mount_read_only(strata: Strata, tmp_path: Path, flag: str) -> None:
    host = tmp_path / "ro"
    host.mkdir()
    (host / "keep.txt").write_text("keep\n")
    value = (f"{host}:/mnt/ro:ro" if flag == "-v"
             else f"type=bind,source={host},target=/mnt/ro,readonly")
    out = strata.run("--rm", flag, value, IMAGE, "sh", "-c",
                     "cat /mnt/ro/keep.txt; rm /mnt/ro/keep.txt; echo x > /mnt/ro/new; "
                     "grep ' /mnt/ro ' /proc/mounts")
    assert out.stdout.splitlines()[0] == "keep"
    assert "Read-only file system" in out.stderr
    assert " ro," in out.stdout.splitlines()[1]
    assert sorted(os.listdir(host)) == ["keep.txt"]


def test_v_creates_a_missing_bind_source_like_docker(strata: Strata, tmp_path: Path) -> None:
    missing = tmp_path / "not" / "there"
    out = strata.run("--rm", "-v", f"{missing}:/mnt/m", IMAGE, "sh", "-c",
                     "echo made > /mnt/m/f")
    assert out.returncode == 0, out.stderr
    assert (missing / "f").read_text() == "made\n"


def test_mount_refuses_a_missing_bind_source(strata: Strata, tmp_path: Path) -> None:
    before = strata("ps", "-aq").stdout
    out = strata.run("--rm", "--mount", f"type=bind,source={tmp_path}/nope,target=/x", IMAGE,
                     "true")
    assert out.returncode == 125
    assert (f'invalid mount config for type "bind": bind source path does not exist: '
            f"{tmp_path}/nope") in out.stderr
    assert not (tmp_path / "nope").exists()
    assert strata("ps", "-aq").stdout == before


@pytest.mark.parametrize(("args", "message"), [
    (["-v", "./data:/data"], 'create ./data: "./data" includes invalid characters for a local '
                             'volume name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you'
                             " intended to pass a host directory, use absolute path"),
    (["-v", "rel/dir:/data"], '"rel/dir" includes invalid characters for a local volume name'),
    (["-v", "/tmp:relative"], "invalid mount path: 'relative' mount path must be absolute"),
    (["-v", "/tmp:/x:bogus"], "invalid mode: bogus"),
    (["-v", "/tmp:/"], "destination can't be '/'"),
    (["--mount", "type=bind,target=/x"], "field Source must not be empty"),
    (["--mount", "type=nfs,target=/x"], "type 'nfs' is not valid"),
    (["--mount", "type=volume,source=v,destination=/x,color=red"], "unexpected key 'color'"),
    (["--mount", "type=volume,source=v"], "target is required"),
    (["-v", "/tmp:/x", "-v", "/var:/x"], "Duplicate mount point: /x"),
], ids=["dot-relative", "relative", "relative-target", "mode", "root-target",
        "bind-no-source", "type", "key", "no-target", "duplicate"])
def test_bad_mount_specs_fail_with_125_and_change_nothing(
        strata: Strata, args: list[str], message: str) -> None:
    before = (strata("ps", "-aq").stdout, _volumes(strata))
    out = strata.run("--rm", *args, IMAGE, "true")
    assert out.returncode == 125
    assert message in out.stderr
    assert (strata("ps", "-aq").stdout, _volumes(strata)) == before
    assert not Path("data").exists() and not Path("rel").exists()


def test_mount_target_symlink_stays_inside_the_container(strata: Strata, tmp_path: Path
                                                        ) -> None:
    host = tmp_path / "src"
    host.mkdir()
    (host / "probe").write_text("probe\n")
    target = f"/evil/strata-volume-probe-{strata.runtime}"
    out = strata.run("--rm", "-v", f"{host}:{target}", IMAGE, "sh", "-c",
                     f"cat {target}/probe; cat /etc/image-marker")
    assert (out.returncode, out.stdout) == (0, "probe\nthe image's etc\n"), out.stderr
    assert not os.path.exists(f"/etc/strata-volume-probe-{strata.runtime}")


# --------------------------------------------------------------------------- volumes


def test_named_volume_is_seeded_from_the_image_and_persists(strata: Strata) -> None:
    name = f"vol-{strata.runtime}"
    out = strata.run("--rm", "-v", f"{name}:/data", IMAGE, "sh", "-c",
                     "stat -c '%u %a' /data /data/seed.txt; cat /data/seed.txt;"
                     " echo written > /data/new.txt; rm /data/seed.txt")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["1000 750", "1000 640", "seeded by the image"]
    assert name in _volumes(strata)
    info = json.loads(strata("volume", "inspect", name).stdout)[0]
    assert info["Name"] == name and info["Driver"] == "local"
    data = Path(info["Mountpoint"])
    assert data == strata.root / "volumes" / name / "_data"
    assert sorted(os.listdir(data)) == ["new.txt"]
    # A second container sees what the first left, and the volume is not seeded again.
    out = strata.run("--rm", "-v", f"{name}:/data:ro", IMAGE, "sh", "-c", "ls /data; cat "
                     "/data/new.txt")
    assert (out.returncode, out.stdout) == (0, "new.txt\nwritten\n"), out.stderr
    assert strata("volume", "rm", name).stdout == f"{name}\n"
    assert name not in _volumes(strata) and not data.exists()


def test_volume_seed_through_a_symlink_copies_the_images_files(strata: Strata) -> None:
    name = f"evil-{strata.runtime}"
    out = strata.run("--rm", "-v", f"{name}:/evil", IMAGE, "cat", "/evil/image-marker")
    assert (out.returncode, out.stdout) == (0, "the image's etc\n"), out.stderr
    data = strata.root / "volumes" / name / "_data"
    assert (data / "image-marker").read_text() == "the image's etc\n"
    assert (data / "passwd").read_bytes() != Path("/etc/passwd").read_bytes()
    assert strata("volume", "rm", name).returncode == 0


def test_nocopy_leaves_a_new_volume_empty(strata: Strata) -> None:
    name = f"nocopy-{strata.runtime}"
    out = strata.run("--rm", "-v", f"{name}:/data:nocopy", IMAGE, "ls", "-A", "/data")
    assert (out.returncode, out.stdout) == (0, ""), out.stderr
    assert strata("volume", "rm", name).returncode == 0


def test_image_volume_gets_an_anonymous_volume(strata: Strata) -> None:
    before = set(_volumes(strata))
    out = strata.run("--name", f"anon-{strata.runtime}", IMAGE, "sh", "-c",
                     "cat /anon/file.txt; grep ' /anon ' /proc/mounts | cut -d' ' -f2")
    assert (out.returncode, out.stdout) == (0, "anonymous seed\n/anon\n"), out.stderr
    new = set(_volumes(strata)) - before
    assert len(new) == 1 and all(len(n) == 64 for n in new)
    (anon,) = new
    removed = strata("volume", "rm", anon)
    assert removed.returncode == 1 and "volume is in use" in removed.stderr
    assert strata("rm", f"anon-{strata.runtime}").returncode == 0
    assert anon in _volumes(strata)  # docker keeps it (no --rm, no rm -v)
    pruned = strata("volume", "prune", "-f")
    assert pruned.returncode == 0 and anon in pruned.stdout.split()
    assert anon not in _volumes(strata)


def test_rm_option_drops_anonymous_volumes_but_not_named_ones(strata: Strata) -> None:
    before = set(_volumes(strata))
    name = f"kept-{strata.runtime}"
    out = strata.run("--rm", "-v", "/scratch", "-v", f"{name}:/kept", IMAGE, "sh", "-c",
                     "echo x > /scratch/x; echo y > /kept/y; cat /anon/file.txt")
    assert out.returncode == 0, out.stderr
    assert set(_volumes(strata)) - before == {name}
    assert strata("volume", "rm", name).returncode == 0


def test_volume_in_use_by_a_created_container(strata: Strata) -> None:
    name = f"used-{strata.runtime}"
    created = strata("create", "--runtime", strata.runtime, "--network", "none", "-v",
                     f"{name}:/data", IMAGE, "true")
    assert created.returncode == 0, created.stderr
    cid = created.stdout.strip()
    shown = volumes.inspect_mounts(strata.root / "containers" / cid)
    data = str(strata.root / "volumes" / name / "_data")
    assert {"Type": "volume", "Name": name, "Source": data, "Destination": "/data",
            "Driver": "local", "Mode": "", "RW": True, "Propagation": ""} in shown
    assert [m["Destination"] for m in shown] == ["/data", "/anon"]  # + the image's VOLUME
    out = strata("volume", "rm", name)
    assert out.returncode == 1
    assert f"remove {name}: volume is in use - [{cid}]" in out.stderr
    assert strata("rm", cid).returncode == 0
    assert strata("volume", "rm", name).returncode == 0
    missing = strata("volume", "rm", name)
    assert missing.returncode == 1 and f"get {name}: no such volume" in missing.stderr
    assert strata("volume", "rm", "-f", name).returncode == 0


def test_volume_create_ls_inspect_prune(strata: Strata) -> None:
    name = f"made-{strata.runtime}"
    assert strata("volume", "create", "--label", "team=r3", name).stdout == f"{name}\n"
    assert strata("volume", "create", name).stdout == f"{name}\n"  # idempotent, as docker
    rows = tools.parse_table(strata("volume", "ls").stdout)
    assert {"DRIVER": "local", "VOLUME NAME": name} in rows
    info = json.loads(strata("volume", "inspect", name).stdout)
    assert info[0]["Labels"] == {"team": "r3"} and info[0]["Scope"] == "local"
    bad = strata("volume", "create", "bad/name")
    assert bad.returncode == 1 and "includes invalid characters" in bad.stderr
    # prune keeps named volumes unless -a
    assert name not in strata("volume", "prune", "-f").stdout.split()
    assert name in strata("volume", "prune", "-f", "-a").stdout.split()
    assert name not in _volumes(strata)


# --------------------------------------------------------------------------- tmpfs, read-only


@pytest.mark.parametrize("args", [["--tmpfs", "/scratch:size=1m"],
                                  ["--mount", "type=tmpfs,target=/scratch,tmpfs-size=1m"]],
                         ids=["tmpfs", "mount"])
def test_tmpfs_mounts(strata: Strata, args: list[str]) -> None:
    out = strata.run("--rm", *args, IMAGE, "sh", "-c",
                     "grep ' /scratch ' /proc/mounts; echo x > /scratch/f && cat /scratch/f")
    assert out.returncode == 0, out.stderr
    fields = out.stdout.splitlines()[0].split()
    assert fields[2] == "tmpfs" and "size=1024k" in fields[3] and "noexec" in fields[3]
    assert out.stdout.splitlines()[1] == "x"


def test_read_only_rootfs_with_a_writable_volume(strata: Strata, tmp_path: Path) -> None:
    host = tmp_path / "rw"
    host.mkdir()
    out = strata.run("--rm", "--read-only", "-v", f"{host}:/out", IMAGE, "sh", "-c",
                     "touch /data/x; echo ok > /out/f")
    assert out.returncode == 0, out.stderr
    assert "Read-only file system" in out.stderr
    assert (host / "f").read_text() == "ok\n"
