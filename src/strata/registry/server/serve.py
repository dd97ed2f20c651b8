"""Running the registry: the listening socket(s), worker processes, access log and shutdown.

Owns the process side of ``strata registry serve``: one asyncio server per
process; with ``workers > 1`` the parent forks that many children that each bind the same
address with ``SO_REUSEPORT`` (the kernel spreads connections) and forwards SIGTERM/SIGINT
to them.  SIGTERM stops accepting connections and lets in-flight requests finish (up to
``shutdown_timeout`` seconds) before the process exits.  Each access is written as one JSON
line to the access log stream the caller gives (the CLI passes stderr or a file).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TextIO

import uvloop
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from strata.errors import InvalidArgument, StrataError, Unavailable
from strata.registry.server.app import build_app
from strata.registry.server.auth import make_authorizer
from strata.registry.server.config import ServerConfig
from strata.registry.server.metrics import Metrics
from strata.registry.server.storage.base import open_driver

__all__ = ["ServeOptions", "parse_listen", "serve"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How to run the server besides its configuration.

    Attributes:
        workers: serving processes (``SO_REUSEPORT`` when more than one).
        access_log: where access lines go (``None``: nowhere).
        shutdown_timeout: seconds in-flight requests get after SIGTERM.
        ready: called (in each worker) once the socket listens.
        event_loop: ``"asyncio"`` (the default: its transports send blob files with
            ``os.sendfile``, zero-copy) or ``"uvloop"`` (faster for small requests, but it
            has no ``sendfile``, so blob bodies are copied through user space).
    """

    workers: int = 1
    access_log: TextIO | None = None
    shutdown_timeout: float = 30.0
    ready: Callable[[str], None] | None = None
    event_loop: str = "asyncio"


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces) -> (host, port).

    Raises:
        InvalidArgument: not of that form or the port is out of range.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidArgument(f"invalid listen address {text!r}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def _access_logger(sink: TextIO | None, metrics: Metrics) -> type[AbstractAccessLogger]:
    class AccessLog(AbstractAccessLogger):
        """One JSON line per request, and the request counted in the metrics."""

        def log(self, request: BaseRequest, response: StreamResponse, time_: float) -> None:
            route = str(request.get("route", "other"))
            received = request.content.total_bytes
            sent = response.body_length
            metrics.observe(route=route, method=request.method, status=response.status,
                            seconds=time_, sent=sent, received=received)
            if sink is None:
                return
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "remote": request.remote,
                "method": request.method,
                "path": request.rel_url.raw_path,
                "status": response.status,
                "route": route,
                "repository": request.get("repository", ""),
                "user": request.get("user") or "",
                "error": request.get("error_code", ""),
                "bytes_in": received,
                "bytes_out": sent,
                "duration_ms": round(time_ * 1000, 3),
                "user_agent": request.headers.get("User-Agent", ""),
            }
            try:
                sink.write(json.dumps(entry) + "\n")
                sink.flush()
            except (OSError, ValueError):
                pass

        @property
        def enabled(self) -> bool:
            return True

    return AccessLog


def _tls(config: ServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context from ``http.tls`` (distribution's keys), or None for plain HTTP.

    Raises:
        InvalidArgument: the certificate or key cannot be loaded.
    """
    if config.tls_certificate is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_certificate, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(
            f"registry config: cannot load http.tls certificate {config.tls_certificate} "
            f"and key {config.tls_key}: {exc}"
        ) from exc
    return context


async def _run(config: ServerConfig, options: ServeOptions, *, reuse_port: bool) -> None:
    host, port = parse_listen(config.addr)
    driver = open_driver(config.storage_driver, config.storage_options)
    metrics = Metrics()
    app = build_app(config, driver, authorizer=make_authorizer(config), metrics=metrics)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=_access_logger(options.access_log if config.access_log else None, metrics),
        access_log=_log,
        shutdown_timeout=options.shutdown_timeout,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(_signum: int, _frame: object) -> None:
        # A plain handler (not loop.add_signal_handler, which puts back SIG_DFL when the loop
        # closes): a second SIGTERM during or after the graceful stop must not kill us.
        if not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        site = web.TCPSite(
            runner, host, port, reuse_port=reuse_port or None, backlog=1024, ssl_context=_tls(config)
        )
        try:
            await site.start()
        except OSError as exc:
            raise Unavailable(f"cannot listen on {host}:{port}: {exc.strerror}", retryable=False) from exc
        if options.ready is not None:
            options.ready(f"{host}:{port}")
        await stop.wait()
        # Graceful: stop accepting, let handlers still receiving or answering finish (aiohttp's
        # own shutdown stops reading request bodies at once, which would cut uploads short),
        # then close the remaining connections.
        for running in list(runner.sites):
            await running.stop()
        deadline = loop.time() + options.shutdown_timeout
        while metrics.in_flight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await runner.cleanup()


def _worker(config: ServerConfig, options: ServeOptions, *, reuse_port: bool) -> None:
    if options.event_loop == "uvloop":
        uvloop.run(_run(config, options, reuse_port=reuse_port))
    else:
        asyncio.run(_run(config, options, reuse_port=reuse_port))


def serve(config: ServerConfig, options: ServeOptions | None = None) -> None:
    """Serve the registry until SIGTERM/SIGINT; blocks.

    Raises:
        InvalidArgument: a bad listen address, driver options or auth files (checked before
            any worker starts).
        NotSupported: an unknown storage driver.
        Unavailable: a worker process failed (it printed why).
    """
    options = options or ServeOptions()
    if options.event_loop not in ("asyncio", "uvloop"):
        raise InvalidArgument(f"unknown event loop {options.event_loop!r} (asyncio or uvloop)")
    parse_listen(config.addr)
    open_driver(config.storage_driver, config.storage_options)  # fail early on bad options
    make_authorizer(config)
    _tls(config)  # fail early on an unreadable certificate or key
    if options.workers <= 1:
        _worker(config, options, reuse_port=False)
        return
    children: list[int] = []
    for _ in range(options.workers):
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _worker(config, replace(options), reuse_port=True)
            except StrataError as exc:
                print(f"Error: registry worker {os.getpid()}: {exc}", file=sys.stderr)
                code = 1
            except BaseException:
                import traceback

                traceback.print_exc(file=sys.stderr)
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    remaining = set(children)
    failed = 0
    while remaining:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid in remaining:
            remaining.discard(pid)
            if os.waitstatus_to_exitcode(status) != 0:
                failed += 1
    if failed:
        raise Unavailable(f"{failed} of {options.workers} registry workers failed (see their errors above)",
                          retryable=False)
