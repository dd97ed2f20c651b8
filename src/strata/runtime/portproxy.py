"""The userland proxy behind ``-p``: host sockets forwarded to a container's address (TCP, UDP).

One process per container (``python -m strata.runtime.portproxy --container ID ROUTES``),
started by :mod:`strata.runtime.network` with the listening sockets already bound and passed
as inherited file descriptors, so the proxy never binds anything itself and needs no
privileges beyond connecting to the container.  ``ROUTES`` is a JSON list of
``{"fd": N, "protocol": "tcp"|"udp", "target": [IP, PORT]}``.

TCP: every accepted connection gets its own connection to the target; bytes are copied both
ways and half-closes are passed on.  UDP: each client address gets its own socket towards the
target (so replies find their way back), dropped after :data:`UDP_IDLE` seconds of silence, as
docker's proxy does.  The process runs until it is killed (network teardown).

What it must not do: import anything beyond the standard library (it starts on every
``run -p``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
from typing import Any, cast

__all__ = ["UDP_IDLE", "main", "serve"]

#: Seconds a UDP client may stay silent before its upstream socket is closed.
UDP_IDLE = 90.0
_CHUNK = 65536


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _serve_tcp(sock: socket.socket, target: tuple[str, int]) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
        finally:
            for w in (client_w, up_w):
                w.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await w.wait_closed()

    server = await asyncio.start_server(handle, sock=sock)
    async with server:
        await server.serve_forever()


class _Upstream(asyncio.DatagramProtocol):
    """The socket towards the target for one UDP client."""

    def __init__(self, downstream: asyncio.DatagramTransport, client: Any) -> None:
        self.downstream = downstream
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.last = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.last = asyncio.get_running_loop().time()
        self.downstream.sendto(data, self.client)


class _Downstream(asyncio.DatagramProtocol):
    """The published UDP socket: a datagram from a client goes out on its own upstream."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.transport: asyncio.DatagramTransport | None = None
        self.upstreams: dict[Any, _Upstream] = {}
        self.pending: dict[Any, list[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        up = self.upstreams.get(addr)
        if up is not None and up.transport is not None:
            up.last = asyncio.get_running_loop().time()
            up.transport.sendto(data)
            return
        if addr in self.pending:
            self.pending[addr].append(data)
            return
        self.pending[addr] = [data]
        asyncio.get_running_loop().create_task(self._open(addr))

    async def _open(self, addr: Any) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        downstream = self.transport
        try:
            _, up = await loop.create_datagram_endpoint(
                lambda: _Upstream(downstream, addr), remote_addr=self.target)
        except OSError:
            self.pending.pop(addr, None)
            return
        self.upstreams[addr] = up
        for data in self.pending.pop(addr, []):
            assert up.transport is not None
            up.transport.sendto(data)

    async def expire(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(UDP_IDLE / 3)
            now = loop.time()
            for addr, up in list(self.upstreams.items()):
                if now - up.last > UDP_IDLE and up.transport is not None:
                    up.transport.close()
                    del self.upstreams[addr]


async def _serve_udp(sock: socket.socket, target: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: _Downstream(target), sock=sock)
    await proto.expire()


async def serve(routes: list[dict[str, Any]]) -> None:
    """Forward every route until cancelled.

    Args:
        routes: ``{"fd", "protocol", "target": [ip, port]}`` items; the fds are bound
            sockets (IPv4 or IPv6; TCP ones listening) that this process owns from now on.
    """
    tasks = []
    for route in routes:
        proto = str(route["protocol"])
        sock = socket.socket(fileno=int(route["fd"]))  # family and type from the socket
        sock.setblocking(False)
        target = (str(route["target"][0]), int(route["target"][1]))
        serve_one = _serve_tcp if proto == "tcp" else _serve_udp
        tasks.append(asyncio.ensure_future(serve_one(sock, target)))
    await asyncio.gather(*tasks)


def main(argv: list[str] | None = None) -> None:
    """The proxy process's entry point."""
    parser = argparse.ArgumentParser(prog="strata-portproxy")
    parser.add_argument("--container", required=True, help="the container's ID (for ps)")
    parser.add_argument("routes", help="JSON list of routes")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    asyncio.run(serve(json.loads(args.routes)))


if __name__ == "__main__":
    main()
