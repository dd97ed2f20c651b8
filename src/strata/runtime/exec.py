"""``exec``: another process in a running container, as docker exec.

Built-in runtime: a child of the caller opens the namespace files of the container's PID 1
(``/proc/PID/ns/*``), joins its cgroups, then the namespaces (the user namespace first if
the container has one, the mount namespace last, which also moves it to the container's
root), and forks: the grandchild is in the container's PID namespace.  It applies what the
container's process has (rlimits, capability bounding set, ``no_new_privs``, uid/gid, the
capability sets, the seccomp filter), changes to the working directory and ``execve``\\ s
the command with the container's environment plus ``-e``.  Failures before ``execve``
travel back on a close-on-exec pipe, as in :mod:`strata.runtime.builtin` (127: not found,
126: cannot execute).  With ``-t`` the grandchild makes a pty from the container's
``/dev/pts`` and sends its master back (:mod:`strata.runtime.pty`).

An OCI runtime: ``RUNTIME exec --process process.json`` (``--tty`` with ``-t``: the runtime
relays its pty to the caller's terminal itself).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strata.errors import CannotExecute, CommandNotFound, InvalidArgument, StrataError
from strata.runtime import builtin, oci
from strata.runtime import pty as ptys

__all__ = ["ExecOptions", "exec_builtin", "exec_oci", "process_of"]

#: runtime-spec namespace type → /proc/PID/ns name, in the order they are joined.
_NAMESPACES: tuple[tuple[str, str, int], ...] = (
    ("user", "user", 0x10000000),
    ("cgroup", "cgroup", 0x02000000),
    ("ipc", "ipc", builtin.CLONE_NEWIPC),
    ("uts", "uts", builtin.CLONE_NEWUTS),
    ("network", "net", builtin.CLONE_NEWNET),
    ("pid", "pid", builtin.CLONE_NEWPID),
    ("mount", "mnt", builtin.CLONE_NEWNS),
)


@dataclass(frozen=True, slots=True)
class ExecOptions:
    """What ``exec`` was asked for.

    Attributes:
        args: the command and its arguments.
        env: ``-e`` values (``KEY=VALUE``, or ``KEY`` taken from ``host_env``).
        workdir: ``-w`` (None: the container's working directory).
        user: ``-u`` (None: the container's user).
        tty: ``-t``.
        interactive: ``-i``.
        host_env: the caller's environment, for ``-e NAME``.
    """

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    interactive: bool = False
    host_env: Mapping[str, str] | None = None


def process_of(spec: Mapping[str, Any], options: ExecOptions, *, pid: int) -> dict[str, Any]:
    """The runtime-spec ``process`` of the exec'd command: the container's (capabilities,
    rlimits, ``noNewPrivileges``, environment, working directory, user) with the options
    applied.  ``pid`` is the container's PID 1 (its ``/etc/passwd`` resolves ``-u``).

    Raises:
        InvalidArgument: no command, a relative working directory or a bad ``-e``.
        NotFound: the ``-u`` user is not in the container.
    """
    from strata.runtime.spec import resolve_user

    if not options.args:
        raise InvalidArgument("No command specified")
    base: Mapping[str, Any] = spec["process"]
    env: dict[str, str] = {}
    for item in base.get("env") or ():
        key, _, value = str(item).partition("=")
        env[key] = value
    host = options.host_env or {}
    for item in options.env:
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid environment variable: {item!r}")
        if sep:
            env[key] = value
        elif key in host:
            env[key] = host[key]
    if options.tty:
        env.setdefault("TERM", "xterm")
    cwd = options.workdir if options.workdir else str(base.get("cwd") or "/")
    if not cwd.startswith("/"):
        raise InvalidArgument(f"the working directory '{cwd}' is invalid, it needs to be an "
                              "absolute path")
    process = dict(base)
    process.update(args=list(options.args), env=[f"{k}={v}" for k, v in env.items()], cwd=cwd,
                   terminal=options.tty)
    if options.user:
        user = resolve_user(Path(f"/proc/{pid}/root"), options.user)
        process["user"] = {"uid": user.uid, "gid": user.gid, **(
            {"additionalGids": list(user.additional_gids)} if user.additional_gids else {})}
        if user.uid != 0:  # docker: a non-root user keeps no effective capability
            caps = dict(process.get("capabilities") or {})
            caps["effective"] = []
            caps["permitted"] = []
            process["capabilities"] = caps
    return process


class _ExecError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _enter(spec: Mapping[str, Any], pid: int) -> None:
    """Join the cgroups and the namespaces of the container whose PID 1 is ``pid``."""
    linux: Mapping[str, Any] = spec.get("linux") or {}
    wanted = {str(ns.get("type")) for ns in linux.get("namespaces") or ()}
    fds: list[tuple[int, int, str]] = []
    for kind, name, flag in _NAMESPACES:
        if kind not in wanted:
            continue
        path = f"/proc/{pid}/ns/{name}"
        try:
            if os.readlink(path) == os.readlink(f"/proc/self/ns/{name}"):
                continue  # already there (e.g. --network host)
            fds.append((os.open(path, os.O_RDONLY | os.O_CLOEXEC), flag, path))
        except OSError as exc:
            raise _ExecError("error", f"open namespace {path}: {exc.strerror}") from None
    if linux.get("cgroupsPath"):
        from strata.runtime import cgroups

        try:
            cgroups.join(cgroups.detect().directories(str(linux["cgroupsPath"])))
        except (StrataError, OSError) as exc:
            raise _ExecError("error", f"join the container's cgroup: {exc}") from None
    # R2: the user namespace last: as the host's root this process may join every other one
    # (a bridge network namespace belongs to the host's user namespace, which a process
    # already inside the container's could no longer enter).
    fds.sort(key=lambda entry: entry[1] == 0x10000000)
    for fd, flag, path in fds:
        if builtin._libc.setns(fd, flag) != 0:
            import ctypes

            raise _ExecError("error", f"join namespace {path}: "
                                      f"{os.strerror(ctypes.get_errno())}")
        os.close(fd)


def _become(spec: Mapping[str, Any], process: Mapping[str, Any], console: int | None) -> None:
    """In the container (all namespaces joined): the process's identity, then exec."""
    linux: Mapping[str, Any] = spec.get("linux") or {}
    cwd = str(process.get("cwd") or "/")
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise _ExecError("error", f"chdir to cwd (\"{cwd}\") set in config.json failed: "
                                  f"{exc.strerror}") from None
    user: Mapping[str, Any] = process.get("user") or {}
    uid, gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    if process.get("terminal") and console is not None:
        ptys.setup_console(console, uid, bind_console=False)
    for rl in process.get("rlimits") or ():
        kind = getattr(resource, str(rl["type"]), None)
        if kind is not None:
            soft, hard = (resource.RLIM_INFINITY if int(rl[k]) >= 1 << 63 else int(rl[k])
                          for k in ("soft", "hard"))
            resource.setrlimit(kind, (soft, hard))
    caps: Mapping[str, Sequence[str]] = process.get("capabilities") or {}
    libc = builtin._libc
    bounding = builtin._mask_of(caps.get("bounding") or ())
    for cap in range(builtin._last_cap() + 1):
        if not bounding >> cap & 1:
            libc.prctl(builtin.PR_CAPBSET_DROP, cap, 0, 0, 0)
    if process.get("noNewPrivileges"):
        libc.prctl(builtin.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(builtin.PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([int(g) for g in user.get("additionalGids") or ()])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    builtin._capset(builtin._mask_of(caps.get("effective") or ()),
                    builtin._mask_of(caps.get("permitted") or ()),
                    builtin._mask_of(caps.get("inheritable") or ()))
    args = [str(a) for a in process["args"]]
    env = [str(e) for e in process.get("env") or ()]
    try:
        path = builtin._lookpath(args[0], env)
    except builtin._SetupError as exc:
        raise _ExecError(exc.kind, exc.message) from None
    for sig in range(1, signal.NSIG):
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    if linux.get("seccomp"):
        from strata.runtime import seccomp

        seccomp.load(linux["seccomp"])
    try:
        os.execve(path, args, dict(e.partition("=")[::2] for e in env))
    except PermissionError:
        raise _ExecError("noexec", f'exec: "{args[0]}": permission denied') from None
    except FileNotFoundError:
        raise _ExecError("notfound", f'exec: "{args[0]}": no such file or directory') from None
    except OSError as exc:
        raise _ExecError("noexec", f'exec: "{args[0]}": {exc.strerror}') from None


def _report(fd: int, kind: str, message: str) -> None:
    try:
        os.write(fd, json.dumps({"kind": kind, "message": message}).encode())
    except OSError:
        pass


def _raise(report: Mapping[str, Any]) -> None:
    message = f"OCI runtime exec failed: exec failed: unable to start container process: " \
              f"{report['message']}"
    if report["kind"] == "notfound":
        raise CommandNotFound(message)
    if report["kind"] == "noexec":
        raise CannotExecute(message)
    raise StrataError(message)


def exec_builtin(spec: Mapping[str, Any], process: Mapping[str, Any], pid: int, *,
                 on_console: Callable[[int], None] | None = None) -> int:
    """Run ``process`` in the container whose PID 1 is host ``pid``, with the caller's
    stdio (``process.terminal``: a pty whose master goes to ``on_console``); its exit code.

    Raises:
        CommandNotFound: the command does not exist (127).
        CannotExecute: it cannot be executed (126).
        StrataError: the container's namespaces could not be joined.
    """
    if (spec.get("linux") or {}).get("seccomp"):
        from strata.runtime import seccomp

        seccomp.preload()
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    console_ours: socket.socket | None = None
    console_theirs: int | None = None
    if process.get("terminal"):
        console_ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        console_theirs = theirs.detach()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:  # pragma: no cover (forked)
        code = 126
        try:
            os.close(read_fd)
            _enter(spec, pid)
            grandchild = os.fork()
            if grandchild == 0:
                try:
                    _become(spec, process, console_theirs)
                except _ExecError as exc:
                    _report(write_fd, exc.kind, exc.message)
                except BaseException:
                    _report(write_fd, "error", traceback.format_exc(limit=3))
                os._exit(126)
            os.close(write_fd)
            if console_theirs is not None:
                os.close(console_theirs)
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                signal.signal(s, lambda n, _f: os.kill(grandchild, n))
            while True:
                try:
                    _, status = os.waitpid(grandchild, 0)
                    break
                except InterruptedError:
                    continue
            code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else \
                os.WEXITSTATUS(status)
        except _ExecError as exc:
            _report(write_fd, exc.kind, exc.message)
        except BaseException:
            _report(write_fd, "error", traceback.format_exc(limit=3))
        os._exit(code)
    os.close(write_fd)
    relay: threading.Thread | None = None
    if console_ours is not None and console_theirs is not None:
        os.close(console_theirs)
        relay = threading.Thread(target=_console, args=(console_ours, on_console), daemon=True)
        relay.start()
    reported = builtin.read_to_end(read_fd)
    try:
        waited = builtin.wait_forwarding(child)
    finally:
        if relay is not None:
            relay.join(timeout=5)
    if reported:
        _raise(json.loads(reported))
    return 128 + os.WTERMSIG(waited) if os.WIFSIGNALED(waited) else os.WEXITSTATUS(waited)


def _console(sock: socket.socket, on_console: Callable[[int], None] | None) -> None:
    with sock:
        try:
            master = ptys.recv_fd(sock)
        except OSError:
            return
    if on_console is None:
        os.close(master)
    else:
        on_console(master)


def exec_oci(runtime: str, state_root: Path, container_id: str, process: Mapping[str, Any],
             work_dir: Path, *, on_console: Callable[[int], None] | None = None) -> int:
    """``RUNTIME exec --process FILE`` with the caller's stdio; the command's exit code.

    Raises:
        CommandNotFound, CannotExecute: as :func:`exec_builtin`.
        StrataError: the runtime failed otherwise.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    token = os.urandom(6).hex()
    process_file = work_dir / f"exec-{token}.json"
    log = work_dir / f"exec-{token}.log"
    process_file.write_text(json.dumps(process))
    # A runtime that does not detach allocates the pty itself and relays it to its own stdio
    # (raw mode, window size): no console socket then (runc refuses one).
    console: ptys.ConsoleSocket | None = None
    extra: list[str] = ["--tty"] if process.get("terminal") else []
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        proc = subprocess.Popen(
            [runtime, "--root", str(state_root), "--log", str(log), "--log-format", "json",
             "exec", "--process", str(process_file), *extra, container_id])
        relay: threading.Thread | None = None
        if console is not None:
            master = -1
            while proc.poll() is None:
                try:
                    master = console.receive(timeout=0.2)
                    break
                except TimeoutError:
                    continue
                except OSError:
                    break
            if master >= 0:
                if on_console is None:
                    os.close(master)
                else:
                    relay = threading.Thread(target=on_console, args=(master,), daemon=True)
                    relay.start()
        old = {s: signal.signal(s, lambda n, _f: proc.send_signal(n))
               for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            code = proc.wait()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        if relay is not None:
            relay.join(timeout=5)
        message = oci.log_error(log)
        if message and code in (1, 255):
            for prefix in ("runc exec failed: ", "crun exec failed: ", "exec failed: ",
                           "unable to start container process: "):
                message = message.removeprefix(prefix)
            _raise({"kind": "notfound" if ("executable file not found" in message
                                            or "no such file or directory" in message)
                    else "noexec" if "permission denied" in message else "error",
                    "message": message})
        return code
    finally:
        if console is not None:
            console.close()
        for path in (process_file, log):
            path.unlink(missing_ok=True)
