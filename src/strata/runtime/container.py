"""Containers on one store root: rootfs from snapshots, bundle, records, run and remove.

A container's root filesystem is three kinds of snapshot stacked by the snapshotter (overlay:
one kernel overlay mount):

* the image's committed layer snapshots (keyed by chainID) as the read-only lowers;
* the *init layer* ``init-vN-CHAINID``, committed on the image's top chainID, holding what
  every container needs to exist as mount targets (``/etc/hosts``, ``/etc/hostname``,
  ``/etc/resolv.conf``, ``/proc``, ``/sys``, ``/dev``...), as docker's ``-init`` layer.  Its
  content depends only on the image, so it is made once per image (and version of this
  code) and shared by the image's containers: ``create`` then mounts nothing;
* the container's active snapshot ``ctr-ID`` on the init layer: the writable upper dir.

Per container, ``ROOT/containers/ID/`` holds ``hosts``, ``hostname`` and ``resolv.conf``
(bind-mounted over the init layer's files), ``bundle/`` (``config.json`` and ``rootfs``,
where the snapshot is mounted while the container runs) and ``ctr.log`` (the json-file log a
detached container's supervisor writes).

Lifecycle: a container runs either in the foreground of the strata process that started it
(``run``, ``start -a``: the caller's stdio, no extra process) or under its own supervisor
(``run -d``, ``start``: :mod:`strata.runtime.supervisor`).  Either way the record says who
waits for it (``supervisor_pid``) and which host process is its PID 1 (``pid``, with its
start time), so that ``ps``, ``stop``, ``kill``, ``wait``, ``exec``, ``logs`` and ``rm -f``
work from any later strata process, and a container whose supervisor was killed is seen as
it really is and cleaned up (:meth:`Containers.get`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from strata.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, StrataError
from strata.oci import ContainerConfig
from strata.runtime import builtin, cgroups, network, oci, spec, userns, volumes
from strata.runtime import exec as execs
from strata.runtime import pty as ptys
from strata.runtime.exec import ExecOptions
from strata.runtime.logs import LogEntry, LogWriter, pump, read_log
from strata.runtime.store import ContainerRecord, ContainerStore, State, valid_name
from strata.snapshots import Kind, Snapshotter, mount_all, unmount

__all__ = ["Containers", "ImageForRun", "image_init_key", "init_key", "parse_signal", "proc_start",
           "upper_key"]

#: docker's default grace period of ``stop`` (seconds).
STOP_TIMEOUT = 10
#: How often lifecycle commands look at a container's process.
_POLL = 0.02

_ADJECTIVES = ("brave", "calm", "eager", "fond", "keen", "lucid", "merry", "nifty", "quiet",
               "sharp", "tender", "vivid", "witty", "zen", "bold", "crisp")
_NOUNS = ("curie", "darwin", "euler", "gauss", "hopper", "kepler", "lovelace", "newton",
          "noether", "pascal", "ritchie", "turing", "volta", "wright", "yalow", "fermi")

#: Directories and files the init layer provides (docker's ``setupInitLayer``).
_INIT_DIRS = ("dev", "dev/pts", "dev/shm", "proc", "sys", "etc")
_INIT_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")

_HOSTS = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
          "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
          "ff02::2\tip6-allrouters\n")


def upper_key(container_id: str) -> str:
    """The snapshot key of a container's writable layer."""
    return f"ctr-{container_id}"


def init_key(container_id: str) -> str:
    """The per-container init layer of containers made before init layers were shared
    (removed with the container); a container's init layer is the parent of its
    :func:`upper_key` snapshot."""
    return f"ctr-{container_id}-init"


#: Bumped whenever what :func:`_write_init` makes changes: containers made later get the new
#: init layer, older ones keep theirs.
_INIT_VERSION = 1
#: Snapshot labels of a shared init layer: the image's ``/etc/passwd`` and ``/etc/group``
#: (when regular files), for ``-u NAME`` without mounting the image.
_ETC_LABELS = {"passwd": "strata.init/etc-passwd", "group": "strata.init/etc-group"}


def image_init_key(top_chain: str | None) -> str:
    """The committed snapshot name of the init layer shared by an image's containers."""
    return f"init-v{_INIT_VERSION}-{top_chain or 'empty'}"


@dataclass(frozen=True, slots=True)
class ImageForRun:
    """What a container needs from its image."""

    name: str
    id: str
    top_chain: str | None
    config: ContainerConfig | None


