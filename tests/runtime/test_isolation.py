"""Isolation and privileges: what a container without ``--privileged`` cannot do (mount,
load modules, set the clock, create namespaces, use the kernel keyring, read host devices),
what seccomp refuses on top of the capabilities, and what ``--privileged``,
``--cap-add`` and ``--security-opt`` change — with the built-in runtime and runc.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.runtime.builtin import CAPABILITIES
from strata.runtime.spec import privileged_capabilities
from strata.testing import tools
from strata.testing.baseimages import BUSYBOX_REF, DEBIAN_REF

RUNTIMES = ("builtin", "runc")


@pytest.fixture(scope="module")
def loaded_root(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path,
                debian_layout: Path) -> Iterator[Path]:
    tools.require("runc")
    root = tmp_path_factory.mktemp("isolation") / "root"
    cli = tools.StrataCLI(root)
    cli("load", "-i", busybox_layout)
    cli("load", "-i", debian_layout)
    yield root
    tools.assert_no_mounts_under(root)


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Run:
    def __init__(self, root: Path, runtime: str) -> None:
        self.cli = tools.StrataCLI(root)
        self.runtime = runtime

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("run", "--rm", "--runtime", self.runtime, *args, check=False)

    def sh(self, script: str, *options: str) -> subprocess.CompletedProcess[str]:
        return self(*options, BUSYBOX_REF, "sh", "-c", script)


@pytest.fixture
def run(loaded_root: Path, runtime: str) -> Run:
    return Run(loaded_root, runtime)


def _status(text: str, field: str) -> str:
    return next(line.split()[1] for line in text.splitlines() if line.startswith(f"{field}:"))


def test_mount_fails_with_eperm_and_works_when_privileged(run: Run) -> None:
    out = run.sh("mkdir -p /mnt/t; mount -t tmpfs none /mnt/t; echo rc=$?")
    assert out.stdout.startswith("rc=") and out.stdout.strip() != "rc=0"
    assert "permission denied" in out.stderr.lower()
    out = run.sh("mkdir -p /mnt/t; mount -t tmpfs none /mnt/t && grep ' /mnt/t ' /proc/mounts",
                 "--privileged")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("none /mnt/t tmpfs")


def test_module_loading_fails(run: Run) -> None:
    out = run.sh("echo junk > /tmp/m.ko; insmod /tmp/m.ko; echo rc=$?")
    assert out.stdout.strip() != "rc=0"
    assert "Operation not permitted" in out.stderr, out.stderr


def test_clock_cannot_be_changed(run: Run) -> None:
    before = time.time()
    out = run.sh("date -s '2001-02-03 04:05:06'; date +%Y")
    assert "Operation not permitted" in out.stderr, out.stderr
    assert out.stdout.split()[-1] == time.strftime("%Y")
    assert abs(time.time() - before) < 3600  # the host's clock is untouched


def test_keyctl_is_refused_by_seccomp(run: Run) -> None:
    # keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 1) through perl's syscall().
    script = "syscall(250, 0, -3, 1) < 0 ? print $!+0, qq(\\n) : print qq(ok\\n)"
    out = run(DEBIAN_REF, "perl", "-e", script)
    assert out.stdout.strip() == "1", out.stderr  # EPERM
    out = run("--security-opt", "seccomp=unconfined", DEBIAN_REF, "perl", "-e", script)
    assert out.stdout.strip() != "1", out.stderr


def test_seccomp_refuses_unshare_that_capabilities_would_allow(run: Run) -> None:
    # A user namespace needs no capability: only the seccomp filter stops it.
    out = run.sh("unshare -U true; echo rc=$?")
    assert out.stdout.strip() == "rc=1"
    assert "Operation not permitted" in out.stderr
    out = run.sh("unshare -U true; echo rc=$?", "--security-opt", "seccomp=unconfined")
    assert out.stdout.strip() == "rc=0", out.stderr
    # Other namespaces need CAP_SYS_ADMIN as well: refused either way.
    out = run.sh("unshare -m true; echo rc=$?", "--security-opt", "seccomp=unconfined")
    assert out.stdout.strip() == "rc=1"


def test_seccomp_mode_is_filter_and_off_when_privileged(run: Run) -> None:
    status = run.sh("cat /proc/self/status").stdout
    assert _status(status, "Seccomp") == "2"
    assert _status(status, "NoNewPrivs") == "1"
    status = run.sh("cat /proc/self/status", "--privileged").stdout
    assert _status(status, "Seccomp") == "0"
    status = run.sh("cat /proc/self/status", "--security-opt", "seccomp=unconfined").stdout
    assert _status(status, "Seccomp") == "0"


def test_cap_add_sys_admin_lets_seccomp_allow_mount(run: Run) -> None:
    out = run.sh("mkdir -p /mnt/t && mount -t tmpfs none /mnt/t && echo mounted",
                 "--cap-add", "SYS_ADMIN")
    assert out.stdout.strip() == "mounted", out.stderr


def test_privileged_gets_every_capability_devices_and_unmasked_paths(run: Run) -> None:
    script = ("grep -E '^Cap(Eff|Bnd):' /proc/self/status; wc -c < /proc/timer_list;"
              " grep ' /sys ' /proc/mounts; ls /dev; echo 1 > /proc/sys/vm/drop_caches"
              " && echo wrote-proc-sys")
    out = run.sh(script, "--privileged")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    expected = 0
    for cap in privileged_capabilities():
        expected |= 1 << CAPABILITIES[cap]
    assert int(lines[0].split()[1], 16) == int(lines[1].split()[1], 16) == expected
    assert int(lines[2]) > 0  # /proc/timer_list is not masked
    assert "rw," in lines[3].split()[3] + ","  # /sys writable
    devices = set(lines[4:])
    host = {name for name in os.listdir("/dev")
            if stat.S_ISCHR(os.lstat(f"/dev/{name}").st_mode)
            or stat.S_ISBLK(os.lstat(f"/dev/{name}").st_mode)}
    assert host - {"console", "ptmx"} <= devices
    assert "wrote-proc-sys" in out.stdout


def _host_device(tmp: Path) -> tuple[str, int, int] | None:
    """A device outside docker's default set that a node made on the host can read from:
    a disk from /proc/partitions, else the kernel log (char 1:11)."""
    candidates = [("b", int(w[0]), int(w[1])) for w in (
        line.split() for line in Path("/proc/partitions").read_text().splitlines()[2:])
        if len(w) == 4]
    candidates.append(("c", 1, 11))
    for kind, major, minor in candidates:
        node = tmp / f"dev-{major}-{minor}"
        os.mknod(node, 0o600 | (stat.S_IFBLK if kind == "b" else stat.S_IFCHR),
                 os.makedev(major, minor))
        try:
            fd = os.open(node, os.O_RDONLY | os.O_NONBLOCK)
            try:
                if os.read(fd, 8192):
                    return kind, major, minor
            finally:
                os.close(fd)
        except OSError:
            continue
        finally:
            node.unlink()
    return None


def test_host_devices_cannot_be_read_without_privileges(run: Run, tmp_path: Path) -> None:
    # CAP_MKNOD (docker's default) lets the container make the node; the device rules do not
    # let it open one.
    device = _host_device(tmp_path)
    assert device is not None, "no readable device on the host to try"
    kind, major, minor = device
    read = "dd if=/tmp/dev bs=8192 count=1 2>/dev/null | wc -c"
    out = run.sh(f"mknod /tmp/dev {kind} {major} {minor} && echo made;"
                 " dd if=/tmp/dev of=/dev/null bs=8192 count=1 && echo read")
    assert out.stdout.split() == ["made"], out.stderr
    assert "Operation not permitted" in out.stderr
    out = run.sh(f"mknod /tmp/dev {kind} {major} {minor} && {read}", "--privileged")
    assert int(out.stdout.strip()) > 0, out.stderr


def test_masked_and_readonly_paths(run: Run) -> None:
    script = ("cat /proc/kcore | wc -c; cat /proc/keys | wc -c; ls -A /sys/firmware | wc -l;"
              " echo x > /proc/sys/kernel/hostname; echo rc=$?")
    out = run.sh(script)
    lines = out.stdout.split()
    assert lines[:3] == ["0", "0", "0"], out.stderr
    assert lines[3] != "rc=0"
    assert "Read-only file system" in out.stderr


def test_custom_seccomp_profile(run: Run, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 13},
                     {"names": ["chroot"], "action": "SCMP_ACT_ERRNO",
                      "includes": {"caps": ["CAP_SYS_CHROOT"]}}]}))
    out = run.sh("mkdir /tmp/x; echo rc=$?; unshare -U true && echo unshared",
                 "--security-opt", f"seccomp={profile}")
    assert out.stdout.split() == ["rc=1", "unshared"], out.stderr
    assert "Permission denied" in out.stderr
    out = run.sh("true", "--security-opt", f"seccomp={tmp_path / 'missing.json'}")
    assert out.returncode == 125
    assert "opening seccomp profile" in out.stderr
    out = run.sh("true", "--security-opt", "selinux-magic")
    assert out.returncode == 125
    assert 'Invalid --security-opt: "selinux-magic"' in out.stderr


@pytest.fixture(scope="module")
def userns_root(busybox_layout: Path) -> Iterator[Path]:
    """A store root the remapped root can reach (pytest's base directory is 0700, which
    strata refuses for --userns auto, as docker needs its data-root 0711)."""
    base = Path(tempfile.mkdtemp(prefix="strata-userns-", dir="/var/tmp"))
    base.chmod(0o711)
    root = base / "root"
    tools.StrataCLI(root)("load", "-i", busybox_layout)
    yield root
    tools.assert_no_mounts_under(base)
    shutil.rmtree(base)


def test_userns_auto_maps_root_to_an_unprivileged_host_range(runtime: str, userns_root: Path
                                                             ) -> None:
    run = Run(userns_root, runtime)
    shared = userns_root.parent / f"shared-{runtime}"
    shared.mkdir(mode=0o755)
    secret = shared / "secret"
    secret.write_text("host root only\n")
    secret.chmod(0o600)
    name = f"userns-{run.runtime}"
    script = ("cat /proc/self/uid_map /proc/self/gid_map; id -u; ls -ln /bin/busybox;"
              " echo hi > /newfile && ls -ln /newfile; cat /secret/secret; rm /bin/vi;"
              " echo '10.9.9.9 extra' >> /etc/hosts && grep -c extra /etc/hosts")
    out = run.cli("run", "--runtime", run.runtime, "--name", name, "--userns", "auto",
                  "-v", f"{shared}:/secret", BUSYBOX_REF, "sh", "-c", script, check=False)
    lines = out.stdout.splitlines()
    assert len(lines) == 6, (out.returncode, out.stdout, out.stderr)
    assert lines[5] == "1"  # its /etc/hosts is its root's to edit, as without userns
    assert lines[0].split() == ["0", "100000", "65536"], out.stderr
    assert lines[1].split() == ["0", "100000", "65536"]
    assert lines[2] == "0"  # root inside...
    # ...owning the image's files (idmapped layers) and writing files owned by uid 0.
    assert lines[3].split()[2:4] == ["0", "0"]
    assert lines[4].split()[2:4] == ["0", "0"]
    # ...but host uid 100000 outside: a host file only the host's root may read stays shut.
    assert "host root only" not in out.stdout
    assert "Permission denied" in out.stderr
    # On disk the new file belongs to uid 0, as without a user namespace (diff/commit agree).
    found = [p for p in userns_root.rglob("newfile") if p.is_file()]
    assert found and all(p.stat().st_uid == 0 for p in found)
    # The writable layer reads as without a user namespace: a new file, a whiteout.
    changes = run.cli("diff", name).stdout.splitlines()
    assert {"A /newfile", "C /bin", "D /bin/vi"} <= set(changes)
    run.cli("rm", name)


def test_userns_refuses_an_unreachable_store_root(run: Run) -> None:
    out = run("--userns", "auto", BUSYBOX_REF, "true")  # the module's root is under 0700
    assert out.returncode == 125
    assert "is not searchable by the container's root" in out.stderr


def test_userns_rejects_unknown_modes(run: Run) -> None:
    out = run("--userns", "private", BUSYBOX_REF, "true")
    assert out.returncode == 125
    assert "invalid --userns mode 'private'" in out.stderr


def test_cap_drop_and_cap_add_reach_the_process(run: Run) -> None:
    out = run.sh("grep CapEff /proc/self/status; touch /tmp/f; chown 1 /tmp/f && echo chowned",
                 "--cap-drop", "ALL", "--cap-add", "CHOWN")
    assert out.stdout.split() == ["CapEff:", "0000000000000001", "chowned"], out.stderr
    out = run.sh("touch /tmp/f; chown 1 /tmp/f && echo chowned", "--cap-drop", "chown")
    assert "chowned" not in out.stdout
    assert "Operation not permitted" in out.stderr
    out = run.sh("true", "--cap-add", "FLY")
    assert out.returncode == 125
    assert 'unknown capability: "FLY"' in out.stderr
