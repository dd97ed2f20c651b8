"""The per-container work of ``run`` kept small, with docker's semantics unchanged.

An image's init layer (``/etc/hosts``, ``/etc/hostname``, ``/etc/resolv.conf`` and the
``/dev``, ``/proc``, ``/sys`` mount targets) is made once and shared by the image's
containers; each container's writable layer (the upper dir ``diff`` and ``commit`` read) is
still its own and starts empty.  ``run --rm`` removes the container before it returns (no
record, no snapshot, no directory under its name) and leaves the deletion of the files to a
background ``rm``.  Both runtimes.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.engine import Engine
from strata.errors import NotFound
from strata.runtime import RunOptions
from strata.runtime.container import image_init_key, upper_key
from strata.snapshots import Kind, OverlaySnapshotter
from strata.testing import tools
from strata.testing.baseimages import BUSYBOX_REF


@pytest.fixture(scope="module")
def loaded_root(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Iterator[Path]:
    tools.require("runc")
    root = tmp_path_factory.mktemp("fastpath") / "root"
    tools.StrataCLI(root)("load", "-i", busybox_layout)
    yield root
    tools.assert_no_mounts_under(root)


@pytest.fixture(params=("builtin", "runc"))
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _init_layers(engine: Engine) -> list[str]:
    return sorted(i.name for i in engine.snapshotter.walk() if i.name.startswith("init-"))


def _wait_for_background_removal(root: Path) -> None:
    """The background ``rm`` of removed containers has finished (bounded wait)."""
    deadline = time.monotonic() + 60
    while any(p.name.startswith("rm-") for p in (root / "tmp").iterdir()):
        assert time.monotonic() < deadline, sorted(os.listdir(root / "tmp"))
        time.sleep(0.05)


def test_containers_of_an_image_share_one_init_layer(loaded_root: Path, runtime: str) -> None:
    engine = Engine(loaded_root)
    first = engine.container_create(BUSYBOX_REF, RunOptions(command=("true",), runtime=runtime,
                                                            network="none"))
    second = engine.container_create(BUSYBOX_REF, RunOptions(command=("true",),
                                                             runtime=runtime, network="none"))
    try:
        parents = {engine.snapshotter.stat(upper_key(c.id)).parent for c in (first, second)}
        top = engine._committed_top(engine.resolve(BUSYBOX_REF).image.config())
        assert parents == {image_init_key(str(top))}
        assert _init_layers(engine) == [image_init_key(str(top))]
        assert engine.snapshotter.stat(image_init_key(str(top))).kind is Kind.COMMITTED
        # The init files are there, in the init layer, not in the container's upper dir.
        snapshotter = engine.snapshotter
        assert isinstance(snapshotter, OverlaySnapshotter)  # layer dirs hold only changes
        init_dir = snapshotter.fs_path(image_init_key(str(top)))
        assert sorted(os.listdir(init_dir / "etc")) == ["hostname", "hosts", "resolv.conf"]
        tools.StrataCLI(loaded_root)("start", "-a", first.id)
        upper = snapshotter.fs_path(upper_key(first.id))
        assert os.listdir(upper) == []  # `true` wrote nothing: nothing to diff or commit
    finally:
        engine.container_remove([first.id, second.id], force=True)
    # Removing the containers keeps the shared layer for the image's next container.
    assert _init_layers(engine) == [image_init_key(str(top))]
    for record in (first, second):
        with pytest.raises(NotFound):
            engine.snapshotter.stat(upper_key(record.id))
        assert not (loaded_root / "containers" / record.id).exists()
    _wait_for_background_removal(loaded_root)


def test_the_init_files_are_the_containers_own(loaded_root: Path, runtime: str) -> None:
    strata = tools.StrataCLI(loaded_root)
    out = strata("run", "--rm", "--runtime", runtime, "--network", "none", "--hostname", "h1",
                 BUSYBOX_REF, "sh", "-c", "cat /etc/hostname; echo x >> /etc/hosts; "
                 "tail -1 /etc/hosts")
    assert (out.returncode, out.stdout) == (0, "h1\nx\n"), out.stderr
    # The other container's write went to its own file, not to the shared layer.
    out = strata("run", "--rm", "--runtime", runtime, "--network", "none", BUSYBOX_REF,
                 "sh", "-c", "grep -c '^x$' /etc/hosts; cat /etc/hostname")
    assert out.stdout.splitlines()[0] == "0", out.stderr
    assert len(out.stdout.splitlines()[1]) == 12


def test_user_names_resolve_from_the_image(loaded_root: Path, runtime: str) -> None:
    strata = tools.StrataCLI(loaded_root)
    out = strata("run", "--rm", "--runtime", runtime, "--network", "none", "-u", "nobody",
                 BUSYBOX_REF, "id")
    assert (out.returncode, out.stdout) == (0, "uid=65534(nobody) gid=65534(nogroup)\n"), \
        out.stderr
    out = strata("run", "--rm", "--runtime", runtime, "--network", "none", "-u",
                 "daemon:nogroup", BUSYBOX_REF, "id", "-g")
    assert (out.returncode, out.stdout) == (0, "65534\n"), out.stderr
    out = strata("run", "--rm", "--runtime", runtime, "--network", "none", "-u", "nosuch",
                 BUSYBOX_REF, "id", check=False)
    assert out.returncode == 125
    assert "unable to find user nosuch: no matching entries in passwd file" in out.stderr


def test_run_rm_is_gone_when_it_returns(loaded_root: Path, runtime: str) -> None:
    strata = tools.StrataCLI(loaded_root)
    before = set(os.listdir(loaded_root / "containers"))
    snapshots = {i.name for i in Engine(loaded_root).snapshotter.walk()}
    out = strata("run", "--rm", "--runtime", runtime, "--network", "none", "--name", "gone",
                 BUSYBOX_REF, "sh", "-c", "mkdir -p /data && seq 1 500 | "
                 "while read i; do echo $i > /data/$i; done; exit 7", check=False)
    assert out.returncode == 7, out.stderr
    assert set(os.listdir(loaded_root / "containers")) == before
    assert {i.name for i in Engine(loaded_root).snapshotter.walk()} == snapshots
    assert "gone" not in strata("ps", "-a").stdout
    # The name is free at once.
    out = strata("run", "--rm", "--runtime", runtime, "--network", "none", "--name", "gone",
                 BUSYBOX_REF, "true")
    assert out.returncode == 0, out.stderr
    _wait_for_background_removal(loaded_root)
    snapshot_tmp = loaded_root / "snapshots" / Engine(loaded_root).snapshotter.driver / "tmp"
    deadline = time.monotonic() + 60
    while any(p.name.startswith("rm-") for p in snapshot_tmp.iterdir()):
        assert time.monotonic() < deadline, sorted(os.listdir(snapshot_tmp))
        time.sleep(0.05)


def test_leftovers_of_a_killed_removal_are_deleted_later(loaded_root: Path) -> None:
    stale = loaded_root / "tmp" / "rm-999999999-0123456789ab"  # no such process
    (stale / "bundle").mkdir(parents=True)
    (stale / "bundle" / "config.json").write_text("{}")
    out = tools.StrataCLI(loaded_root)("run", "--rm", "--network", "none", BUSYBOX_REF, "true")
    assert out.returncode == 0, out.stderr
    _wait_for_background_removal(loaded_root)
    assert not stale.exists()


def test_two_first_containers_at_once_make_one_init_layer(tmp_path: Path,
                                                          busybox_layout: Path) -> None:
    root = tmp_path / "root"
    strata = tools.StrataCLI(root)
    strata("load", "-i", busybox_layout)
    # Layers unpacked, no init layer yet: the two runs race to make it.
    engine = Engine(root)
    engine.unpack_snapshots(BUSYBOX_REF)
    cmd = [*strata.command, "--root", str(root), "run", "--rm", "--network", "none",
           BUSYBOX_REF, "true"]
    env = {k: v for k, v in os.environ.items() if k != "STRATA_ROOT"}
    procs = [subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env) for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    names = [i.name for i in engine.snapshotter.walk()]
    assert len([n for n in names if n.startswith("init-")]) == 1
    assert [n for n in names if "-active-" in n] == []
    _wait_for_background_removal(root)