def _write_init(merged: Path) -> None:
    """Create the init layer's mount targets in the mounted init snapshot ``merged``.

    Works through directory file descriptors with ``O_NOFOLLOW``: an image whose ``/etc``
    (or ``/etc/hosts``...) is a symlink gets a real directory (file) in the init layer, never
    a write through the link.
    """
    root_fd = os.open(merged, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for rel in _INIT_DIRS:
            parent_fd = _open_parent(root_fd, rel)
            try:
                name = rel.rsplit("/", 1)[-1]
                try:
                    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                except FileNotFoundError:
                    os.mkdir(name, 0o755, dir_fd=parent_fd)
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=parent_fd)
                    os.mkdir(name, 0o755, dir_fd=parent_fd)
            finally:
                os.close(parent_fd)
        for rel in _INIT_FILES:
            parent_fd = _open_parent(root_fd, rel)
            try:
                name = rel.rsplit("/", 1)[-1]
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        if stat.S_ISDIR(st.st_mode):
                            shutil.rmtree(f"/proc/self/fd/{parent_fd}/{name}")
                        else:
                            os.unlink(name, dir_fd=parent_fd)
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o644, dir_fd=parent_fd)
                os.close(fd)
            finally:
                os.close(parent_fd)
    finally:
        os.close(root_fd)


def _etc_labels(merged: Path) -> dict[str, str]:
    """The image's ``/etc/passwd`` and ``/etc/group`` as :func:`spec.resolve_user` would read
    them in the mounted rootfs ``merged`` (regular files in a real ``/etc`` only)."""
    etc = merged / "etc"
    if not etc.is_dir() or etc.is_symlink():
        return {}
    out = {}
    for name, label in _ETC_LABELS.items():
        path = etc / name
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(path).st_mode):
                out[label] = path.read_text(errors="replace")
    return out


def _image_etc(cdir: Path, labels: Mapping[str, str]) -> Path:
    """A directory whose ``etc/passwd`` and ``etc/group`` are the image's (from the init
    layer's labels), for :func:`spec.resolve_user`; under the container's directory."""
    root = cdir / "image-etc"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    for name, label in _ETC_LABELS.items():
        if label in labels:
            (root / "etc" / name).write_text(labels[label])
    return root


def _open_parent(root_fd: int, rel: str) -> int:
    """An fd of ``rel``'s parent directory, opened component by component without links."""
    fd = os.dup(root_fd)
    for part in rel.split("/")[:-1]:
        try:
            new = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
        except OSError:
            os.close(fd)
            raise
        os.close(fd)
        fd = new
    return fd


def parse_signal(text: str) -> int:
    """A signal given as docker accepts it: ``KILL``, ``SIGKILL``, ``sigkill`` or ``9``.

    Raises:
        InvalidArgument: docker's message for an unknown signal.
    """
    word = text.strip().upper()
    if word.isdigit():
        number = int(word)
        if 0 < number < signal.NSIG:
            return number
    else:
        name = word if word.startswith("SIG") else f"SIG{word}"
        value = getattr(signal.Signals, name, None) if name.isidentifier() else None
        if isinstance(value, signal.Signals):
            return int(value)
    raise InvalidArgument(f"Invalid signal: {text}")


def proc_start(pid: int) -> int:
    """The start time of process ``pid`` (clock ticks after boot; ``/proc/PID/stat`` field
    22), 0 when it does not exist or is a zombie."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] in (b"Z", b"X"):
        return 0
    return int(fields[19])


def _alive_as(pid: int, start: int) -> bool:
    """Whether ``pid`` runs and is the process that started at ``start`` (0: any)."""
    if pid <= 0:
        return False
    now = proc_start(pid)
    return now != 0 and start in (0, now)


def _hook(module: str, name: str) -> Callable[..., object] | None:
    """``strata.runtime.MODULE.NAME`` if that module and function exist (the network and
    cgroup modules are optional parts of the runtime)."""
    try:
        mod = importlib.import_module(f"strata.runtime.{module}")
    except ImportError:
        return None
    fn = getattr(mod, name, None)
    return fn if callable(fn) else None


def _resolv_conf() -> str:
    """The host's resolv.conf without loopback nameservers (unreachable from the container)."""
    try:
        text = Path("/etc/resolv.conf").read_text(errors="replace")
    except OSError:
        return ""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and (
                words[1].startswith("127.") or words[1] == "::1"):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


