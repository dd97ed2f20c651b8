"""Hostile images and input: a config naming a missing (or unexecutable) binary, and images
whose mount targets are symlinks pointing at the host (``/etc/hosts → /HOST/passwd``,
``/etc/resolv.conf → ../linked/resolv`` with ``/linked → /HOST/mnt``, ``/dev/shm``,
``/proc``, a ``--tmpfs`` and a ``-v`` target under a linked directory) cannot make strata
write or mount outside the container's rootfs — with the built-in runtime and runc.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.testing import tools
from strata.testing.baseimages import BUSYBOX_REF, busybox_rootfs

RUNTIMES = ("builtin", "runc")
HOSTILE_REF = "localhost/hostile:latest"
NOCMD_REF = "localhost/nocmd:latest"
DIRCMD_REF = "localhost/dircmd:latest"


@pytest.fixture(scope="module")
def host_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Files and directories on the host that the hostile image's links point at."""
    host = tmp_path_factory.mktemp("host-side")
    (host / "passwd").write_text("root:x:0:0:precious host file:/root:/bin/sh\n")
    (host / "resolv").write_text("nameserver 192.0.2.53\n")  # (unused: /linked is mnt)
    (host / "hostname").write_text("host-name\n")
    for name in ("shm", "proc", "mnt", "vol"):
        (host / name).mkdir()
        (host / name / "keep").write_text(f"{name} content\n")
    (host / "mnt" / "resolv").write_text("nameserver 192.0.2.54\n")
    return host


def _tree_digest(path: Path) -> list[tuple[str, str, float]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            st = full.lstat()
            data = full.read_bytes() if full.is_file() and not full.is_symlink() else b""
            out.append((str(full.relative_to(path)), hashlib.sha256(data).hexdigest(),
                        st.st_mtime))
    return out


def _image_tar(tmp: Path, host: Path) -> Path:
    rootfs = tmp / "hostile-rootfs"
    busybox_rootfs(rootfs)
    etc = rootfs / "etc"
    for name in ("hosts", "resolv.conf", "hostname"):
        (etc / name).unlink(missing_ok=True)
    (etc / "hosts").symlink_to(host / "passwd")
    # Relative and lexically inside the rootfs, but through /linked (absolute, to the host).
    (etc / "resolv.conf").symlink_to("../linked/resolv")
    (etc / "hostname").symlink_to(host / "hostname")
    (rootfs / "dev").rmdir()
    (rootfs / "dev").mkdir()
    (rootfs / "dev" / "shm").symlink_to(host / "shm")
    (rootfs / "proc").rmdir()
    (rootfs / "proc").symlink_to(host / "proc")
    (rootfs / "linked").symlink_to(host / "mnt")
    tar = tmp / "hostile.tar"
    with tarfile.open(tar, "w") as archive:
        for entry in sorted(os.listdir(rootfs)):
            archive.add(rootfs / entry, arcname=entry)
    return tar


@pytest.fixture(scope="module")
def loaded_root(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path,
                host_dir: Path) -> Iterator[Path]:
    tools.require("runc")
    tmp = tmp_path_factory.mktemp("hostile")
    root = tmp / "root"
    cli = tools.StrataCLI(root)
    cli("load", "-i", busybox_layout)
    tar = _image_tar(tmp, host_dir)
    cli("import", "-c", 'CMD ["sh"]', tar, HOSTILE_REF)
    cli("import", "-c", 'CMD ["/no/such/binary", "--flag"]', tar, NOCMD_REF)
    cli("import", "-c", 'ENTRYPOINT ["/etc"]', tar, DIRCMD_REF)
    yield root
    tools.assert_no_mounts_under(root, host_dir)


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _run(root: Path, runtime: str, *args: str) -> subprocess.CompletedProcess[str]:
    return tools.StrataCLI(root)("run", "--rm", "--runtime", runtime, *args, check=False)


def test_missing_binary_in_the_config_exits_127_with_dockers_message(loaded_root: Path,
                                                                     runtime: str) -> None:
    out = _run(loaded_root, runtime, NOCMD_REF)
    assert out.returncode == 127
    assert ('exec: "/no/such/binary": stat /no/such/binary: no such file or directory'
            in out.stderr), out.stderr
    out = _run(loaded_root, runtime, NOCMD_REF.replace("nocmd", "hostile"), "no-such-tool")
    assert out.returncode == 127
    assert 'exec: "no-such-tool": executable file not found in $PATH' in out.stderr


def test_a_directory_as_entrypoint_exits_126(loaded_root: Path, runtime: str) -> None:
    out = _run(loaded_root, runtime, DIRCMD_REF)
    assert out.returncode == 126, out.stderr
    assert 'exec: "/etc": permission denied' in out.stderr or "is a directory" in out.stderr


def test_symlinked_mount_targets_stay_inside_the_container(loaded_root: Path, runtime: str,
                                                           host_dir: Path) -> None:
    before = _tree_digest(host_dir)
    script = ("cat /etc/hosts; cat /etc/hostname; cat /etc/resolv.conf;"
              " echo written > /etc/hosts; echo w > /dev/shm/new; echo w > /linked/t/new;"
              " ls /proc/self/ > /dev/null && echo proc-ok;"
              " grep -E ' /(dev/shm|proc|linked/t|etc/hosts) ' /proc/mounts | cut -d' ' -f2")
    out = _run(loaded_root, runtime, "--hostname", "boxname", "--tmpfs", "/linked/t",
               HOSTILE_REF, "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    assert "localhost" in out.stdout  # strata's hosts file, not the host's passwd
    assert "precious host file" not in out.stdout
    assert "boxname" in out.stdout and "host-name" not in out.stdout
    assert "192.0.2.5" not in out.stdout
    assert "proc-ok" in out.stdout
    # Nothing on the host changed: no file written, created or mounted over.
    assert _tree_digest(host_dir) == before


def test_strata_writes_nothing_through_links_when_creating(loaded_root: Path, runtime: str,
                                                           host_dir: Path) -> None:
    before = _tree_digest(host_dir)
    cli = tools.StrataCLI(loaded_root)
    name = f"hostile-create-{runtime}"
    cli("create", "--runtime", runtime, "--name", name, HOSTILE_REF, "true")
    try:
        assert _tree_digest(host_dir) == before
        out = cli("start", "-a", name, check=False)
        assert out.returncode == 0, out.stderr
    finally:
        cli("rm", "-f", name)
    assert _tree_digest(host_dir) == before


def test_user_lookup_never_reads_the_hosts_files(loaded_root: Path, runtime: str) -> None:
    # /etc/hosts links to a host file listing "root"; -u resolves names from the image's own
    # passwd only, and the link is never followed.
    out = _run(loaded_root, runtime, "-u", "nobody-here", BUSYBOX_REF, "id")
    assert out.returncode == 125
    assert "unable to find user nobody-here" in out.stderr


def test_volume_target_under_a_linked_directory_stays_inside(loaded_root: Path, runtime: str,
                                                             host_dir: Path,
                                                             tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "data").write_text("volume data\n")
    before = _tree_digest(host_dir)
    out = _run(loaded_root, runtime, "-v", f"{source}:/linked/vol", HOSTILE_REF, "sh", "-c",
               "cat /linked/vol/data")
    assert (out.returncode, out.stdout) == (0, "volume data\n"), out.stderr
    assert _tree_digest(host_dir) == before
