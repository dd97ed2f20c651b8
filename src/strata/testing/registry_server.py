"""Run strata's own registry (``strata registry serve``) as a subprocess, for tests and benches.

``with StrataRegistry(tmp_path) as reg: reg.url  # "http://127.0.0.1:PORT"``.  The server
runs the installed code (``python -m strata``, or ``$STRATA_TEST_COMMAND``), listens on a
free loopback port, and is stopped (SIGTERM, then SIGKILL) on exit.  Storage defaults to a
filesystem root under ``workdir``; pass ``config`` (a distribution-style mapping) to choose
S3, auth or access rules; ``http.addr`` is always set here.  Nothing here imports the
server: it is exercised exactly as a user would run it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import http.client
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strata.testing.tools import Service, http_ready, spawn_listening

__all__ = ["HTTPAnswer", "StrataRegistry", "http_request", "tree_digest"]


@dataclass(frozen=True, slots=True)
class HTTPAnswer:
    """A raw HTTP answer: status, headers (lower-cased names) and the whole body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    @property
    def error_codes(self) -> list[str]:
        """The spec error codes of an error body (``[]`` if it has none)."""
        try:
            return [e["code"] for e in self.json()["errors"]]
        except (ValueError, KeyError, TypeError):
            return []


def http_request(
    base_url: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> HTTPAnswer:
    """Send one request exactly as given (the path is not normalised or re-encoded).

    Args:
        base_url: ``http://host:port``.
        method: the HTTP method.
        path: the raw request target (``/v2/a/../b/tags/list`` is sent as is).
        body: the request body (``Content-Length`` is set from it).
        headers: extra headers.
        timeout: seconds.
    """
    parsed = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        sent = {k.lower() for k in (headers or {})}
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if body is not None and "content-length" not in sent:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return HTTPAnswer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file under ``root`` (for "nothing on disk
    changed" checks)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            with contextlib.suppress(FileNotFoundError):
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


class StrataRegistry(Service):
    """``strata registry serve`` on a free 127.0.0.1 port.

    Attributes:
        workdir: where its config, log and (by default) storage live.
        storage: the filesystem storage root (when the config does not choose another).
        workers: how many serving processes (``--workers``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        config: Mapping[str, object] | None = None,
        workers: int = 1,
        start_timeout: float = 30,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.workers = workers
        self.start_timeout = start_timeout
        self.extra_args = extra_args
        self.port = 0
        self._config: dict[str, object] = copy.deepcopy(dict(config or {}))
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = workdir / "registry.log"
        self.config_path = workdir / "config.json"

    @property
    def address(self) -> str:
        """``host:port`` to put in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL (``http://127.0.0.1:PORT``)."""
        return f"http://{self.address}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def log(self) -> str:
        """Everything the server wrote (access log and errors) so far."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def _command(self) -> list[str]:
        override = os.environ.get("STRATA_TEST_COMMAND")
        base = shlex.split(override) if override else [sys.executable, "-m", "strata"]
        return [
            *base,
            "registry",
            "serve",
            "--config",
            str(self.config_path),
            "--listen",
            self.address,
            "--workers",
            str(self.workers),
            *self.extra_args,
        ]

    def start(self) -> None:
        """Start the server and wait until ``GET /v2/`` answers (200 or 401).

        Raises:
            ToolError: it exited or did not answer (after three tries on fresh ports).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self._config)
        storage = config.setdefault("storage", {})
        assert isinstance(storage, dict)
        if not any(k not in ("delete", "maintenance", "cache", "redirect") for k in storage):
            storage["filesystem"] = {"rootdirectory": str(self.storage)}

        def command(port: int) -> list[str]:
            self.port = port
            http = config.setdefault("http", {})
            assert isinstance(http, dict)
            http["addr"] = self.address
            self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
            return self._command()

        self._proc, self.port = spawn_listening(
            command, lambda port: http_ready(f"http://127.0.0.1:{port}/v2/", accept=(200, 401)),
            log=self._log, what="strata registry", timeout=self.start_timeout)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM the server (it finishes in-flight requests), SIGKILL after ``timeout``.

        Returns:
            Its exit status, or ``None`` if it was not running.  Idempotent.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
        self._reap_group(proc.pid)
        return rc

    def kill(self) -> None:
        """SIGKILL the server and its workers at once (a crash), and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._reap_group(proc.pid)

    @staticmethod
    def _reap_group(pgid: int) -> None:
        """Make sure no worker of the group outlives the server (SIGKILL stragglers)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

