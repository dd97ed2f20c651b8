"""``inspect`` of containers (docker's shape, ``-f``, ``--type``), ``top``, ``container
prune`` and ``rmi`` of an image containers use, with both runtimes."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.engine import Engine
from strata.runtime.changes import writable_layer
from strata.testing import tools
from strata.testing.baseimages import BUSYBOX_REF

RUNTIMES = ("builtin", "runc")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Iterator[Path]:
    tools.require("runc")
    path = tmp_path_factory.mktemp("inspect") / "root"
    tools.StrataCLI(path)("load", "-i", busybox_layout)
    yield path
    tools.assert_no_mounts_under(path)


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _image_id(cli: tools.StrataCLI, ref: str) -> str:
    return str(json.loads(cli("image", "inspect", ref).stdout)[0]["Id"])


def _parse_time(text: str) -> float:
    head, _, frac = text.rstrip("Z").partition(".")
    base = dt.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    return base.timestamp() + (float(f"0.{frac}") if frac else 0.0)


def test_inspect_exited_container(root: Path, runtime: str) -> None:
    cli = tools.StrataCLI(root)
    name = f"insp-{runtime}"
    before = time.time()
    cli("run", "--runtime", runtime, "--network", "none", "--name", name, "-e", "FOO=bar",
        "-w", "/tmp", "--read-only", "--cap-drop", "chown", "--hostname", "box",
        BUSYBOX_REF, "sh", "-c", "exit 3", check=False)
    after = time.time()
    (info,) = json.loads(cli("inspect", name).stdout)
    cid = info["Id"]
    assert len(cid) == 64 and info["Name"] == f"/{name}"
    assert (info["Path"], info["Args"]) == ("sh", ["-c", "exit 3"])
    state = info["State"]
    assert (state["Status"], state["Running"], state["ExitCode"], state["Pid"]) == (
        "exited", False, 3, 0)
    assert state["OOMKilled"] is False
    assert before - 1 <= _parse_time(state["StartedAt"]) <= _parse_time(state["FinishedAt"]) \
        <= after + 1
    assert before - 1 <= _parse_time(info["Created"]) <= after + 1
    assert info["Image"] == _image_id(cli, BUSYBOX_REF)
    config = info["Config"]
    assert config["Cmd"] == ["sh", "-c", "exit 3"] and config["Image"] == BUSYBOX_REF
    assert "FOO=bar" in config["Env"] and config["WorkingDir"] == "/tmp"
    assert config["Hostname"] == "box"
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["chown"]
    assert host["NetworkMode"] == "none" and host["Runtime"] == runtime
    assert info["Driver"] == Engine(root).snapshotter.driver
    layer = writable_layer(Engine(root).snapshotter, cid)
    assert info["GraphDriver"]["Data"]["UpperDir"] == str(layer.upper)
    assert info["GraphDriver"]["Data"]["LowerDir"].split(":") == [str(p) for p in layer.lowers]
    for key in ("Mounts", "NetworkSettings", "HostsPath", "LogPath", "RestartCount"):
        assert key in info
    # -f: a Go-template subset; --type picks the kind.
    text = cli("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}} {{json .Config.Cmd}}",
               name).stdout
    assert text == 'exited 3 ["sh", "-c", "exit 3"]\n'
    assert cli("container", "inspect", "-f", "{{.Name}}", cid[:12]).stdout == f"/{name}\n"
    out = cli("inspect", "--type", "image", name, check=False)
    assert out.returncode == 1 and "No such image" in out.stderr
    # A name that is an image (and no container) gives the image.
    assert cli("inspect", "-f", "{{.Id}}", BUSYBOX_REF).stdout.strip() == info["Image"]
    out = cli("inspect", "no-such-thing", check=False)
    assert out.returncode == 1 and "No such object: no-such-thing" in out.stderr
    cli("rm", name)


@pytest.fixture
def running(root: Path, runtime: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A running container: ``sh`` as PID 1 with a ``sleep`` child."""
    name = f"top-{runtime}"
    cli = tools.StrataCLI(root)
    proc = subprocess.Popen(
        [*cli.command, "--root", str(root), "run", "--runtime", runtime, "--network", "none",
         "--name", name, BUSYBOX_REF, "sh", "-c", "echo ready; sleep 301; true"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        yield name, proc
    finally:
        cli("rm", "-f", name, check=False)
        proc.wait(timeout=60)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_top_shows_the_entrypoint_and_its_children(root: Path,
                                                    running: tuple[str, subprocess.Popen[str]]
                                                    ) -> None:
    name, _ = running
    cli = tools.StrataCLI(root)
    for _ in range(100):
        rows = tools.parse_table(cli("top", name).stdout)
        if len(rows) == 2:
            break
        time.sleep(0.1)
    assert [r["CMD"] for r in rows] == ["sh -c echo ready; sleep 301; true", "sleep 301"]
    (info,) = json.loads(cli("inspect", name).stdout)
    assert info["State"]["Running"] is True
    assert rows[0]["PID"] == str(info["State"]["Pid"])
    assert rows[1]["PPID"] == rows[0]["PID"]
    assert list(rows[0]) == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert rows[0]["UID"] == "root"
    # ps options are passed through.
    rows = tools.parse_table(cli("top", name, "-o", "pid,comm").stdout)
    assert [(r["PID"], r["COMMAND"]) for r in rows] == [(str(info["State"]["Pid"]), "sh"),
                                                        (rows[1]["PID"], "sleep")]
    # commit pauses the container and leaves it running.
    image = cli("commit", name, "localhost/top-commit").stdout.strip()
    assert image.startswith("sha256:")
    status = Path(f"/proc/{info['State']['Pid']}/status").read_text()
    assert status.split("State:")[1].split()[0] == "S"
    cli("rmi", "localhost/top-commit")
    # A stopped container has no processes: docker's message.
    cli("rm", "-f", name)
    out = cli("top", name, check=False)
    assert out.returncode == 1


def test_top_of_a_stopped_container_fails(root: Path, runtime: str) -> None:
    cli = tools.StrataCLI(root)
    name = f"stopped-{runtime}"
    cli("run", "--runtime", runtime, "--network", "none", "--name", name, BUSYBOX_REF, "true")
    out = cli("top", name, check=False)
    assert out.returncode == 1 and "is not running" in out.stderr
    cli("rm", name)


def test_container_prune_removes_stopped_containers(root: Path, runtime: str) -> None:
    cli = tools.StrataCLI(root)
    names = [f"prune-{runtime}-{i}" for i in range(2)]
    for name in names:
        cli("run", "--runtime", runtime, "--network", "none", "--name", name, BUSYBOX_REF,
            "sh", "-c", "head -c 1000 /dev/zero > /data")
    ids = {json.loads(cli("inspect", n).stdout)[0]["Id"] for n in names}
    others = set(cli("ps", "-aq", "--no-trunc").stdout.split()) - ids
    out = cli("container", "prune", "-f").stdout.splitlines()
    assert out[0] == "Deleted Containers:"
    assert ids <= set(out[1:-2])
    assert out[-2] == "" and out[-1].startswith("Total reclaimed space: ")
    assert set(cli("ps", "-aq", "--no-trunc").stdout.split()) == others - set(out[1:-2])
    for cid in ids:
        assert not (root / "containers" / cid).exists()
    assert cli("container", "prune", "-f").stdout == "Total reclaimed space: 0B\n"


def test_rmi_of_an_image_in_use(root: Path, runtime: str) -> None:
    cli = tools.StrataCLI(root)
    ref = f"localhost/inuse-{runtime}:1"
    # An image of its own (no other container uses it): busybox plus one file.
    base = f"inuse-base-{runtime}"
    cli("run", "--runtime", runtime, "--network", "none", "--name", base, BUSYBOX_REF, "sh",
        "-c", f"echo {runtime} > /which")
    cli("commit", base, ref)
    cli("rm", base)
    cli("tag", ref, f"{ref}-other")
    name = f"user-{runtime}"
    cli("create", "--runtime", runtime, "--network", "none", "--name", name, ref, "true")
    cid = json.loads(cli("inspect", name).stdout)[0]["Id"]
    image_id = _image_id(cli, ref)
    # Another name remains: a plain untag.
    assert cli("rmi", f"{ref}-other").stdout == f"Untagged: {ref}-other\n"
    out = cli("rmi", ref, check=False)
    assert out.returncode == 1
    assert (f'conflict: unable to remove repository reference "{ref}" (must force) - container'
            f" {cid[:12]} is using its referenced image {image_id[7:19]}") in out.stderr
    # By ID, a stopped container's image needs -f.
    out = cli("rmi", image_id[7:19], check=False)
    assert out.returncode == 1 and (f"image is being used by stopped container {cid[:12]}"
                                    in out.stderr)
    # -f untags only: the image stays for its container, which still runs.
    assert cli("rmi", "-f", ref).stdout == f"Untagged: {ref}\n"
    assert image_id in cli("images", "-q", "--no-trunc").stdout
    cli("image", "prune", "-f")
    assert image_id in cli("images", "-q", "--no-trunc").stdout
    out = cli("start", "-a", name, check=False)
    assert out.returncode == 0, out.stderr
    cli("rm", name)
    cli("image", "prune", "-f")  # unused now: pruned
    assert image_id not in cli("images", "-q", "--no-trunc").stdout


def test_rm_v_removes_anonymous_volumes_only(root: Path, runtime: str) -> None:
    cli = tools.StrataCLI(root)
    name = f"vols-{runtime}"
    named = f"kept-{runtime}"
    cli("run", "--runtime", runtime, "--network", "none", "--name", name, "-v", "/data", "-v",
        f"{named}:/n", BUSYBOX_REF, "sh", "-c", "echo x > /data/f; echo y > /n/g")
    (info,) = json.loads(cli("inspect", name).stdout)
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/n"]["Type"] == "volume" and mounts["/n"]["Name"] == named
    anonymous = mounts["/data"]["Name"]
    assert len(anonymous) == 64
    volumes = cli("volume", "ls", "-q").stdout.split()
    assert anonymous in volumes and named in volumes
    assert cli("rm", "-v", name).stdout == f"{name}\n"
    volumes = cli("volume", "ls", "-q").stdout.split()
    assert anonymous not in volumes and named in volumes
    cli("volume", "rm", named)
