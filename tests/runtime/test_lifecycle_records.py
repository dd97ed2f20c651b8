"""The lifecycle's data: the container table's migration, the json-file log format and its
reader, signal names, process identity."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import pytest

from strata.errors import InvalidArgument, InvalidContent, NotFound
from strata.runtime.container import parse_signal, proc_start
from strata.runtime.logs import MAX_LINE, LogWriter, pump, read_log, rfc3339nano
from strata.runtime.store import ContainerRecord, ContainerStore

_V1_TABLE = (
    "CREATE TABLE containers ("
    " id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, image TEXT NOT NULL,"
    " image_id TEXT NOT NULL, command TEXT NOT NULL, runtime TEXT NOT NULL,"
    " created REAL NOT NULL, state TEXT NOT NULL, exit_code INTEGER,"
    " started REAL, finished REAL, pid INTEGER NOT NULL DEFAULT 0,"
    " auto_remove INTEGER NOT NULL DEFAULT 0)")


def test_a_first_version_table_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "containers.db"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(_V1_TABLE)
        db.execute("INSERT INTO containers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   ("a" * 64, "old", "busybox", "sha256:" + "b" * 64, '["sh"]', "builtin",
                    1.0, "exited", 3, 1.5, 2.0, 0, 1))
    store = ContainerStore(path)
    (record,) = list(store.walk())
    assert (record.name, record.exit_code, record.auto_remove) == ("old", 3, True)
    assert (record.supervisor_pid, record.oom_killed, record.log_path, record.tty) == (
        0, False, "", False)
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        columns = {row[1] for row in db.execute("PRAGMA table_info(containers)")}
    assert {"pid_start", "supervisor_pid", "supervisor_start", "oom_killed", "log_path", "tty",
            "interactive", "stop_signal"} <= columns
    # Opening again is a no-op; new records keep the new fields.
    store = ContainerStore(path)
    store.add(ContainerRecord(id="c" * 64, name="new", image="busybox", image_id="x",
                              command=("true",), runtime="runc", created=3.0, tty=True,
                              stop_signal="SIGUSR1", log_path="/x/ctr.log"))
    new = store.find("new")
    assert (new.tty, new.stop_signal, new.log_path) == (True, "SIGUSR1", "/x/ctr.log")
    running = store.started(new, 42, pid_start=7, supervisor_pid=43, supervisor_start=8)
    assert store.get(new.id) == running
    exited = store.exited(running, 137, oom_killed=True)
    assert store.get(new.id) == exited
    assert (exited.pid, exited.supervisor_pid, exited.exit_code, exited.oom_killed) == (
        0, 0, 137, True)
    # A removed container's exit code is remembered a while (wait on --rm containers).
    assert store.last_exit(new.id) is None
    store.delete(new.id)
    assert store.last_exit(new.id) == 137
    with pytest.raises(NotFound):
        store.get(new.id)


@pytest.mark.parametrize(("text", "number"), [
    ("KILL", signal.SIGKILL), ("SIGTERM", signal.SIGTERM), ("sigusr1", signal.SIGUSR1),
    ("hup", signal.SIGHUP), ("9", 9), ("15", 15),
], ids=["name", "sig-name", "lower", "short-lower", "number-9", "number-15"])
def test_parse_signal_accepts_dockers_forms(text: str, number: int) -> None:
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["", "NOPE", "SIGNOPE", "0", "99", "-1", "SIG_DFL"],
                         ids=["empty", "unknown", "unknown-sig", "zero", "too-big", "negative",
                              "not-a-signal"])
def test_parse_signal_rejects_others(text: str) -> None:
    with pytest.raises(InvalidArgument, match="Invalid signal"):
        parse_signal(text)


def test_proc_start_identifies_a_process() -> None:
    assert proc_start(os.getpid()) > 0
    assert proc_start(os.getpid()) == proc_start(os.getpid())
    assert proc_start(2**22 + 12345) == 0  # beyond pid_max: no such process


def test_rfc3339nano_is_gos_format() -> None:
    assert rfc3339nano(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert rfc3339nano(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert rfc3339nano(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", rfc3339nano())


def _records(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_writer_writes_one_record_per_line(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = LogWriter(path)
    writer.write("stdout", b"one\ntw")
    writer.write("stderr", b"err\n")
    writer.write("stdout", b"o\nthree")  # "three" has no newline yet
    assert [(r["stream"], r["log"]) for r in _records(path)] == [
        ("stdout", "one\n"), ("stderr", "err\n"), ("stdout", "two\n")]
    writer.close()  # the partial line is written when the stream ends
    records = _records(path)
    assert (records[-1]["stream"], records[-1]["log"]) == ("stdout", "three")
    assert all(set(r) == {"log", "stream", "time"} for r in records)


def test_log_writer_cuts_long_lines_and_replaces_bad_utf8(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = LogWriter(path)
    writer.write("stdout", b"x" * (MAX_LINE + 10) + b"\n")
    writer.write("stdout", b"caf\xc3\xa9 \xff\n")
    writer.close()
    logs = [r["log"] for r in _records(path)]
    assert logs == ["x" * MAX_LINE, "x" * 10 + "\n", "café \ufffd\n"]


def test_pump_copies_a_pipe_until_it_closes(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    writer = LogWriter(path)
    read_end, write_end = os.pipe()
    thread = threading.Thread(target=pump, args=(read_end, "stderr", writer))
    thread.start()
    os.write(write_end, b"a\nb")
    os.close(write_end)
    thread.join(timeout=30)
    writer.close()
    assert [(r["stream"], r["log"]) for r in _records(path)] == [("stderr", "a\n"),
                                                                 ("stderr", "b")]


def test_read_log_tail_and_follow(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    assert list(read_log(path)) == []  # no log (a foreground container): nothing
    writer = LogWriter(path)
    for i in range(5):
        writer.write("stdout" if i % 2 else "stderr", f"{i}\n".encode())
    entries = list(read_log(path))
    assert [(e.stream, e.data) for e in entries] == [
        ("stderr", b"0\n"), ("stdout", b"1\n"), ("stderr", b"2\n"), ("stdout", b"3\n"),
        ("stderr", b"4\n")]
    assert [e.data for e in read_log(path, tail=2)] == [b"3\n", b"4\n"]
    assert list(read_log(path, tail=0)) == []
    # Following: records written while the writer runs are returned, then it ends.
    state = {"polls": 0}

    def running() -> bool:
        state["polls"] += 1
        if state["polls"] == 1:
            writer.write("stdout", b"late\n")
            return True
        return False

    followed = [e.data for e in read_log(path, tail=1, follow=True, running=running)]
    assert followed == [b"4\n", b"late\n"]
    writer.close()


def test_read_log_refuses_a_malformed_record(tmp_path: Path) -> None:
    path = tmp_path / "ctr.log"
    path.write_text('{"log": "ok\\n", "stream": "stdout", "time": "t"}\nnot json\n')
    with pytest.raises(InvalidContent, match="malformed log record"):
        list(read_log(path))
