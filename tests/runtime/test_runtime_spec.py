"""The runtime-spec document: field names and values as runtime-spec v1.0.2 and docker define."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.errors import InvalidArgument, NotFound
from strata.oci import ContainerConfig
from strata.runtime.spec import (
    ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    MASKED_PATHS,
    READONLY_PATHS,
    RunOptions,
    User,
    capabilities,
    command_of,
    default_mounts,
    environment,
    generate,
    resolve_user,
)

IMAGE = ContainerConfig(entrypoint=("/entry",), cmd=("serve", "--port", "80"),
                        env=("PATH=/opt/bin:/bin", "LANG=C.UTF-8"), working_dir="/srv",
                        user="app")
ETC = {"/etc/hosts": Path("/c/hosts"), "/etc/hostname": Path("/c/hostname"),
       "/etc/resolv.conf": Path("/c/resolv.conf")}


def _doc(config: ContainerConfig | None = IMAGE, **options: object) -> dict[str, object]:
    return generate(config, RunOptions(**options),  # type: ignore[arg-type]
                    user=User(1000, 1000, (27,)), hostname="abc123", etc_files=ETC)


def test_process_fields_follow_the_runtime_spec() -> None:
    doc = _doc()
    assert doc["ociVersion"] == "1.0.2"
    assert doc["root"] == {"path": "rootfs", "readonly": False}
    assert doc["hostname"] == "abc123"
    process = doc["process"]
    assert isinstance(process, dict)
    assert process["args"] == ["/entry", "serve", "--port", "80"]
    assert process["cwd"] == "/srv"
    assert process["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [27]}
    assert process["env"] == ["PATH=/opt/bin:/bin", "HOSTNAME=abc123", "LANG=C.UTF-8"]
    assert process["noNewPrivileges"] is True
    assert process["terminal"] is False
    caps = process["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}  # no inheritable (docker)
    assert caps["bounding"] == list(DEFAULT_CAPABILITIES)
    assert len(DEFAULT_CAPABILITIES) == 14 and "CAP_SYS_ADMIN" not in DEFAULT_CAPABILITIES
    nofile = process["rlimits"]  # docker's default open-files limit (capped at strata's)
    assert [r["type"] for r in nofile] == ["RLIMIT_NOFILE"]
    assert nofile[0]["soft"] == nofile[0]["hard"] <= 1 << 20


def test_linux_namespaces_masked_and_readonly_paths() -> None:
    linux = _doc()["linux"]
    assert isinstance(linux, dict)
    assert sorted(ns["type"] for ns in linux["namespaces"]) == ["ipc", "mount", "network",
                                                                 "pid", "uts"]
    assert "/proc/kcore" in linux["maskedPaths"] and linux["maskedPaths"] == list(MASKED_PATHS)
    assert "/proc/sys" in linux["readonlyPaths"]
    assert linux["readonlyPaths"] == list(READONLY_PATHS)


def test_mounts_are_dockers_defaults_and_the_etc_binds() -> None:
    mounts = _doc()["mounts"]
    assert isinstance(mounts, list)
    by_dest = {m["destination"]: m for m in mounts}
    assert [m["destination"] for m in mounts[:6]] == ["/proc", "/dev", "/dev/pts", "/sys",
                                                       "/dev/mqueue", "/dev/shm"]
    assert by_dest["/proc"]["type"] == "proc"
    assert by_dest["/dev"]["type"] == "tmpfs" and "mode=755" in by_dest["/dev"]["options"]
    assert by_dest["/dev/pts"]["type"] == "devpts"
    assert "newinstance" in by_dest["/dev/pts"]["options"]
    assert by_dest["/sys"]["type"] == "sysfs" and "ro" in by_dest["/sys"]["options"]
    assert by_dest["/dev/shm"]["options"][-1] == "size=65536k"
    for dest, source in ETC.items():
        assert by_dest[dest]["type"] == "bind"
        assert by_dest[dest]["source"] == str(source)
        assert "rbind" in by_dest[dest]["options"]
    for m in mounts:
        assert set(m) == {"destination", "type", "source", "options"}


def test_command_rules_match_docker() -> None:
    assert command_of(IMAGE, RunOptions()) == ["/entry", "serve", "--port", "80"]
    assert command_of(IMAGE, RunOptions(command=("x",))) == ["/entry", "x"]
    # --entrypoint replaces the entrypoint and drops the image's Cmd.
    assert command_of(IMAGE, RunOptions(entrypoint="/bin/sh")) == ["/bin/sh"]
    assert command_of(IMAGE, RunOptions(entrypoint="", command=("ls",))) == ["ls"]
    assert command_of(None, RunOptions(command=("true",))) == ["true"]
    with pytest.raises(InvalidArgument, match="No command specified"):
        command_of(None, RunOptions())
    with pytest.raises(InvalidArgument, match="No command specified"):
        command_of(ContainerConfig(cmd=("sh",)), RunOptions(entrypoint=""))


def test_environment_precedence() -> None:
    env = environment(ContainerConfig(env=("A=1", "B=2")),
                      RunOptions(env=("B=3", "C", "D"), host_env={"C": "host"}), "h")
    assert env == [f"PATH={DEFAULT_PATH}", "HOSTNAME=h", "A=1", "B=3", "C=host"]
    with pytest.raises(InvalidArgument):
        environment(None, RunOptions(env=("=x",)), "h")


def test_options_override_workdir_and_relative_workdir_is_refused() -> None:
    process = _doc(workdir="/tmp")["process"]
    assert isinstance(process, dict) and process["cwd"] == "/tmp"
    process = _doc(ContainerConfig(cmd=("sh",)))["process"]
    assert isinstance(process, dict) and process["cwd"] == "/"
    with pytest.raises(InvalidArgument, match="absolute path"):
        _doc(workdir="relative")


def _rootfs(tmp_path: Path) -> Path:
    etc = tmp_path / "rootfs" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                "app:x:1000:1001:app:/home/app:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\napp:x:1001:\nwheel:x:10:app,root\n")
    return tmp_path / "rootfs"


def test_resolve_user_names_numbers_and_groups(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    assert resolve_user(rootfs, None) == User(0, 0)
    assert resolve_user(rootfs, "app") == User(1000, 1001, (10,))
    assert resolve_user(rootfs, "1000") == User(1000, 1001, (10,))
    assert resolve_user(rootfs, "4242") == User(4242, 0)
    assert resolve_user(rootfs, "app:wheel") == User(1000, 10)
    assert resolve_user(rootfs, "5:6") == User(5, 6)
    with pytest.raises(NotFound, match="unable to find user nobody"):
        resolve_user(rootfs, "nobody")
    with pytest.raises(NotFound, match="unable to find group staff"):
        resolve_user(rootfs, "app:staff")


def test_resolve_user_never_reads_through_a_symlinked_passwd(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    host = tmp_path / "host-passwd"
    host.write_text("secret:x:77:77::/:/bin/sh\n")
    (rootfs / "etc" / "passwd").symlink_to(host)
    with pytest.raises(NotFound):
        resolve_user(rootfs, "secret")


def test_read_only_and_tmpfs_options() -> None:
    doc = _doc(read_only=True, tmpfs=("/run", "/cache:size=1m,mode=1777"))
    assert doc["root"] == {"path": "rootfs", "readonly": True}
    mounts = doc["mounts"]
    assert isinstance(mounts, list)
    assert [m for m in mounts if m["destination"] in ("/run", "/cache")] == [
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["noexec", "nosuid", "nodev"]},
        {"destination": "/cache", "type": "tmpfs", "source": "tmpfs",
         "options": ["noexec", "nosuid", "nodev", "size=1m", "mode=1777"]},
    ]
    for bad in ("relative", "/", ""):
        with pytest.raises(InvalidArgument, match="--tmpfs"):
            _doc(tmpfs=(bad,))


def test_cap_add_and_drop_follow_docker() -> None:
    assert capabilities() == list(DEFAULT_CAPABILITIES)
    dropped = capabilities(drop=("chown", "CAP_KILL"))
    assert "CAP_CHOWN" not in dropped and "CAP_KILL" not in dropped
    assert len(dropped) == len(DEFAULT_CAPABILITIES) - 2
    assert capabilities(add=("sys_admin",))[-1] == "CAP_SYS_ADMIN"
    assert capabilities(add=("NET_ADMIN",), drop=("ALL",)) == ["CAP_NET_ADMIN"]
    assert capabilities(add=("ALL",), drop=("MKNOD",)) == [
        c for c in ALL_CAPABILITIES if c != "CAP_MKNOD"]
    with pytest.raises(InvalidArgument, match="unknown capability"):
        capabilities(add=("FLY",))
    caps = _doc(cap_add=("SYS_TIME",))["process"]
    assert isinstance(caps, dict)
    assert "CAP_SYS_TIME" in caps["capabilities"]["bounding"]


def test_user_mounts_are_ordered_parents_first_and_replace_the_etc_files() -> None:
    extra = [{"destination": "/etc/hosts", "type": "bind", "source": "/h/hosts",
              "options": ["rbind", "rprivate"]},
             {"destination": "/etc", "type": "bind", "source": "/vol/etc",
              "options": ["rbind", "rprivate"]},
             {"destination": "/data/sub", "type": "bind", "source": "/s",
              "options": ["rbind", "rprivate"]},
             {"destination": "/data", "type": "bind", "source": "/d",
              "options": ["rbind", "rprivate"]}]
    doc = generate(ContainerConfig(cmd=("sh",)), RunOptions(), user=User(), hostname="h",
                   etc_files={"/etc/hosts": Path("/c/hosts"),
                              "/etc/hostname": Path("/c/hostname")},
                   extra_mounts=extra)
    mounts = doc["mounts"]
    assert isinstance(mounts, list)
    own = [(m["destination"], m["source"]) for m in mounts[len(default_mounts()):]]
    assert own == [("/etc", "/vol/etc"), ("/data", "/d"), ("/etc/hostname", "/c/hostname"),
                   ("/etc/hosts", "/h/hosts"), ("/data/sub", "/s")]
