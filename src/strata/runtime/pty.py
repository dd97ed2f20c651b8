"""Terminals for ``-t``: the container's pty, handing its master over, and relaying it.

The pty is made *inside* the container, from its own ``/dev/pts`` (so ``tty`` prints
``/dev/pts/0``), as runc does: the container's init opens ``/dev/ptmx`` after
``pivot_root``, sends the master to whoever started it over a Unix socket
(``SCM_RIGHTS``; runc's ``--console-socket``), makes the slave its controlling terminal and
its stdin/stdout/stderr.  The receiving side is either the foreground ``run -it`` (which
relays the caller's terminal in raw mode and forwards window-size changes, :func:`relay`) or
the supervisor of a detached ``-dt`` container (which logs what the master reads).

This module does terminal plumbing only; it neither starts containers nor writes records.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import fcntl
import os
import select
import signal
import socket
import struct
import tempfile
import termios
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "ConsoleSocket",
    "copy_winsize",
    "raw_mode",
    "recv_fd",
    "relay",
    "send_fd",
    "set_winsize",
    "setup_console",
    "winch_pipe",
    "write_all",
]

_TIOCSPTLCK = 0x40045431
_TIOCGPTN = 0x80045430
_MS_BIND = 4096
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes
_libc = ctypes.CDLL(None, use_errno=True)  # libc, already loaded (find_library runs ldconfig)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]


def send_fd(sock: int, fd: int, name: str = "pty") -> None:
    """Send ``fd`` over the Unix socket ``sock`` (``SCM_RIGHTS``)."""
    s = socket.socket(fileno=os.dup(sock))
    try:
        s.sendmsg([name.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                     array.array("i", [fd]))])
    finally:
        s.close()


def recv_fd(sock: socket.socket) -> int:
    """Receive one file descriptor sent with ``SCM_RIGHTS`` on ``sock``.

    Raises:
        OSError: the peer closed without sending one (ECONNRESET).
    """
    fds = array.array("i")
    _, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if not fds:
        raise ConnectionResetError("the container sent no terminal")
    for extra in fds[1:]:
        os.close(extra)
    os.set_inheritable(fds[0], False)
    return fds[0]


def setup_console(sock: int, uid: int, *, bind_console: bool = True) -> None:
    """In the container's init, after ``pivot_root`` (or in an exec'd process, in the
    container's namespaces): make a pty from ``/dev/ptmx``, send its master over ``sock``,
    bind the slave on ``/dev/console`` (``bind_console``), and make the slave the
    controlling terminal and fds 0, 1 and 2 of this process."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, struct.pack("I", 0)))[0]
    slave_path = f"/dev/pts/{number}"
    slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
    os.fchown(slave, uid, -1)
    send_fd(sock, master)
    os.close(master)
    os.close(sock)
    with contextlib.suppress(OSError):
        if not bind_console:
            raise OSError("no console wanted")
        if not os.path.lexists("/dev/console"):
            os.close(os.open("/dev/console", os.O_CREAT | os.O_WRONLY, 0o600))
        if _libc.mount(slave_path.encode(), b"/dev/console", None, _MS_BIND, None) != 0:
            raise OSError(ctypes.get_errno(), "bind the terminal on /dev/console")
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for target in (0, 1, 2):
        os.dup2(slave, target)
    if slave > 2:
        os.close(slave)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """Set the window size of the terminal ``fd``."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def copy_winsize(source: int, dest: int) -> None:
    """Give the terminal ``dest`` the window size of the terminal ``source`` (if it is one)."""
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dest, termios.TIOCSWINSZ, size)


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal ``fd`` in raw mode for the duration (nothing if it is not a terminal)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def winch_pipe() -> Iterator[int]:
    """A pipe's read end that becomes readable at each ``SIGWINCH`` for the duration (call from
    the main thread: it installs the signal handler)."""
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def winch(_signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.write(wake_w, b"w")

    old = signal.signal(signal.SIGWINCH, winch)
    try:
        yield wake_r
    finally:
        signal.signal(signal.SIGWINCH, old)
        os.close(wake_r)
        os.close(wake_w)


def relay(master: int, *, stdin: int | None, stdout: int, winch: int | None = None,
          done: Callable[[], bool] = lambda: False,
          tee: Callable[[bytes], None] | None = None) -> None:
    """Copy ``stdin`` to the pty ``master`` and ``master`` to ``stdout`` until the pty's
    slave side is closed by every process (EIO) or ``done()``; ``stdin`` None: nothing is
    sent.  When ``winch`` (from :func:`winch_pipe`) is readable the caller's window size is
    copied to the pty again (it is copied once at the start); ``tee`` also gets what the pty
    prints.  Closes ``master``."""
    term = stdin if stdin is not None and os.isatty(stdin) else (
        stdout if os.isatty(stdout) else None)
    if term is not None:
        copy_winsize(term, master)
    reading = [master] + ([winch] if winch is not None else []) + (
        [stdin] if stdin is not None else [])
    try:
        while True:
            try:
                ready, _, _ = select.select(reading, [], [], 0.2)
            except InterruptedError:
                continue
            if not ready and done():
                break
            if winch is not None and winch in ready:
                with contextlib.suppress(OSError):
                    os.read(winch, 64)
                if term is not None:
                    copy_winsize(term, master)
            if stdin is not None and stdin in ready:
                try:
                    data = os.read(stdin, 65536)
                except OSError:
                    data = b""
                if not data:
                    reading.remove(stdin)
                    with contextlib.suppress(OSError):
                        os.write(master, b"\x04")  # EOF for the canonical-mode reader
                else:
                    write_all(master, data)
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave fd is closed
                    break
                if not data:
                    break
                write_all(stdout, data)
                if tee is not None:
                    tee(data)
    finally:
        os.close(master)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (dropped if ``fd`` is closed or broken)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return
        view = view[n:]


class ConsoleSocket:
    """A listening Unix socket for ``runc --console-socket``: :meth:`receive` accepts the
    runtime's connection and returns the pty master it sends.

    Args:
        path: where to bind (removed again by :meth:`close`); a path too long for a Unix
            socket address is replaced by one in a new temporary directory.
    """

    def __init__(self, path: Path) -> None:
        self._tmp: str | None = None
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            self._tmp = tempfile.mkdtemp(prefix="strata-console-")
            path = Path(self._tmp) / "console.sock"
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(1)

    def receive(self, timeout: float = 30) -> int:
        """The master fd the runtime sends.

        Raises:
            OSError: nothing came within ``timeout`` seconds (TimeoutError) or the peer
                sent no descriptor.
        """
        self._sock.settimeout(timeout)
        conn, _ = self._sock.accept()
        with conn:
            return recv_fd(conn)

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._tmp)
