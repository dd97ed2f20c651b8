"""Container records: lookup as docker does it, unique names, state changes, reconciliation."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from strata.errors import AlreadyExists, InvalidArgument, NotFound
from strata.runtime import ContainerRecord, Containers, ContainerStore
from strata.runtime.store import State, valid_name
from strata.snapshots import NativeSnapshotter


def _record(cid: str, name: str, created: float) -> ContainerRecord:
    return ContainerRecord(id=cid, name=name, image="localhost/busybox", image_id="sha256:" +
                           "0" * 64, command=("sh", "-c", "true"), runtime="builtin",
                           created=created)


def test_find_by_id_name_and_unique_prefix(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path / "containers.db")
    a = _record("ab" + "1" * 62, "first", 1.0)
    b = _record("ac" + "2" * 62, "second", 2.0)
    store.add(a)
    store.add(b)
    assert [r.name for r in store.walk()] == ["second", "first"]
    assert store.find(a.id) == a
    assert store.find("second") == b
    assert store.find("/first") == a
    assert store.find("ab") == a
    with pytest.raises(InvalidArgument, match="multiple IDs"):
        store.find("a")
    with pytest.raises(NotFound, match="No such container: zz"):
        store.find("zz")
    with pytest.raises(AlreadyExists, match='name "/first" is already in use'):
        store.add(_record("ff" * 32, "first", 3.0))
    assert len(list(store.walk())) == 2


def test_state_changes_survive_reopening(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path / "containers.db")
    rec = _record("cd" * 32, "c1", time.time())
    store.add(rec)
    running = store.started(rec, 4242)
    assert running.state == State.RUNNING and running.pid == 4242 and running.started
    store.exited(running, 3)
    again = ContainerStore(tmp_path / "containers.db").find("c1")
    assert (again.state, again.exit_code, again.pid) == (State.EXITED, 3, 0)
    assert again.command == ("sh", "-c", "true")
    store.delete(rec.id)
    with pytest.raises(NotFound):
        store.update(again)


def test_names_follow_dockers_rule() -> None:
    assert valid_name("web_1.a-b") == "web_1.a-b"
    for bad in ("-x", "a", "a/b", "with space", ""):
        with pytest.raises(InvalidArgument, match="Invalid container name"):
            valid_name(bad)


def test_reconcile_marks_containers_of_dead_processes_exited(tmp_path: Path) -> None:
    store = ContainerStore(tmp_path / "containers.db")
    containers = Containers(tmp_path / "containers", store, NativeSnapshotter(tmp_path / "sn"))
    proc = subprocess.Popen(["true"])
    proc.wait()  # its PID is now free: the "runtime" of this record is gone
    rec = _record("ef" * 32, "orphan", time.time())
    store.add(rec)
    store.started(rec, proc.pid)
    (listed,) = containers.reconcile()
    assert (listed.state, listed.exit_code) == (State.EXITED, 255)
    assert store.find("orphan").state == State.EXITED