class Containers:
    """The containers of one store root.

    Args:
        root: ``ROOT/containers`` (per-container directories).
        store: the container records.
        snapshotter: the store's snapshotter (layers, init layers, writable layers).
    """

    def __init__(self, root: Path, store: ContainerStore, snapshotter: Snapshotter) -> None:
        self.root = root
        self.store = store
        self.snapshotter = snapshotter
        root.mkdir(parents=True, exist_ok=True)

    def _unique_name(self) -> str:
        taken = {r.name for r in self.store.walk()}
        while True:
            name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
            if name not in taken:
                return name
            name = f"{name}{secrets.randbelow(10)}"
            if name not in taken:
                return name

    def create(self, image: ImageForRun, options: spec.RunOptions) -> ContainerRecord:
        """Make a container: its snapshots, its files, its bundle and its record.

        Raises:
            InvalidArgument: a bad name, working directory, environment, no command, or a
                runtime that is not installed.
            AlreadyExists: the name is taken.
            NotFound: the ``-u`` user or group does not exist in the image.
        """
        args = spec.command_of(image.config, options)
        if options.runtime != "builtin" and shutil.which(options.runtime) is None:
            raise InvalidArgument(f"unknown or invalid runtime name: {options.runtime}")
        name = valid_name(options.name) if options.name else self._unique_name()
        cid = secrets.token_hex(32)
        record = ContainerRecord(id=cid, name=name, image=image.name, image_id=image.id,
                                 command=tuple(args), runtime=options.runtime,
                                 created=time.time(), auto_remove=options.remove,
                                 tty=options.tty, interactive=options.interactive,
                                 log_path=str(self.root / cid / "ctr.log"),
                                 stop_signal=(image.config.stop_signal or "")
                                 if image.config else "")
        self.store.add(record)
        try:
            self._make(record, image, options)
        except BaseException:
            with contextlib.suppress(StrataError, OSError):
                self._destroy(cid)
            raise
        return record

    def _make(self, record: ContainerRecord, image: ImageForRun, options: spec.RunOptions) -> None:
        cid = record.id
        cdir = self.root / cid
        bundle = cdir / "bundle"
        (bundle / "rootfs").mkdir(parents=True)
        hostname = options.hostname or (socket.gethostname() if options.network == "host"
                                        else cid[:12])
        (cdir / "hostname").write_text(hostname + "\n")
        (cdir / "hosts").write_text(_HOSTS)
        (cdir / "resolv.conf").write_text(_resolv_conf())
        # R3: network options kept for every start; -v/--mount requests checked up front.
        exposed = (image.config.exposed_ports or ()) if image.config and options.publish_all \
            else ()
        net = network.NetworkOptions.make(options.network, hostname, options.publish,
                                          exposed=exposed)
        network.save_options(cdir, net)
        mount_requests = volumes.requests_of(options.volumes, options.mounts,
                                             (t.partition(":")[0] for t in options.tmpfs))
        image_volumes = (image.config.volumes or ()) if image.config else ()
        extra_mounts: list[dict[str, object]] = []
        # The writable layer on the image's shared init layer (made by the first container).
        init, labels = self._init_layer(image.top_chain)
        mounts = self.snapshotter.prepare(upper_key(cid), init)
        user_spec = options.user if options.user is not None else (
            image.config.user if image.config else None)
        # The init layer leaves /etc/passwd and /etc/group as the image has them.
        user = spec.resolve_user(_image_etc(cdir, labels), user_spec) if user_spec else spec.User()
        if mount_requests or image_volumes:  # R3: volumes made, seeded from the image
            with tempfile.TemporaryDirectory(dir=cdir) as tmp:
                mount_all(mounts, Path(tmp))
                try:
                    extra_mounts = volumes.prepare(
                        cdir, mount_requests, self.volume_store, image_volumes=image_volumes,
                        rootfs=Path(tmp), remove_anonymous=options.remove)
                finally:
                    unmount(Path(tmp), detach=True)
        document = spec.generate(
            image.config, options, user=user, hostname=hostname,
            cgroups_path=cgroups.group_path(cid),
            etc_files={"/etc/hosts": cdir / "hosts", "/etc/hostname": cdir / "hostname",
                       "/etc/resolv.conf": cdir / "resolv.conf"},
            host_network=net.mode == "host",
            netns_path=str(network.netns_path(cdir)) if net.mode == "bridge" else None,
            extra_mounts=extra_mounts)
        # Compact: json's C encoder (``indent`` falls back to the pure-Python one, several
        # milliseconds for a spec).
        (bundle / "config.json").write_text(json.dumps(document, separators=(",", ":")))

    @contextlib.contextmanager
    def mounted(self, container_id: str, *, for_runtime: bool = False) -> Iterator[Path]:
        """The container's rootfs mounted at ``bundle/rootfs`` for the duration.

        ``for_runtime``: as the container's process must see it (an OCI runtime's rootfs):
        with ``--userns auto``, on idmapped layers (:func:`strata.runtime.userns.mount_rootfs`).
        """
        bundle = self.root / container_id / "bundle"
        rootfs = bundle / "rootfs"
        mounts = self.snapshotter.mounts(upper_key(container_id))
        layers: list[Path] = []
        maps = userns.bundle_mappings(bundle) if for_runtime else None
        if maps is not None:
            layers = userns.mount_rootfs(mounts, rootfs, bundle / ".idmap", *maps)
        else:
            mount_all(mounts, rootfs)
        try:
            yield rootfs
        finally:
            if _is_mounted(rootfs):  # `rm -f` may have unmounted it meanwhile
                unmount(rootfs, detach=True)
            userns.unmount_rootfs(layers)

    # -- running ----------------------------------------------------------------------------
    def _execute(self, record: ContainerRecord, *,
                 on_running: Callable[[ContainerRecord], None] | None = None,
                 on_console: Callable[[int], None] | None = None,
                 before_exit: Callable[[], None] | None = None) -> int:
        """Run ``record``'s container with this process's stdio until it exits; its code.

        Records it running (its PID 1's host PID, this process as its supervisor) once the
        process has been exec'd, calls the network hook before and the cgroup and network
        teardown hooks after, records the exit (code, time, OOM flag) and honours ``--rm``.
        With ``record.tty``, ``on_console`` gets the pty master (and owns it).

        Raises:
            CommandNotFound, CannotExecute, StrataError: the container could not start (the
                record then says exited with 127, 126 or 125).
        """
        cdir = self.root / record.id
        bundle = cdir / "bundle"
        me, me_start = os.getpid(), proc_start(os.getpid())

        def executing(pid: int) -> None:
            nonlocal record
            record = self.store.started(record, pid, pid_start=proc_start(pid),
                                        supervisor_pid=me, supervisor_start=me_start)
            if on_running is not None:
                on_running(record)

        setup = _hook("network", "setup")
        code = 125
        oom = False
        oom_seen: list[bool] = []
        console_thread: threading.Thread | None = None
        try:
            if setup is not None:
                setup(cdir)
            if record.runtime == "builtin":
                console_fd = None
                if record.tty:
                    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                    console_fd = theirs.detach()
                    console_thread = threading.Thread(
                        target=_receive_console, args=(ours, on_console), daemon=True)
                    console_thread.start()
                # Mounted inside the container's own mount namespace: gone with it.
                code = builtin.run_bundle(
                    bundle, rootfs_mounts=self.snapshotter.mounts(upper_key(record.id)),
                    on_exec=executing, console_fd=console_fd)
            else:
                with self.mounted(record.id, for_runtime=True):
                    code = oci.run_with(record.runtime, bundle, record.id, self._state_root(
                        record.runtime), on_exec=executing,
                        console_socket=cdir / "console.sock" if record.tty else None,
                        on_console=on_console,  # OOM read before runc deletes the cgroup:
                        on_exit=lambda: oom_seen.append(cgroups.oom_killed(record.id)))
        except StrataError as exc:
            code = exc.exit_code if exc.exit_code in (126, 127) else 125
            raise
        finally:
            if console_thread is not None:
                console_thread.join(timeout=5)
            if before_exit is not None:
                before_exit()
            # (run_with deleted the OCI runtime's state itself.)
            oom = self._after_exit(record, runtime_state=False) or any(oom_seen)
            with contextlib.suppress(NotFound):
                if record.state == State.RUNNING:
                    self.store.exited(record, code, oom_killed=oom)
                else:  # it never ran: docker leaves it "Created", with the exit code
                    self.store.update(dataclasses.replace(record, exit_code=code))
            if record.auto_remove:
                with contextlib.suppress(StrataError, OSError):
                    self._destroy(record.id)
        return code

    def _state_root(self, runtime: str) -> Path:
        return self.root.parent / "runtime" / runtime

    def _after_exit(self, record: ContainerRecord, *, runtime_state: bool = True) -> bool:
        """Everything owed to a container whose process is gone (idempotent): the rootfs
        unmounted, the OCI runtime's state deleted (``runtime_state``), the cgroup and
        network torn down.  Returns whether the kernel OOM-killed it."""
        rootfs = self.root / record.id / "bundle" / "rootfs"
        with contextlib.suppress(StrataError, OSError):
            if _is_mounted(rootfs):
                unmount(rootfs, detach=True)
        if runtime_state and record.runtime != "builtin" and shutil.which(record.runtime):
            subprocess.run([record.runtime, "--root", str(self._state_root(record.runtime)),
                            "delete", "--force", record.id], capture_output=True, check=False)
        oom = False
        oom_killed = _hook("cgroups", "oom_killed")
        if oom_killed is not None:
            with contextlib.suppress(StrataError, OSError):
                oom = bool(oom_killed(record.id))
        for module, name, arg in (("cgroups", "remove", record.id),
                                  ("network", "teardown", self.root / record.id)):
            fn = _hook(module, name)
            if fn is not None:
                with contextlib.suppress(StrataError, OSError):
                    fn(arg)
        return oom

    def start(self, ref: str, *, on_start: Callable[[ContainerRecord], None] | None = None
              ) -> int:
        """Run a created or exited container in the foreground; the process's exit code.

        With ``-t`` the container's terminal is relayed to this process's stdin (when the
        container was created with ``-i``) and stdout, the caller's terminal in raw mode
        and its window size followed.

        Raises:
            NotFound: no such container.
            FailedPrecondition: it is running.
            CommandNotFound, CannotExecute, StrataError: it could not start.
        """
        record = self._refresh(self.store.find(ref))
        if record.state == State.RUNNING:
            raise FailedPrecondition(f"container {record.id[:12]} is already running")
        # Logged as docker does, unless --rm (nobody could read the log; run --rm stays on
        # the direct, fastest path).
        log = LogWriter(Path(record.log_path)) if record.log_path and not record.auto_remove \
            and _stdio_open() else None
        try:
            if not record.tty:
                if log is None:
                    return self._execute(record, on_running=on_start)
                with _logged_stdio(log) as finish:
                    return self._execute(record, on_running=on_start, before_exit=finish)
            with _terminal(interactive=record.interactive, log=log) as console:
                return self._execute(record, on_running=on_start, on_console=console)
        finally:
            if log is not None:
                log.close()

    def exec(self, ref: str, options: ExecOptions) -> int:
        """``exec``: run a command in a running container with this process's stdio (``-t``:
        on a pty of the container's, relayed); the command's exit code.

        Raises:
            NotFound: no such container, or the ``-u`` user is not in it.
            FailedPrecondition: it is not running (docker's message).
            InvalidArgument: no command, a relative working directory or a bad ``-e``.
            CommandNotFound, CannotExecute: the command does not exist / cannot be run.
        """
        record = self.get(ref)
        if record.state != State.RUNNING:
            raise FailedPrecondition(f"Container {record.id} is not running")
        cdir = self.root / record.id
        document = json.loads((cdir / "bundle" / "config.json").read_text())
        process = execs.process_of(document, options, pid=record.pid)
        with contextlib.ExitStack() as stack:
            console = stack.enter_context(_terminal(interactive=options.interactive)) \
                if options.tty else None
            if record.runtime == "builtin":
                return execs.exec_builtin(document, process, record.pid, on_console=console)
            return execs.exec_oci(record.runtime, self._state_root(record.runtime), record.id,
                                  process, cdir / "exec", on_console=console)

    def start_detached(self, ref: str) -> ContainerRecord:
        """Start a container under its own supervisor process (``run -d``, ``start``) and
        return once its process runs; a running container is left as it is.

        Raises:
            NotFound: no such container.
            CommandNotFound, CannotExecute, StrataError: it could not start.
        """
        from strata.runtime import supervisor

        record = self._refresh(self.store.find(ref))
        if record.state == State.RUNNING:
            return record
        supervisor.spawn(self, record.id)
        return self.store.get(record.id)

    # -- state -----------------------------------------------------------------------------
    def _refresh(self, record: ContainerRecord) -> ContainerRecord:
        """``record`` as it really is: a container recorded running whose process and
        supervisor are both gone (killed) is cleaned up and recorded exited (255)."""
        if record.state != State.RUNNING:
            return record
        if _alive_as(record.pid, record.pid_start):
            return record
        if _alive_as(record.supervisor_pid, record.supervisor_start):
            return record  # it is recording the exit right now
        oom = self._after_exit(record)
        with contextlib.suppress(NotFound):
            record = self.store.exited(record, 255, oom_killed=oom)
        if record.auto_remove:
            with contextlib.suppress(StrataError, OSError):
                self._destroy(record.id)
        return record

    def get(self, ref: str) -> ContainerRecord:
        """A container's record, reconciled with the processes that really run.

        Raises:
            NotFound: no such container.
        """
        return self._refresh(self.store.find(ref))

    def reconcile(self) -> list[ContainerRecord]:
        """Every record, reconciled (a container whose process and supervisor were killed is
        recorded exited with code 255 and cleaned up); newest first."""
        out = []
        for record in self.store.walk():
            refreshed = self._refresh(record)
            if refreshed.state == State.EXITED and record.auto_remove and \
                    record.state == State.RUNNING:
                continue  # removed by --rm
            out.append(refreshed)
        return out

    def _wait_gone(self, record: ContainerRecord, timeout: float | None) -> bool:
        """Wait until ``record``'s process is gone and its supervisor has recorded it (or
        died too); False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not _alive_as(record.pid, record.pid_start):
                break
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
        # The process is gone: give its supervisor time to record the exit.
        limit = time.monotonic() + 30
        while _alive_as(record.supervisor_pid, record.supervisor_start) and \
                time.monotonic() < limit:
            try:
                if self.store.get(record.id).state != State.RUNNING:
                    break
            except NotFound:
                break
            time.sleep(_POLL)
        return True

    def _signal(self, record: ContainerRecord, signum: int) -> None:
        if _alive_as(record.pid, record.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signum)

    def stop(self, ref: str, *, timeout: float | None = None) -> ContainerRecord:
        """``stop``: the image's StopSignal (SIGTERM by default), then SIGKILL after ``timeout``
        seconds (10); returns the record once the container has exited.

        Raises:
            NotFound: no such container.
        """
        record = self.get(ref)
        if record.state != State.RUNNING:
            return record
        self._signal(record, parse_signal(record.stop_signal or "SIGTERM"))
        if not self._wait_gone(record, STOP_TIMEOUT if timeout is None else max(timeout, 0)):
            self._signal(record, signal.SIGKILL)
            self._wait_gone(record, None)
        return self.get(record.id)

    def kill(self, ref: str, *, signum: int = signal.SIGKILL) -> ContainerRecord:
        """``kill``: send ``signum`` to the container's process.

        Raises:
            NotFound: no such container.
            FailedPrecondition: it is not running (docker's message).
        """
        record = self.get(ref)
        if record.state != State.RUNNING:
            raise FailedPrecondition(f"Cannot kill container: {ref}: Container {record.id} is"
                                     " not running")
        self._signal(record, signum)
        return record

    def wait(self, ref: str) -> int:
        """``wait``: block until the container is not running; its exit code.

        Raises:
            NotFound: no such container (or it was removed, ``--rm``, before its exit
                could be read).
        """
        try:
            record = self.get(ref)
        except NotFound:
            code = self.store.last_exit(ref)  # already removed on exit (--rm)
            if code is None:
                raise
            return code
        while record.state == State.RUNNING:
            time.sleep(_POLL)
            try:
                record = self._refresh(self.store.get(record.id))
            except NotFound:
                code = self.store.last_exit(record.id)  # removed on exit (--rm)
                if code is None:
                    raise
                return code
        return record.exit_code if record.exit_code is not None else 0

    def restart(self, ref: str, *, timeout: float | None = None) -> ContainerRecord:
        """``restart``: stop (as :meth:`stop`) then start detached.

        Raises:
            NotFound: no such container.
            CommandNotFound, CannotExecute, StrataError: it could not start again.
        """
        record = self.stop(ref, timeout=timeout)
        return self.start_detached(record.id)

    def logs(self, ref: str, *, follow: bool = False, tail: int | None = None
             ) -> Iterator[LogEntry]:
        """``logs``: the container's log records (``-f``: until it stops running).

        Raises:
            NotFound: no such container.
        """
        record = self.get(ref)
        path = Path(record.log_path) if record.log_path else self.root / record.id / "ctr.log"

        def running() -> bool:
            try:
                return self._refresh(self.store.get(record.id)).state == State.RUNNING
            except NotFound:
                return False

        return read_log(path, tail=tail, follow=follow, running=running)

    def remove(self, ref: str, *, force: bool = False) -> ContainerRecord:
        """Remove a container: its record, snapshots and directory (``force``: killing it
        first if it runs).

        Raises:
            NotFound: no such container.
            FailedPrecondition: it is running and ``force`` is not given (docker's message).
        """
        record = self.get(ref)
        if record.state == State.RUNNING:
            if not force:
                raise FailedPrecondition(
                    f"You cannot remove a running container {record.id}. Stop the container"
                    " before attempting removal or force remove")
            self._signal(record, signal.SIGKILL)
            self._wait_gone(record, 30)
            limit = time.monotonic() + 30
            while _alive_as(record.supervisor_pid, record.supervisor_start) and \
                    time.monotonic() < limit:
                time.sleep(_POLL)  # let it finish (teardown, --rm) before removing
            self._after_exit(record)
        with contextlib.suppress(NotFound):
            self._destroy(record.id)
        return record

    @functools.cached_property
    def volume_store(self) -> volumes.Volumes:
        """The store's volumes (``ROOT/volumes``)."""
        return volumes.Volumes(self.root.parent / "volumes", self.root)

    def _init_layer(self, top_chain: str | None) -> tuple[str, Mapping[str, str]]:
        """The image's shared init layer (made now if missing) and its labels.

        Made as docker makes a container's ``-init`` layer: prepared on the image's top
        layer, mounted, filled by :func:`_write_init`, committed.  Two processes making it at
        once both succeed: the second commit finds the name taken and uses the first.
        """
        key = image_init_key(top_chain)
        with contextlib.suppress(NotFound):
            info = self.snapshotter.stat(key)
            if info.kind is Kind.COMMITTED:
                return key, info.labels
        active = f"{key}-active-{os.getpid()}-{secrets.token_hex(4)}"
        scratch = self.root.parent / "tmp"
        scratch.mkdir(exist_ok=True)
        try:
            mounts = self.snapshotter.prepare(active, top_chain)
            with tempfile.TemporaryDirectory(dir=scratch) as tmp:
                mount_all(mounts, Path(tmp))
                try:
                    _write_init(Path(tmp))
                    labels = _etc_labels(Path(tmp))
                finally:
                    unmount(Path(tmp), detach=True)
            self.snapshotter.commit(key, active, labels=labels)
        except AlreadyExists:
            with contextlib.suppress(NotFound):
                self.snapshotter.remove(active)
            return key, self.snapshotter.stat(key).labels
        except BaseException:
            with contextlib.suppress(StrataError, OSError):
                self.snapshotter.remove(active)
            raise
        return key, labels

    def _destroy(self, cid: str) -> None:
        network.teardown(self.root / cid)  # R3: idempotent
        volumes.release(self.root / cid, self.volume_store)  # R3: --rm drops anonymous volumes
        rootfs = self.root / cid / "bundle" / "rootfs"
        if _is_mounted(rootfs):
            unmount(rootfs, detach=True)
        # R2: idmapped layer mounts (--userns, runc) left by a killed supervisor must go
        # before anything under the container directory is deleted.
        userns.release(self.root / cid / "bundle")
        # The container is gone once its snapshots, directory and record are: the
        # directories are moved aside at once and deleted by a background ``rm`` (a
        # container's files must not delay ``run --rm``'s exit code), or here when that
        # cannot be started.
        trash: list[Path] = []
        for key in (upper_key(cid), init_key(cid), f"{init_key(cid)}-active"):
            with contextlib.suppress(NotFound):
                remove_deferred = getattr(self.snapshotter, "remove_deferred", None)
                if remove_deferred is None:
                    self.snapshotter.remove(key)
                elif (aside := remove_deferred(key)) is not None:
                    trash.append(aside)
        scratch = self.root.parent / "tmp"
        aside = scratch / f"rm-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            (self.root / cid).rename(aside)
            trash.append(aside)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(self.root / cid, ignore_errors=True)
        self.store.delete(cid)
        _delete_later(trash + _stale_trash(scratch))


def _stale_trash(scratch: Path) -> list[Path]:
    """What :meth:`Containers._destroy` moved into ``scratch`` and a process that is gone
    did not delete (its ``rm`` was killed)."""
    out = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(scratch):
            owner = entry.name.split("-")[1:2]
            if entry.name.startswith("rm-") and owner and owner[0].isdigit() \
                    and not _alive_as(int(owner[0]), 0):
                out.append(Path(entry.path))
    return out


#: Background ``rm`` processes of this process not reaped yet.
_DELETERS: list[int] = []


def _delete_later(paths: list[Path]) -> None:
    """Delete ``paths`` (directories moved aside) in a background ``rm`` that outlives this
    process (``posix_spawn``: no copy of this big process); here when it cannot be started."""
    for pid in list(_DELETERS):  # reap the finished ones (a long-lived caller, the tests)
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                continue
        _DELETERS.remove(pid)
    if not paths:
        return
    null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    try:
        _DELETERS.append(os.posix_spawn(
            shutil.which("rm") or "/bin/rm", ["rm", "-rf", "--one-file-system", "--",
                                              *map(str, paths)],
            os.environ, file_actions=null, setsid=True))
    except OSError:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _terminal(*, interactive: bool, log: LogWriter | None = None
              ) -> Iterator[Callable[[int], None]]:
    """For a process on a pty, in the foreground: a callback taking the pty's master and
    relaying it to this process's stdout (and from stdin with ``interactive``), the
    caller's terminal in raw mode and its window size followed, for the duration; what
    the pty prints is also logged to ``log`` (as stdout)."""
    stdin = 0 if interactive else None
    relays: list[threading.Thread] = []
    with contextlib.ExitStack() as stack:
        winch = None
        if threading.current_thread() is threading.main_thread():
            winch = stack.enter_context(ptys.winch_pipe())
        if stdin is not None:
            stack.enter_context(ptys.raw_mode(stdin))

        def console(master: int) -> None:
            tee = None if log is None else functools.partial(log.write, "stdout")
            thread = threading.Thread(target=ptys.relay, args=(master,), kwargs={
                "stdin": stdin, "stdout": 1, "winch": winch, "tee": tee}, daemon=True)
            thread.start()
            relays.append(thread)

        try:
            yield console
        finally:
            for thread in relays:
                thread.join(timeout=5)


def _stdio_open() -> bool:
    """Whether this process has a stdout and a stderr (they can be relayed)."""
    if sys.stdout is None or sys.stderr is None:  # started with them closed
        return False
    try:
        os.fstat(1)
        os.fstat(2)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _logged_stdio(log: LogWriter) -> Iterator[Callable[[], None]]:
    """For the duration, this process's stdout and stderr (inherited by the container) are
    pipes whose data goes both to the original stdout/stderr and into ``log``; the callback
    puts the originals back and drains the pipes (call it once the container exited)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {1: os.dup(1), 2: os.dup(2)}
    threads = []
    for fd, stream in ((1, "stdout"), (2, "stderr")):
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        os.dup2(write_end, fd)
        os.close(write_end)
        thread = threading.Thread(target=pump, args=(read_end, stream, log), kwargs={
            "tee": functools.partial(ptys.write_all, saved[fd])}, daemon=True)
        thread.start()
        threads.append(thread)
    restored = False

    def finish() -> None:
        nonlocal restored
        if restored:
            return
        restored = True
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original in saved.items():
            os.dup2(original, fd)
        for thread in threads:
            thread.join(timeout=2)  # a daemonized process may keep a pipe: do not wait

    try:
        yield finish
    finally:
        finish()
        for original in saved.values():
            os.close(original)


def _receive_console(sock: socket.socket, on_console: Callable[[int], None] | None) -> None:
    """Wait for the container's init to send its pty master, then hand it to ``on_console``
    (closed if there is none); nothing if the container failed before sending it."""
    with sock:
        try:
            master = ptys.recv_fd(sock)
        except OSError:
            return
    if on_console is None:
        os.close(master)
    else:
        on_console(master)


def _is_mounted(path: Path) -> bool:
    """Whether something is mounted on ``path`` (a bind mount from the same filesystem too,
    which ``os.path.ismount`` cannot tell)."""
    target = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(path)
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == target:
            return True
    return False


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (``\\040`` for a space...) decoded."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
