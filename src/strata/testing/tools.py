"""Thin wrappers over the peer tools that tests and benches compare strata with.

This module owns how skopeo, umoci, buildah, podman, dockerd/docker and Debian's
``docker-registry`` are invoked here: the flags that isolate each of them from the host's
own stores and configuration (separate containers-storage roots, a private docker data
root, exec root and socket, a private registry directory on a free loopback port), and error
messages that show the failing command's stderr. It must not touch the system stores
(``/var/lib/containers``, ``/var/lib/docker``) nor contact any registry but one it started.

A helper that needs a binary calls :func:`require`, which skips the calling test with a loud
reason when the binary is absent (``make test`` installs them all). Nothing here imports the
rest of strata.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

__all__ = [
    "ContainersStore",
    "DockerRegistry",
    "Dockerd",
    "PACKAGES",
    "StrataCLI",
    "ToolError",
    "ToolMissingError",
    "acceptable_ages",
    "buildah_bud",
    "buildah_push_oci",
    "containers_store",
    "docker_cli",
    "free_port",
    "human_duration",
    "parse_table",
    "podman",
    "require",
    "run",
    "skopeo_copy",
    "table_columns",
    "umoci_unpack",
    "unmount_under",
]

#: Which Debian package installs each binary, for the skip message.
PACKAGES: Mapping[str, str] = {
    "skopeo": "skopeo",
    "umoci": "umoci",
    "buildah": "buildah",
    "podman": "podman",
    "runc": "runc",
    "dockerd": "docker.io",
    "docker": "docker.io",
    "containerd": "containerd",
    "docker-registry": "docker-registry",
    "debootstrap": "debootstrap",
    "busybox": "busybox-static",
    "setfattr": "attr",
    "setcap": "libcap2-bin",
}

_OUTPUT_TAIL = 4000


class ToolError(Exception):
    """A peer tool exited non-zero, or a daemon did not come up.

    Attributes:
        cmd: the command line.
        returncode: its exit status (``None`` for a daemon that never answered).
        stdout: what it printed on stdout.
        stderr: what it printed on stderr (or the daemon's log).
    """

    def __init__(
        self,
        message: str,
        *,
        cmd: Sequence[str],
        returncode: int | None,
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        parts = [message, f"  command: {' '.join(self.cmd)}"]
        if returncode is not None:
            parts.append(f"  exit status: {returncode}")
        if stderr.strip():
            parts.append("  stderr:\n" + _indent(_tail(stderr)))
        if stdout.strip():
            parts.append("  stdout:\n" + _indent(_tail(stdout)))
        super().__init__("\n".join(parts))


class ToolMissingError(ToolError):
    """A required binary is absent and pytest is not there to skip the caller."""


def _tail(text: str) -> str:
    return text if len(text) <= _OUTPUT_TAIL else "...\n" + text[-_OUTPUT_TAIL:]


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines())


def _missing(reason: str) -> NoReturn:
    """A required peer tool is missing: fail loudly (``make test`` installs every one of them,
    so a missing tool is a broken setup, never a reason to pass)."""
    try:
        import pytest
    except ImportError:  # a bench run without pytest
        raise ToolMissingError(reason, cmd=[], returncode=None) from None
    pytest.fail(f"{reason} (scripts/setup.sh installs it; run 'make test')", pytrace=False)


def require(binary: str) -> str:
    """The absolute path of ``binary``; the calling test fails loudly if it is absent.

    Args:
        binary: a command name (``"skopeo"``) or an absolute path.

    Returns:
        The path to run.
    """
    found = binary if os.path.isabs(binary) and os.access(binary, os.X_OK) else None
    found = found or shutil.which(binary)
    if found is None:
        name = os.path.basename(binary)
        package = PACKAGES.get(name, name)
        _missing(
            f"!!! REQUIRED TOOL MISSING: {name!r} is not installed, so this interop test "
            f"CANNOT RUN. Install it with `apt-get install {package}` (`make test` does). !!!"
        )
    return found


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = 1800,
    unset: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run a command with captured text output.

    Args:
        cmd: the program (looked up with :func:`require`) and its arguments.
        check: raise :class:`ToolError` on a non-zero exit.
        input: text for standard input (otherwise stdin is ``/dev/null``).
        env: variables to set or override on top of ``os.environ``.
        cwd: working directory.
        timeout: seconds before the command is killed.
        unset: variables to remove from the environment.

    Returns:
        The completed process, ``stdout``/``stderr`` as text.

    Raises:
        ToolError: the command failed (with ``check``) or timed out; the message holds its
            stderr and stdout.
    """
    __tracebackhide__ = True  # pytest shows the ToolError, not this function's source
    argv = [os.fspath(c) for c in cmd]
    argv[0] = require(argv[0])
    full_env = dict(os.environ)
    if env is not None:
        full_env.update(env)
    for name in unset:
        full_env.pop(name, None)
    try:
        proc = subprocess.run(
            argv,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            errors="replace",
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(
            f"{os.path.basename(argv[0])} timed out after {timeout}s",
            cmd=argv,
            returncode=None,
            stdout=_text(exc.stdout),
            stderr=_text(exc.stderr),
        ) from exc
    if check and proc.returncode != 0:
        raise ToolError(
            f"{os.path.basename(argv[0])} failed",
            cmd=argv,
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
        )
    return proc


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------- containers/*


_CONTAINERS_CONFIG = {
    "policy.json": json.dumps({"default": [{"type": "insecureAcceptAnything"}]}) + "\n",
    "registries.conf": 'unqualified-search-registries = []\nshort-name-mode = "disabled"\n',
}


@functools.cache
def _containers_config_dir() -> Path:
    """Private policy.json and registries.conf, so the host's own never apply (one fixed
    directory per user, rewritten atomically, so nothing piles up in /tmp)."""
    d = Path(tempfile.gettempdir()) / f"strata-containers-conf-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    for name, text in _CONTAINERS_CONFIG.items():
        path = d / name
        if not path.exists() or path.read_text() != text:
            tmp = d / f".{name}.{os.getpid()}"
            tmp.write_text(text)
            os.replace(tmp, path)
    return d


def _policy() -> str:
    return str(_containers_config_dir() / "policy.json")


def _containers_env() -> dict[str, str]:
    return {"CONTAINERS_REGISTRIES_CONF": str(_containers_config_dir() / "registries.conf")}


@dataclass(frozen=True, slots=True)
class ContainersStore:
    """A containers-storage instance (what buildah, podman and skopeo share), kept apart
    from the system store under ``/var/lib/containers``.

    ``overlay`` is the default driver: we are root with a kernel overlayfs here, and it
    shares lower layers where ``vfs`` copies the whole rootfs for every layer.

    Attributes:
        root: the graph root (layers, images); may persist across runs.
        runroot: transient state (mount counts, locks); one per session is best.
        driver: ``overlay`` or ``vfs``.
    """

    root: Path
    runroot: Path
    driver: str = "overlay"

    @property
    def conf(self) -> Path:
        """The storage.conf describing this store (written by :func:`containers_store`)."""
        return self.runroot / "storage.conf"

    def transport(self, ref: str) -> str:
        """The skopeo ``containers-storage:`` reference to ``ref`` in this store."""
        return f"containers-storage:[{self.driver}@{self.root}+{self.runroot}]{ref}"

    def flags(self) -> list[str]:
        """Global flags for buildah and podman."""
        return [
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            self.driver,
        ]

    def env(self) -> dict[str, str]:
        """Variables pointing every containers/* tool at this store and our private config."""
        return {**_containers_env(), "CONTAINERS_STORAGE_CONF": str(self.conf)}


def containers_store(root: Path, runroot: Path, *, driver: str = "overlay") -> ContainersStore:
    """Create (if needed) a private containers-storage store and its storage.conf.

    Args:
        root: graph root directory.
        runroot: run root directory.
        driver: storage driver.

    Returns:
        The store description.
    """
    root.mkdir(parents=True, exist_ok=True)
    runroot.mkdir(parents=True, exist_ok=True)
    store = ContainersStore(root=root, runroot=runroot, driver=driver)
    store.conf.write_text(
        f'[storage]\ndriver = "{driver}"\ngraphroot = "{root}"\nrunroot = "{runroot}"\n'
    )
    return store


def skopeo_copy(
    src: str,
    dst: str,
    *,
    store: ContainersStore | None = None,
    extra: Sequence[str] = (),
) -> None:
    """``skopeo copy SRC DST`` with a permissive private policy.

    Args:
        src: source transport reference (``oci:DIR:REF``, ``docker-archive:FILE``, ...).
        dst: destination transport reference. An existing ``docker-archive:`` or
            ``oci-archive:`` file is replaced; missing parent directories are made.
        store: the containers-storage store a ``containers-storage:`` side lives in
            (use :meth:`ContainersStore.transport` for the reference).
        extra: more ``skopeo copy`` flags.

    Raises:
        ToolError: skopeo failed.
    """
    for prefix in ("docker-archive:", "oci-archive:", "oci:"):
        if dst.startswith(prefix):
            path = Path(dst[len(prefix) :].split(":", 1)[0])
            path.parent.mkdir(parents=True, exist_ok=True)
            if prefix != "oci:":
                path.unlink(missing_ok=True)
    env = store.env() if store is not None else _containers_env()
    run(["skopeo", "--policy", _policy(), "copy", "--quiet", *extra, src, dst], env=env)


def umoci_unpack(layout_dir: Path, tag: str, dest: Path) -> Path:
    """``umoci unpack --image DIR:TAG DEST`` as root.

    Args:
        layout_dir: an OCI image layout.
        tag: the ``org.opencontainers.image.ref.name`` to unpack.
        dest: the bundle directory to create (must not exist).

    Returns:
        ``dest / "rootfs"``, the unpacked tree.

    Raises:
        ToolError: umoci failed.
    """
    run(["umoci", "unpack", "--image", f"{layout_dir}:{tag}", str(dest)])
    return dest / "rootfs"


def buildah_bud(
    context: Path,
    tag: str,
    *,
    storage_root: Path,
    runroot: Path,
    dockerfile: Path | None = None,
    driver: str = "overlay",
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    image_format: str = "oci",
    extra: Sequence[str] = (),
) -> str:
    """Build a Dockerfile with buildah into a private store, never pulling.

    Runs ``buildah --root R --runroot RR --storage-driver D bud --isolation chroot --layers
    --pull=never -t TAG [-f DOCKERFILE] CONTEXT`` (chroot isolation needs no runc nor
    network; ``--pull=never`` keeps ``FROM localhost/...`` from reaching for a registry).

    Args:
        context: the build context.
        tag: the image name to give the result.
        storage_root: containers-storage graph root.
        runroot: containers-storage run root.
        dockerfile: the Dockerfile (default ``context/Dockerfile``).
        driver: the storage driver.
        build_args: ``--build-arg`` values.
        target: ``--target`` stage.
        image_format: ``--format`` (``oci``, or ``docker`` to keep HEALTHCHECK, ONBUILD, SHELL).
        extra: more ``bud`` flags.

    Returns:
        The image ID (config digest, ``sha256:...``).

    Raises:
        ToolError: the build failed; its output is in the message.
    """
    store = containers_store(storage_root, runroot, driver=driver)
    with tempfile.TemporaryDirectory(prefix="strata-bud-") as tmp:
        iidfile = Path(tmp) / "iid"
        cmd = [
            "buildah",
            *store.flags(),
            "bud",
            "--signature-policy",
            _policy(),
            "--isolation",
            "chroot",
            "--layers",
            "--pull=never",
            "--cap-add",
            "CAP_MKNOD",
            "--format",
            image_format,
            *extra,
            "--iidfile",
            str(iidfile),
            "-t",
            tag,
        ]
        if dockerfile is not None:
            cmd += ["-f", str(dockerfile)]
        for key, value in (build_args or {}).items():
            cmd += ["--build-arg", f"{key}={value}"]
        if target is not None:
            cmd += ["--target", target]
        cmd.append(str(context))
        run(cmd, env=store.env())
        iid = iidfile.read_text().strip()
    return iid if iid.startswith("sha256:") else f"sha256:{iid}"


def buildah_push_oci(
    image: str,
    layout_dir: Path,
    ref: str,
    *,
    storage_root: Path,
    runroot: Path,
    driver: str = "overlay",
) -> None:
    """Export ``image`` from a private store into an OCI layout, tagged ``ref``.

    Uses ``skopeo copy containers-storage:[D@R+RR]IMAGE oci:DIR:REF``; give the full
    reference (``localhost/name:latest``) as ``ref`` so that loaders name the image.

    Raises:
        ToolError: skopeo failed.
    """
    store = containers_store(storage_root, runroot, driver=driver)
    skopeo_copy(store.transport(image), f"oci:{layout_dir}:{ref}", store=store)


def podman(
    args: Sequence[str | os.PathLike[str]], *, store: ContainersStore, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run podman against a private store (never the system one).

    Args:
        args: podman arguments after the global flags.
        store: the store (its runroot also holds podman's tmpdir).
        check: raise on failure.

    Raises:
        ToolError: podman failed.
    """
    tmpdir = store.runroot / "libpod-tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    return run(
        [
            "podman",
            *store.flags(),
            "--tmpdir",
            str(tmpdir),
            "--events-backend",
            "none",
            "--cgroup-manager",
            "cgroupfs",
            *args,
        ],
        env=store.env(),
        check=check,
    )


# --------------------------------------------------------------------------- docker


def docker_cli() -> str:
    """The docker client matching Debian's dockerd (``/usr/bin/docker``) when present.

    A newer static client may shadow it in ``/usr/local/bin``; the packaged one prints
    exactly what the packaged daemon's users see.
    """
    dockerd = shutil.which("dockerd")
    if dockerd is not None:
        for candidate in (
            Path(dockerd).resolve().parent.parent / "bin" / "docker",
            Path(dockerd).parent / "docker",
        ):
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return require("docker")


def _mounts_under(*paths: Path) -> list[str]:
    prefixes = [str(p.resolve()) for p in paths]
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if any(point == p or point.startswith(p + "/") for p in prefixes):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_under(*paths: Path) -> None:
    """Lazily unmount every mount at or below ``paths`` (deepest first), e.g. what
    containers-storage or dockerd left behind in a private store."""
    for point in _mounts_under(*paths):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_pid(pid: int, timeout: float) -> None:
    """Stop a process that is not our child (reaped by someone else) by its id."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)



def assert_no_mounts_under(*paths: Path) -> None:
    """Fail if a mount point of this mount namespace lies under any of ``paths`` (a test's
    store root after its containers are gone)."""
    prefixes = tuple(str(p) for p in paths)
    mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
               if line.split()[4].startswith(prefixes)]
    assert mounted == [], f"mounts left behind: {mounted}"

def _stop_child(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM our child, SIGKILL it after ``timeout`` seconds, and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def http_ready(url: str, *, accept: Sequence[int] = (200,), context: ssl.SSLContext | None = None
               ) -> bool:
    """Whether ``GET url`` answers now with one of the ``accept`` statuses."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return int(resp.status) in accept
    except urllib.error.HTTPError as exc:
        return exc.code in accept
    except (urllib.error.URLError, OSError):
        return False


def spawn_listening(
    command_for: Callable[[int], Sequence[str]],
    ready: Callable[[int], bool],
    *,
    log: Path,
    what: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
    tries: int = 3,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server on a free loopback port and wait until ``ready(port)``.

    ``command_for(port)`` prepares whatever the server needs for that port (a config file)
    and returns its command line; the server runs in a session of its own with stdout and
    stderr appended to ``log``. A server that exits or does not become ready in ``timeout``
    seconds is killed (its whole process group) and the next of ``tries`` free ports is used.

    Returns:
        The running process and its port.

    Raises:
        ToolError: no try came up; the message names ``what`` and carries the log.
    """
    last: ToolError | None = None
    for _ in range(tries):
        port = free_port()
        cmd = list(command_for(port))
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last = ToolError(f"{what} exited while starting", cmd=cmd,
                                 returncode=proc.returncode, stderr=_read_log(log))
                break
            if ready(port):
                return proc, port
            time.sleep(0.05)
        else:
            last = ToolError(f"{what} did not answer within {timeout}s", cmd=cmd,
                             returncode=None, stderr=_read_log(log))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert last is not None
    raise last


def _read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


class Service:
    """A server a test starts and stops: ``with Thing(...) as thing:`` starts it and stops it
    on the way out, whatever happened. Subclasses define ``start`` and an idempotent ``stop``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Dockerd(Service):
    """A private dockerd (Debian docker.io 20.10) for parity tests.

    ``with Dockerd(workdir) as d: d.docker("load", "-i", path)``. It runs::

        dockerd --config-file EMPTY.json --data-root WORKDIR/data
                -H unix://RUN/docker.sock --exec-root RUN/exec --pidfile RUN/docker.pid
                --storage-driver overlay2 --iptables=false --ip-masq=false --bridge=none
                --userland-proxy=false

    with no ``--containerd``: dockerd then starts and supervises its own containerd whose
    socket and state live under the exec root (and its content under the data root), so
    neither the system daemon nor ``/var/lib/docker`` is touched. RUN is a short directory
    in ``/tmp`` because unix socket paths are limited to 108 bytes. ``--config-file`` keeps
    ``/etc/docker/daemon.json`` out; the bridge and iptables flags keep the host network
    untouched (we never run containers with networking).
    """

    def __init__(self, workdir: Path, *, start_timeout: float = 60) -> None:
        self.workdir = workdir
        self.data_root = workdir / "data"
        self.start_timeout = start_timeout
        self._rundir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path = workdir / "dockerd.log"
        self._client_config: Path = workdir / "client-config"
        self._cli: str = ""

    @property
    def rundir(self) -> Path:
        if self._rundir is None:
            raise RuntimeError("dockerd is not started")  # programming error, not input
        return self._rundir

    @property
    def host(self) -> str:
        """The ``-H`` value for the client."""
        return f"unix://{self.rundir / 'docker.sock'}"

    def log(self) -> str:
        """The daemon's log so far."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def start(self) -> None:
        """Start dockerd and wait until it answers.

        Raises:
            ToolError: it exited or did not answer within ``start_timeout``.
        """
        dockerd = require("dockerd")
        require("containerd")  # dockerd execs it from PATH
        self._cli = docker_cli()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        self._client_config.mkdir(parents=True, exist_ok=True)
        (self._client_config / "config.json").write_text("{}\n")
        self._rundir = Path(tempfile.mkdtemp(prefix="sdk-", dir="/tmp"))
        config = self.workdir / "daemon.json"
        config.write_text("{}\n")
        cmd = [
            dockerd,
            "--config-file",
            str(config),
            "--data-root",
            str(self.data_root),
            "-H",
            self.host,
            "--exec-root",
            str(self.rundir / "exec"),
            "--pidfile",
            str(self.rundir / "docker.pid"),
            "--storage-driver",
            "overlay2",
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
            "--userland-proxy=false",
            "--log-level",
            "warn",
        ]
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                self._cleanup()
                raise ToolError(
                    "dockerd exited while starting",
                    cmd=cmd,
                    returncode=self._proc.returncode,
                    stderr=self.log(),
                )
            probe = self.docker("version", "--format", "{{.Server.Version}}", check=False)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ToolError(
                    f"dockerd did not answer within {self.start_timeout}s",
                    cmd=cmd,
                    returncode=None,
                    stderr=self.log() + "\n" + probe.stderr,
                )
            time.sleep(0.2)

    def docker(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker -H unix://SOCK ARGS`` against this daemon.

        ``env`` adds variables (``DOCKER_BUILDKIT=1`` for ``docker build``).

        Raises:
            ToolError: the client failed (with ``check``).
        """
        return run(
            [self._cli or docker_cli(), "-H", self.host, *args],
            check=check,
            input=input,
            env={
                "DOCKER_CONFIG": str(self._client_config),
                "DOCKER_HOST": "",
                "DOCKER_CONTEXT": "",
                "DOCKER_CLI_HINTS": "false",
                **(env or {}),
            },
        )

    def stop(self) -> None:
        """Stop dockerd (SIGTERM, then SIGKILL after 30 s) and the containerd it started,
        unmount whatever it left mounted, and remove the run directory. Idempotent."""
        if self._proc is not None:
            _stop_child(self._proc, 30)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._rundir is None:
            return
        pidfile = self._rundir / "exec" / "containerd" / "containerd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            if _pid_alive(pid):  # only the containerd this dockerd started
                _stop_pid(pid, 10)
        unmount_under(self.data_root, self._rundir)
        shutil.rmtree(self._rundir, ignore_errors=True)
        self._rundir = None



# --------------------------------------------------------------------------- registry


class DockerRegistry(Service):
    """Debian's ``docker-registry serve CONFIG`` (distribution 2.8) on a free loopback port.

    ``with DockerRegistry(workdir) as reg: reg.address  # "127.0.0.1:PORT"``. Storage is
    ``workdir/storage``; deletes are enabled; no auth, no TLS (clients need their
    "insecure"/plain-HTTP switch for ``reg.address``).
    """

    def __init__(self, workdir: Path, *, start_timeout: float = 30) -> None:
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = workdir / "registry.log"

    @property
    def address(self) -> str:
        """``host:port`` to put in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT``)."""
        return f"http://{self.address}"

    def log(self) -> str:
        """The registry's log so far."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def start(self) -> None:
        """Start the registry and wait until ``GET /v2/`` answers 200.

        Raises:
            ToolError: it did not come up (after three tries on fresh ports).
        """
        binary = require("docker-registry")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)

        def command(port: int) -> list[str]:
            self.port = port
            config = self.workdir / "config.yml"
            config.write_text(
                "version: 0.1\n"
                "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
                "storage:\n"
                f"  filesystem:\n    rootdirectory: {self.storage}\n"
                "  delete:\n    enabled: true\n"
                "  maintenance:\n    uploadpurging:\n      enabled: false\n"
                "http:\n"
                f"  addr: {self.address}\n"
                "  secret: strata-tests\n"
                "  headers:\n    X-Content-Type-Options: [nosniff]\n"
                "health:\n  storagedriver:\n    enabled: false\n"
            )
            return [binary, "serve", str(config)]

        self._proc, self.port = spawn_listening(
            command, lambda port: http_ready(f"http://127.0.0.1:{port}/v2/"),
            log=self._log, what="docker-registry", timeout=self.start_timeout)

    def stop(self) -> None:
        """Stop the registry. Idempotent."""
        if self._proc is not None:
            _stop_child(self._proc, 10)
            self._proc = None



# --------------------------------------------------------------------------- strata


class StrataCLI:
    """Runs the strata CLI as a user would: ``python -m strata --root ROOT ARGS``.

    ``STRATA_ROOT`` is removed from the environment so only ``--root`` decides the store.
    Calling it returns the :class:`subprocess.CompletedProcess` (text stdout/stderr) and,
    with ``check`` (the default), raises :class:`ToolError` showing stderr on a non-zero
    exit. ``$STRATA_TEST_COMMAND`` (a shell-quoted command line) replaces
    ``python -m strata``, to run the same tests against another build or a shim. ``env``
    sets variables for every call (``DOCKER_CONFIG`` for a private credentials file).
    """

    def __init__(
        self,
        root: Path,
        *,
        command: Sequence[str] | None = None,
        timeout: float = 900,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root
        self.timeout = timeout
        self.env = dict(env or {})
        override = os.environ.get("STRATA_TEST_COMMAND")
        if command is not None:
            self.command = list(command)
        elif override:
            self.command = shlex.split(override)
        else:
            self.command = [sys.executable, "-m", "strata"]

    def __call__(
        self, *args: str | os.PathLike[str], check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        __tracebackhide__ = True
        try:
            return run(
                [*self.command, "--root", self.root, *args],
                check=check,
                input=input,
                timeout=self.timeout,
                env=self.env,
                unset=("STRATA_ROOT",),
            )
        except ToolError as exc:
            verb = " ".join(os.fspath(a) for a in args[:1])
            raise ToolError(
                f"strata {verb} failed",
                cmd=exc.cmd,
                returncode=exc.returncode,
                stdout=exc.stdout,
                stderr=exc.stderr,
            ) from None


# --------------------------------------------------------------------------- docker output


_HEADER_CELL = re.compile(r"\S+(?: \S+)*")


def table_columns(text: str) -> list[tuple[int, str]]:
    """The (start offset, name) of each column in a docker-style table's header line."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    merged: list[tuple[int, str]] = []
    for m in _HEADER_CELL.finditer(lines[0]):
        merged.append((m.start(), m.group()))
    return merged


def parse_table(text: str) -> list[dict[str, str]]:
    """Parse a docker-style table (a header line, then rows aligned to it by tabwriter).

    Cells are cut at the columns where the header's names start (header names are separated
    by two or more spaces and may contain single spaces: ``IMAGE ID``), so cells may hold
    runs of spaces and may be empty. Blank lines are skipped.

    Returns:
        One dict per row, header name → stripped cell.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    merged = table_columns(text)
    rows: list[dict[str, str]] = []
    for line in lines[1:]:
        row: dict[str, str] = {}
        for i, (start, name) in enumerate(merged):
            end = merged[i + 1][0] if i + 1 < len(merged) else None
            row[name] = line[start:end].strip()
        rows.append(row)
    return rows


def human_duration(seconds: float) -> str:
    """docker's (go-units ``HumanDuration``) wording for an age, without " ago": strata's own
    rendering, which ``tests/interop`` checks against go-units' table."""
    from strata.cli.render import human_duration as render_duration

    return render_duration(timedelta(seconds=seconds))


def acceptable_ages(created: datetime, start: float, end: float, *, slack: float = 60) -> set[str]:
    """Every CREATED cell (``"N units ago"``) docker could print for ``created`` when the
    listing ran between the epoch times ``start`` and ``end``, widened by ``slack`` seconds
    so two commands straddling a boundary both match."""
    first = start - slack - created.timestamp()
    last = end + slack - created.timestamp()
    found: set[str] = set()
    t = first
    while t <= last:
        found.add(human_duration(max(t, 0)) + " ago")
        t += 0.5
    found.add(human_duration(max(last, 0)) + " ago")
    return found
