"""Container networking: ``--network none|host|bridge`` and published ports (``-p``).

* ``none``: the container gets a network namespace of its own with only ``lo`` (the runtime
  creates it; nothing here).
* ``host``: no network namespace: the container shares the host's interfaces.
* ``bridge`` (the default, as docker's): strata creates the container's network namespace
  itself, as a bind-mounted namespace file ``ROOT/containers/ID/netns`` that both runtimes
  join by path (spec ``linux.namespaces[{type: network, path: ...}]``).  A veth pair links it
  to the host bridge ``strata0`` (gateway ``.1`` of a private /16, 172.29.0.0/16 unless a host
  route already uses it): ``eth0`` inside gets an address from the pool, a default route via
  the gateway; outbound traffic is masqueraded by iptables rules in strata's own ``STRATA``
  chains (nat ``POSTROUTING`` and filter ``FORWARD`` jump to them; the rules are added once,
  idempotently, when the bridge is created, and like docker's ``docker0`` the bridge and its
  rules stay when the last container goes).  The container's ``/etc/hosts`` gets its address
  and hostname, as docker writes it.
* ``-p``: published ports are served by a userland proxy (:mod:`strata.runtime.portproxy`),
  one process per container whose listening sockets strata binds itself before the container
  starts (so a port in use fails the start with docker's message and ``-p 80`` learns its
  random host port at once); a mapping without an address listens on ``0.0.0.0`` and, where
  the host has IPv6, on ``::`` (as docker's ``0.0.0.0:8080->80/tcp, :::8080->80/tcp``).  Its
  pid is kept in the container directory and it is killed at teardown.

The address pool belongs to the bridge, which is a host resource shared by every strata store
root on the machine: it is kept in ``/run/strata/network`` (a JSON file under an ``flock``),
which lives exactly as long as the bridge (both vanish at reboot).  Each allocation names the
container directory it belongs to; allocations whose directory is gone (a store removed, a
strata killed with -9 and the container removed since) are reclaimed at the next allocation.

Per container start no process is started: the namespace is made in-process (``unshare``
+ bind mount + ``setns`` back), the veth pair in one rtnetlink request (host end up on the
bridge, ``eth0`` with docker's MAC ``02:42:<ip>`` created inside), and ``eth0``'s address,
``lo`` and the default route with the classic ioctls from inside the namespace (about 5 ms
in all).  Teardown only unmounts the namespace file (the kernel deletes the veth pair with
it, asynchronously); a veth that outlives it (another mount namespace holding a copy of the
mount) is deleted by a later allocation.  iproute2's ``ip`` and ``iptables`` (Debian's) are
used once, to create the bridge and its rules, and as a fallback for kernels refusing the
one-request veth.  pyroute2 would do the same netlink work but costs more to import than
all of this takes.

What it must not do: touch the container's rootfs (the runtime mounts it) or its records.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from strata.errors import AlreadyExists, InvalidArgument, NotSupported, StrataError

__all__ = [
    "BRIDGE",
    "DEFAULT_SUBNET",
    "MODES",
    "NetworkAttachment",
    "NetworkOptions",
    "PortMapping",
    "attachment_of",
    "bridge_subnet",
    "netns_path",
    "parse_publish",
    "reclaim",
    "save_options",
    "setup",
    "spec_namespace",
    "teardown",
]

#: The network modes ``--network`` accepts.
MODES: tuple[str, ...] = ("bridge", "host", "none")

#: The host bridge every bridged container is attached to.
BRIDGE = "strata0"

#: The bridge's subnet unless a host route overlaps it.
DEFAULT_SUBNET = "172.29.0.0/16"

#: Where the bridge's address pool lives (host-wide; see the module docstring).
STATE_DIR = Path(os.environ.get("STRATA_NETWORK_STATE", "/run/strata/network"))

_OPTIONS_FILE = "network.json"
_ATTACHMENT_FILE = "network-attachment.json"
_NETNS_FILE = "netns"
_PROXY_PID_FILE = "portproxy.pid"
_PROXY_SCRIPT = Path(__file__).with_name("portproxy.py")

_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)  # libc, already loaded (find_library runs ldconfig)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

#: One thread at a time may move itself into another network namespace.
_NS_LOCK = threading.Lock()


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class PortMapping:
    """One ``-p`` mapping.

    Attributes:
        container_port: the port inside the container.
        protocol: ``tcp`` or ``udp``.
        host_ip: the host address to listen on (``""``: every IPv4 address).
        host_port: the host port (0: a free one chosen when the container starts).
    """

    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""
    host_port: int = 0

    def __str__(self) -> str:
        """docker's ``ps`` form: ``0.0.0.0:8080->80/tcp``, ``:::8080->80/tcp``."""
        return f"{self.host_ip or '0.0.0.0'}:{self.host_port}->{self.container_port}/" \
               f"{self.protocol}"

    @property
    def host_address(self) -> str:
        """docker's ``port`` form of the host side: ``0.0.0.0:8080``, ``[::]:8080``."""
        ip = self.host_ip or "0.0.0.0"
        return f"[{ip}]:{self.host_port}" if ":" in ip else f"{ip}:{self.host_port}"

    def to_json(self) -> dict[str, Any]:
        """The mapping as JSON data."""
        return {"container_port": self.container_port, "protocol": self.protocol,
                "host_ip": self.host_ip, "host_port": self.host_port}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortMapping:
        """The mapping from :meth:`to_json` data."""
        return cls(container_port=int(data["container_port"]), protocol=str(data["protocol"]),
                   host_ip=str(data["host_ip"]), host_port=int(data["host_port"]))


_PORT_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def _port_range(text: str, what: str) -> list[int]:
    m = _PORT_RANGE.match(text)
    if not m:
        raise InvalidArgument(f"invalid {what}: {text}")
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else first
    if not (0 < first <= 65535 and first <= last <= 65535):
        raise InvalidArgument(f"invalid {what}: {text}")
    return list(range(first, last + 1))


def parse_publish(spec: str) -> list[PortMapping]:
    """``-p`` as docker reads it: ``[IP:][HOST:]CONTAINER[/PROTO]``, ports or equal ranges.

    ``-p 80`` and ``-p IP::80`` publish on a free host port.

    Raises:
        InvalidArgument: docker's messages for a bad port, protocol or address.
    """
    rest, _, proto = spec.partition("/")
    proto = proto.lower() or "tcp"
    if proto not in ("tcp", "udp"):
        raise InvalidArgument(f"invalid proto: {proto}")
    host_ip = ""
    if rest.startswith("["):  # [::1]:8080:80
        end = rest.find("]")
        if end < 0:
            raise InvalidArgument(f"invalid IP address in publish spec: {spec}")
        host_ip, rest = rest[1:end], rest[end + 1:].removeprefix(":")
        parts = rest.split(":")
        parts = parts if len(parts) == 2 else ["", *parts] if len(parts) == 1 else parts
    else:
        parts = rest.split(":")
        if len(parts) == 3:
            host_ip, parts = parts[0], parts[1:]
        elif len(parts) == 1:
            parts = ["", parts[0]]
        elif len(parts) != 2:
            raise InvalidArgument(f"invalid publish spec: {spec}")
    host_text, container_text = parts
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise InvalidArgument(f"invalid IP address: {host_ip}") from None
    if not container_text:
        raise InvalidArgument(f"no port specified: {spec}<empty>")
    container_ports = _port_range(container_text, "containerPort")
    host_ports = _port_range(host_text, "hostPort") if host_text else [0] * len(
        container_ports)
    if len(host_ports) != len(container_ports):
        raise InvalidArgument(f"invalid ranges specified for container and host Ports: "
                              f"{container_text} and {host_text}")
    return [PortMapping(container_port=c, protocol=proto, host_ip=host_ip, host_port=h)
            for c, h in zip(container_ports, host_ports, strict=True)]


@dataclass(frozen=True, slots=True)
class NetworkOptions:
    """What a container asked for: the mode, its hostname and its published ports."""

    mode: str = "bridge"
    hostname: str = ""
    publish: tuple[PortMapping, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The options as JSON data."""
        return {"mode": self.mode, "hostname": self.hostname,
                "publish": [p.to_json() for p in self.publish]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkOptions:
        """The options from :meth:`to_json` data."""
        return cls(mode=str(data["mode"]), hostname=str(data.get("hostname") or ""),
                   publish=tuple(PortMapping.from_json(p) for p in data.get("publish") or ()))

    @classmethod
    def make(cls, mode: str, hostname: str, publish: Sequence[str], *,
             exposed: Sequence[str] = ()) -> NetworkOptions:
        """Options from ``--network`` and ``-p`` words.

        Args:
            mode: ``--network``.
            hostname: the container's hostname (for ``/etc/hosts``).
            publish: ``-p`` words.
            exposed: ``-P``: the image's exposed ports (``80/tcp``), each published on a
                free host port unless a ``-p`` maps it already.

        Raises:
            InvalidArgument: an unknown mode or a bad ``-p``.
        """
        if mode not in MODES:
            raise InvalidArgument(f'network {mode} not found')
        ports: list[PortMapping] = []
        for item in publish:
            ports.extend(parse_publish(item))
        mapped = {(p.container_port, p.protocol) for p in ports}
        for item in exposed:
            for p in parse_publish(item):
                if (p.container_port, p.protocol) not in mapped:
                    ports.append(p)
        if mode != "bridge":
            ports = []  # docker discards published ports on host and none networks
        return cls(mode=mode, hostname=hostname, publish=tuple(ports))


@dataclass(frozen=True, slots=True)
class NetworkAttachment:
    """What :func:`setup` made for one container start.

    Attributes:
        mode: ``bridge``, ``host`` or ``none``.
        netns: the namespace file (bridge), else None.
        ip_address: the container's address (bridge), else ``""``.
        prefix_len: the subnet's prefix length.
        gateway: the bridge's address.
        veth: the host end of the veth pair.
        mac_address: ``eth0``'s MAC address.
        ports: the published ports, with the host ports actually bound.
        proxy_pid: the port proxy's pid (0: none).
    """

    mode: str
    netns: Path | None = None
    ip_address: str = ""
    prefix_len: int = 0
    gateway: str = ""
    veth: str = ""
    mac_address: str = ""
    ports: tuple[PortMapping, ...] = ()
    proxy_pid: int = 0

    def to_json(self) -> dict[str, Any]:
        """The attachment as JSON data."""
        return {"mode": self.mode, "netns": str(self.netns) if self.netns else None,
                "ip_address": self.ip_address, "prefix_len": self.prefix_len,
                "gateway": self.gateway, "veth": self.veth, "mac_address": self.mac_address,
                "ports": [p.to_json() for p in self.ports], "proxy_pid": self.proxy_pid}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkAttachment:
        """The attachment from :meth:`to_json` data."""
        return cls(mode=str(data["mode"]),
                   netns=Path(data["netns"]) if data.get("netns") else None,
                   ip_address=str(data.get("ip_address") or ""),
                   prefix_len=int(data.get("prefix_len") or 0),
                   gateway=str(data.get("gateway") or ""), veth=str(data.get("veth") or ""),
                   mac_address=str(data.get("mac_address") or ""),
                   ports=tuple(PortMapping.from_json(p) for p in data.get("ports") or ()),
                   proxy_pid=int(data.get("proxy_pid") or 0))


# --------------------------------------------------------------------------- files


def netns_path(container_dir: Path) -> Path:
    """The bridge-mode network namespace file of a container."""
    return container_dir / _NETNS_FILE


def spec_namespace(mode: str, container_dir: Path) -> dict[str, str] | None:
    """The spec's network namespace entry for ``mode`` (None: share the host's)."""
    if mode == "host":
        return None
    if mode == "bridge":
        return {"type": "network", "path": str(netns_path(container_dir))}
    return {"type": "network"}


def save_options(container_dir: Path, options: NetworkOptions) -> None:
    """Keep a container's network options for every later start.

    With ``host``, the container's ``hosts`` and ``resolv.conf`` become copies of the
    host's, as docker gives a host-network container.
    """
    (container_dir / _OPTIONS_FILE).write_text(json.dumps(options.to_json()))
    if options.mode == "host":
        for name in ("hosts", "resolv.conf"):
            with contextlib.suppress(OSError):
                shutil.copyfile(f"/etc/{name}", container_dir / name)


def _load_options(container_dir: Path) -> NetworkOptions:
    try:
        return NetworkOptions.from_json(json.loads((container_dir / _OPTIONS_FILE).read_text()))
    except FileNotFoundError:
        return NetworkOptions(mode="none")


def attachment_of(container_dir: Path) -> NetworkAttachment | None:
    """The attachment of a started container (None: not attached now)."""
    try:
        return NetworkAttachment.from_json(
            json.loads((container_dir / _ATTACHMENT_FILE).read_text()))
    except (FileNotFoundError, ValueError):
        return None


_HOSTS = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
          "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
          "ff02::2\tip6-allrouters\n")


def _write_hosts(container_dir: Path, ip: str, hostname: str) -> None:
    """docker's ``/etc/hosts``: loopback names, then the container's address and hostname.

    Rewritten in place: the file may already be bind-mounted into a container.
    """
    text = _HOSTS + (f"{ip}\t{hostname}\n" if ip and hostname else "")
    path = container_dir / "hosts"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.truncate()


# --------------------------------------------------------------------------- tools


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if found is None:
        raise NotSupported(f"{name} is not installed (strata's bridge network needs it; "
                           "use --network host or none)")
    return found


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise StrataError(f"{' '.join(argv[:3])} failed: {proc.stderr.strip() or proc.stdout}"
                          + (f" (input: {stdin.strip()!r})" if stdin else ""))
    return proc


def _ip_batch(commands: Sequence[str], *, check: bool = True) -> None:
    _run([_tool("ip"), "-batch", "-"], stdin="\n".join(commands) + "\n", check=check)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    fd = os.open(STATE_DIR / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _in_netns(path: Path) -> Iterator[None]:
    """Run the body (and any process it forks) in the network namespace file ``path``."""
    with _NS_LOCK:
        home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net",
                       os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise StrataError(f"enter network namespace {path}: {os.strerror(err)}")
            try:
                yield
            finally:
                if _libc.setns(home, _CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail
                    os._exit(125)
        finally:
            os.close(target)
            os.close(home)


_SIOCSIFFLAGS = 0x8914
_SIOCGIFFLAGS = 0x8913
_SIOCSIFADDR = 0x8916
_SIOCSIFNETMASK = 0x891C
_SIOCADDRT = 0x890B
_IFF_UP = 0x1
_RTF_UP = 0x1
_RTF_GATEWAY = 0x2


class _SockaddrIn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_ushort),
                ("addr", ctypes.c_ubyte * 4), ("zero", ctypes.c_ubyte * 8)]


class _RtEntry(ctypes.Structure):
    """``struct rtentry`` (net/route.h) for ``SIOCADDRT``."""

    _fields_ = [("rt_pad1", ctypes.c_ulong), ("rt_dst", _SockaddrIn),
                ("rt_gateway", _SockaddrIn), ("rt_genmask", _SockaddrIn),
                ("rt_flags", ctypes.c_ushort), ("rt_pad2", ctypes.c_short),
                ("rt_pad3", ctypes.c_ulong), ("rt_pad4", ctypes.c_void_p),
                ("rt_metric", ctypes.c_short), ("rt_dev", ctypes.c_char_p),
                ("rt_mtu", ctypes.c_ulong), ("rt_window", ctypes.c_ulong),
                ("rt_irtt", ctypes.c_ushort)]


def _sockaddr(address: ipaddress.IPv4Address) -> _SockaddrIn:
    return _SockaddrIn(socket.AF_INET, 0, (ctypes.c_ubyte * 4)(*address.packed))


def _ifreq_addr(name: str, address: ipaddress.IPv4Address) -> bytes:
    return struct.pack("16s", name.encode()) + bytes(_sockaddr(address)) + bytes(8)


def _configure_inside(iface: str, address: ipaddress.IPv4Interface,
                      gateway: ipaddress.IPv4Address) -> None:
    """In the current thread's network namespace: ``lo`` and ``iface`` up, ``address`` on
    ``iface``, a default route via ``gateway`` (classic ioctls: no process to start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock, _SIOCSIFADDR, _ifreq_addr(iface, address.ip))
            fcntl.ioctl(sock, _SIOCSIFNETMASK, _ifreq_addr(iface, address.netmask))
            for name in ("lo", iface):
                ifreq = struct.pack("16sH14x", name.encode(), 0)
                flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, ifreq))[1]
                fcntl.ioctl(sock, _SIOCSIFFLAGS,
                            struct.pack("16sH14x", name.encode(), flags | _IFF_UP))
            route = _RtEntry()
            route.rt_dst = _sockaddr(ipaddress.IPv4Address(0))
            route.rt_genmask = _sockaddr(ipaddress.IPv4Address(0))
            route.rt_gateway = _sockaddr(gateway)
            route.rt_flags = _RTF_UP | _RTF_GATEWAY
            route.rt_dev = iface.encode()
            fcntl.ioctl(sock, _SIOCADDRT, bytes(route))
        except OSError as exc:
            raise StrataError(f"configure {iface} in the container's network namespace: "
                              f"{exc.strerror or exc}") from exc


_RTM_NEWLINK = 16
_RTM_DELLINK = 17
_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_EXCL, _NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MASTER, _IFLA_LINKINFO = 1, 3, 10, 18
_IFLA_NET_NS_FD = 28
_IFLA_INFO_KIND, _IFLA_INFO_DATA, _VETH_INFO_PEER = 1, 2, 1
_IFINFOMSG = "=BxHiII"


def _rtattr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


def _ifinfo(flags: int = 0, change: int = 0) -> bytes:
    return struct.pack(_IFINFOMSG, socket.AF_UNSPEC, 0, 0, flags, change)


def _rtnetlink(msg_type: int, flags: int, body: bytes) -> None:
    """One rtnetlink request, acknowledged.

    Raises:
        OSError: the kernel's answer (errno).
    """
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:  # NETLINK_ROUTE
        sock.bind((0, 0))
        sock.sendall(struct.pack("=IHHII", 16 + len(body), msg_type, flags, 1, 0) + body)
        while True:
            data = sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                if kind == _NLMSG_ERROR and seq == 1:
                    (error,) = struct.unpack_from("=i", data, offset + 16)
                    if error:
                        raise OSError(-error, os.strerror(-error))
                    return
                offset += max((length + 3) & ~3, 16)


def _del_link(name: str) -> None:
    """Delete the link ``name`` (a veth: its peer goes too), as ``ip link del NAME``.

    Raises:
        OSError: the kernel's answer (ENODEV: no such link).
    """
    _rtnetlink(_RTM_DELLINK, _NLM_F_REQUEST | _NLM_F_ACK,
               _ifinfo() + _rtattr(_IFLA_IFNAME, name.encode() + b"\0"))


def _add_veth(host: str, peer: str, mac: str, netns: Path) -> None:
    """The veth pair: ``host`` up on the bridge here, ``peer`` (MAC ``mac``) in ``netns``
    (one rtnetlink request, as ``ip link add HOST master BR up type veth peer name PEER
    address MAC netns FILE``, without starting ``ip``)."""
    master = int(Path(f"/sys/class/net/{BRIDGE}/ifindex").read_text())
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer_info = (_ifinfo() + _rtattr(_IFLA_IFNAME, peer.encode() + b"\0")
                     + _rtattr(_IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
                     + _rtattr(_IFLA_NET_NS_FD, struct.pack("=I", fd)))
        link_info = (_rtattr(_IFLA_INFO_KIND, b"veth")
                     + _rtattr(_IFLA_INFO_DATA, _rtattr(_VETH_INFO_PEER, peer_info)))
        body = (_ifinfo(_IFF_UP, _IFF_UP) + _rtattr(_IFLA_IFNAME, host.encode() + b"\0")
                + _rtattr(_IFLA_MASTER, struct.pack("=I", master))
                + _rtattr(_IFLA_LINKINFO, link_info))
        _rtnetlink(_RTM_NEWLINK, _NLM_F_REQUEST | _NLM_F_ACK | _NLM_F_CREATE | _NLM_F_EXCL,
                   body)
    finally:
        os.close(fd)


def _new_netns(path: Path) -> None:
    """A new network namespace, kept alive by a bind mount on the file ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
    os.close(fd)
    with _NS_LOCK:
        home = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net",
                       os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.unshare(_CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise StrataError(f"create a network namespace: {os.strerror(err)}")
            try:
                src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
                if _libc.mount(src, str(path).encode(), None, _MS_BIND, None) != 0:
                    err = ctypes.get_errno()
                    raise StrataError(f"bind-mount the network namespace on {path}: "
                                      f"{os.strerror(err)}")
            finally:
                if _libc.setns(home, _CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail
                    os._exit(125)
        finally:
            os.close(home)


def _is_mount(path: Path) -> bool:
    target = os.fsencode(os.path.realpath(path)).replace(b" ", b"\\040")
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            return any(line.split()[4] == target for line in f)
    except OSError:
        return False


def _drop_netns(path: Path) -> None:
    while _is_mount(path):
        if _libc.umount2(str(path).encode(), _MNT_DETACH) != 0:
            break
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# --------------------------------------------------------------------------- bridge


def _host_routes() -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return nets
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[0] == BRIDGE:
            continue
        dest = socket.inet_ntoa(struct.pack("<I", int(fields[1], 16)))
        mask = socket.inet_ntoa(struct.pack("<I", int(fields[7], 16)))
        if mask == "0.0.0.0":
            continue  # the default route overlaps everything
        nets.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    return nets


def _choose_subnet() -> ipaddress.IPv4Network:
    used = _host_routes()
    candidates = [DEFAULT_SUBNET] + [f"172.{n}.0.0/16" for n in (30, 31, *range(16, 29))] + [
        f"10.{n}.0.0/16" for n in range(200, 256)]
    for text in candidates:
        net = ipaddress.IPv4Network(text)
        if not any(net.overlaps(u) for u in used):
            return net
    raise StrataError("no free private /16 for the strata bridge: every candidate overlaps a "
                      "host route")


def _bridge_address() -> ipaddress.IPv4Interface | None:
    """The bridge's IPv4 address if it exists."""
    if not os.path.exists(f"/sys/class/net/{BRIDGE}"):
        return None
    proc = _run([_tool("ip"), "-j", "-4", "addr", "show", "dev", BRIDGE], check=False)
    try:
        for iface in json.loads(proc.stdout or "[]"):
            for info in iface.get("addr_info") or ():
                return ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
    except (ValueError, KeyError):
        return None
    return None


def _iptables_rules(subnet: str) -> list[tuple[str, list[str], bool]]:
    """(table, rule, insert-first) the bridge needs, in strata's own chains."""
    return [
        ("nat", ["POSTROUTING", "-j", "STRATA"], False),
        ("nat", ["STRATA", "-s", subnet, "!", "-o", BRIDGE, "-j", "MASQUERADE"], False),
        ("filter", ["FORWARD", "-j", "STRATA"], True),
        ("filter", ["STRATA", "-i", BRIDGE, "-j", "ACCEPT"], False),
        ("filter", ["STRATA", "-o", BRIDGE, "-m", "conntrack", "--ctstate",
                    "RELATED,ESTABLISHED", "-j", "ACCEPT"], False),
    ]


def _ensure_iptables(subnet: str) -> None:
    iptables = _tool("iptables")
    for table in ("nat", "filter"):
        _run([iptables, "-w", "-t", table, "-N", "STRATA"], check=False)  # exists: fine
    for table, rule, first in _iptables_rules(subnet):
        if _run([iptables, "-w", "-t", table, "-C", *rule], check=False).returncode == 0:
            continue
        if first:
            _run([iptables, "-w", "-t", table, "-I", rule[0], "1", *rule[1:]])
        else:
            _run([iptables, "-w", "-t", table, "-A", *rule])


def _ensure_bridge() -> ipaddress.IPv4Interface:
    """The bridge (created with its address and NAT rules when missing); call locked."""
    known = _read_pool().get("gateway")
    if known and os.path.exists(f"/sys/class/net/{BRIDGE}"):
        return ipaddress.IPv4Interface(str(known))  # what the bridge was given (no exec)
    address = _bridge_address()
    if address is not None:
        _remember_gateway(address)
        return address
    net = _choose_subnet()
    address = ipaddress.IPv4Interface(f"{net.network_address + 1}/{net.prefixlen}")
    if not os.path.exists(f"/sys/class/net/{BRIDGE}"):
        _ip_batch([f"link add {BRIDGE} type bridge"], check=False)
    _ip_batch([f"addr replace {address} dev {BRIDGE}", f"link set {BRIDGE} up"])
    with contextlib.suppress(OSError):
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        if forward.read_text().strip() != "1":
            forward.write_text("1\n")
    _ensure_iptables(str(net))
    _remember_gateway(address)
    return address


def _remember_gateway(address: ipaddress.IPv4Interface) -> None:
    data = _read_pool()
    if data.get("gateway") != str(address):
        if data.get("subnet") != str(address.network):
            data = {"subnet": str(address.network), "allocations": {}}
        data["gateway"] = str(address)
        _write_pool(data)


def bridge_subnet() -> ipaddress.IPv4Interface:
    """The bridge's gateway address and subnet, creating the bridge if needed.

    Raises:
        NotSupported: iproute2 or iptables is missing.
        StrataError: the kernel refused.
    """
    with _locked():
        return _ensure_bridge()


# --------------------------------------------------------------------------- address pool


def _pool_file() -> Path:
    return STATE_DIR / f"{BRIDGE}.json"


def _read_pool() -> dict[str, Any]:
    try:
        data = json.loads(_pool_file().read_text())
    except (FileNotFoundError, ValueError):
        return {"allocations": {}}
    return data if isinstance(data, dict) else {"allocations": {}}


def _write_pool(data: dict[str, Any]) -> None:
    tmp = _pool_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(_pool_file())


def _new_veth_name() -> str:
    """A fresh name for a start's host-side veth (a restarted container's previous veth may
    still be on its way out)."""
    return f"veth{secrets.token_hex(5)}"


def _reclaim_locked(data: dict[str, Any]) -> list[str]:
    freed = []
    allocations: dict[str, Any] = data.setdefault("allocations", {})
    for ip, owner in list(allocations.items()):
        cdir = Path(str(owner.get("dir", "")))
        if not cdir.is_dir():  # the container (or its whole store) was removed
            veth = str(owner.get("veth") or "")
            if veth and os.path.exists(f"/sys/class/net/{veth}"):
                with contextlib.suppress(OSError):
                    _del_link(veth)
            del allocations[ip]
            freed.append(ip)
    return freed


def reclaim() -> list[str]:
    """Release addresses whose container directory is gone; the released addresses."""
    with _locked():
        data = _read_pool()
        freed = _reclaim_locked(data)
        if freed:
            _write_pool(data)
        return freed


def _allocate(container_dir: Path, gateway: ipaddress.IPv4Interface, veth: str = ""
              ) -> ipaddress.IPv4Address:
    """Take the lowest free address of the bridge's subnet for ``container_dir`` (whose
    host-side veth will be ``veth``); call locked."""
    data = _read_pool()
    if data.get("subnet") != str(gateway.network):
        data = {"subnet": str(gateway.network), "gateway": str(gateway), "allocations": {}}
    _reclaim_locked(data)
    _sweep_veths_locked(data, veth)
    allocations: dict[str, Any] = data["allocations"]
    for ip, owner in allocations.items():
        if owner.get("dir") == str(container_dir):
            owner["veth"] = veth
            _write_pool(data)
            return ipaddress.IPv4Address(ip)
    for host in gateway.network.hosts():
        if host == gateway.ip or str(host) in allocations:
            continue
        allocations[str(host)] = {"dir": str(container_dir), "veth": veth,
                                  "time": time.time()}
        _write_pool(data)
        return host
    raise StrataError(f"no free address left in {gateway.network}")


def _release(container_dir: Path, veth: str | None = None) -> None:
    """Free ``container_dir``'s address; ``veth`` (whose namespace was just dropped) is
    remembered so that a later allocation deletes it should it outlive its namespace."""
    with _locked():
        data = _read_pool()
        allocations: dict[str, Any] = data.get("allocations") or {}
        mine = [ip for ip, o in allocations.items() if o.get("dir") == str(container_dir)]
        for ip in mine:
            del allocations[ip]
        if veth:
            data.setdefault("released_veths", {})[veth] = time.time()
        if mine or veth:
            _write_pool(data)


#: Seconds after which a released veth still present is deleted by the next allocation.
_VETH_GRACE = 2.0


def _sweep_veths_locked(data: dict[str, Any], keep: str) -> None:
    """Delete released veths that outlived their namespace.

    The kernel deletes a veth pair when its namespace goes, but a mount namespace made by
    another process while the container ran holds a copy of the namespace file's mount
    (this host's ``/`` is not a shared mount) and keeps it alive: such leftovers are
    deleted here, off the hot path.  ``keep`` is the veth being set up now.
    """
    released: dict[str, float] = data.get("released_veths") or {}
    released.pop(keep, None)
    now = time.time()
    for name, when in list(released.items()):
        if now - float(when) < _VETH_GRACE:
            continue
        if os.path.exists(f"/sys/class/net/{name}"):
            with contextlib.suppress(OSError):
                _del_link(name)
        del released[name]


# --------------------------------------------------------------------------- setup/teardown


def _mac_of(ip: ipaddress.IPv4Address) -> str:
    """docker's MAC for an address: 02:42 followed by the address's four bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)


def setup(container_dir: Path, record: object | None = None,
          options: NetworkOptions | None = None) -> NetworkAttachment:
    """Make the container's network before its process starts.

    For ``bridge``: the namespace file, the veth pair (``eth0`` inside, on ``strata0``
    outside), an address, the default route, ``/etc/hosts``, and the port proxy.  Anything
    made is undone when a later step fails.  Calling it again for a started container first
    tears the old attachment down.

    Args:
        container_dir: ``ROOT/containers/ID``.
        record: the container's record (unused: everything is in ``container_dir``; kept
            for the runtime team's hook signature).
        options: the network options (default: those saved by :func:`save_options`).

    Returns:
        The attachment (also kept in the container directory for ``port``/``ps``).

    Raises:
        AlreadyExists: a published host port is in use (docker's message).
        NotSupported: iproute2/iptables missing.
        StrataError: the kernel refused.
    """
    if not isinstance(options, NetworkOptions):
        options = _load_options(container_dir)
    if attachment_of(container_dir) is not None or netns_path(container_dir).exists():
        teardown(container_dir)
    if options.mode != "bridge":
        attachment = NetworkAttachment(mode=options.mode)
        _save_attachment(container_dir, attachment)
        return attachment
    try:
        attachment = _setup_bridge(container_dir, options)
    except BaseException:
        teardown(container_dir)
        raise
    return attachment


def _save_attachment(container_dir: Path, attachment: NetworkAttachment) -> None:
    tmp = container_dir / f"{_ATTACHMENT_FILE}.tmp"
    tmp.write_text(json.dumps(attachment.to_json()))
    tmp.replace(container_dir / _ATTACHMENT_FILE)


def _setup_bridge(container_dir: Path, options: NetworkOptions) -> NetworkAttachment:
    # The published ports are bound first: a port in use fails before anything is made.
    sockets = _bind_ports(options.publish)
    try:
        ns = netns_path(container_dir)
        veth = _new_veth_name()
        # Saved before anything is made: teardown then knows there is something to undo.
        _save_attachment(container_dir, NetworkAttachment(mode="bridge", netns=ns, veth=veth))
        with _locked():
            gateway = _ensure_bridge()
            ip = _allocate(container_dir, gateway, veth)
        attachment = NetworkAttachment(
            mode="bridge", netns=ns, ip_address=str(ip), prefix_len=gateway.network.prefixlen,
            gateway=str(gateway.ip), veth=veth, mac_address=_mac_of(ip),
            ports=tuple(p for p, _ in sockets))
        _save_attachment(container_dir, attachment)  # teardown knows what to undo from here
        _new_netns(ns)
        try:
            _add_veth(veth, "eth0", attachment.mac_address, ns)
        except OSError:  # an older kernel refusing part of it: iproute2 does it in steps
            if os.path.exists(f"/sys/class/net/{veth}"):
                with contextlib.suppress(OSError):
                    _del_link(veth)
            _ip_batch([f"link add {veth} type veth peer name eth0 address "
                       f"{attachment.mac_address} netns {ns}",
                       f"link set {veth} master {BRIDGE} up"])
        with _in_netns(ns):
            _configure_inside("eth0", ipaddress.IPv4Interface(f"{ip}/{attachment.prefix_len}"),
                              gateway.ip)
        _write_hosts(container_dir, str(ip), options.hostname)
        if sockets:
            pid = _start_proxy(container_dir, str(ip), sockets)
            attachment = replace(attachment, proxy_pid=pid)
            _save_attachment(container_dir, attachment)
        return attachment
    finally:
        for _, s in sockets:
            s.close()


def _bind_one(p: PortMapping, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in p.host_ip else socket.AF_INET
    kind = socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if p.protocol == "tcp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((p.host_ip or "0.0.0.0", port))
        if p.protocol == "tcp":
            s.listen(128)
    except BaseException:
        s.close()
        raise
    return s


def _bind_ports(ports: Sequence[PortMapping]) -> list[tuple[PortMapping, socket.socket]]:
    """Listening sockets for ``ports``, as docker binds them: a mapping on every address
    (no IP given) listens on ``0.0.0.0`` and, where the host has IPv6, on ``::`` at the
    same port.

    Raises:
        AlreadyExists: a port is in use (docker's message).
    """
    out: list[tuple[PortMapping, socket.socket]] = []
    try:
        for p in ports:
            try:
                s = _bind_one(p, p.host_port)
            except OSError as exc:
                where = f"[{p.host_ip}]" if ":" in p.host_ip else p.host_ip or "0.0.0.0"
                raise AlreadyExists(
                    f"driver failed programming external connectivity: Bind for "
                    f"{where}:{p.host_port} failed: "
                    + ("port is already allocated" if exc.errno == 98 else
                       (exc.strerror or str(exc)).lower())) from exc
            bound = replace(p, host_port=s.getsockname()[1])
            out.append((bound, s))
            if p.host_ip == "" and socket.has_ipv6:
                v6 = replace(bound, host_ip="::")
                try:
                    out.append((v6, _bind_one(v6, bound.host_port)))
                except OSError:
                    pass  # no IPv6 here (or that port taken on it): IPv4 only, as docker
    except BaseException:
        for _, s in out:
            s.close()
        raise
    return out


def _start_proxy(container_dir: Path, ip: str,
                 sockets: Sequence[tuple[PortMapping, socket.socket]]) -> int:
    routes = [{"fd": s.fileno(), "protocol": p.protocol, "target": [ip, p.container_port]}
              for p, s in sockets]
    # Run as a plain script (standard library only, no site): it starts in a few ms.
    argv = [sys.executable, "-I", "-S", str(_PROXY_SCRIPT), "--container", container_dir.name,
            json.dumps(routes)]
    with open(os.devnull, "r+b") as null:
        proc = subprocess.Popen(argv, stdin=null, stdout=null, stderr=null,
                                pass_fds=[s.fileno() for _, s in sockets],
                                start_new_session=True)
    (container_dir / _PROXY_PID_FILE).write_text(f"{proc.pid}\n")
    # The proxy outlives this process; the supervisor or a later teardown reaps/kills it.
    _forget(proc)
    return proc.pid


def _forget(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``subprocess`` from warning about (or waiting for) a child we leave running."""
    proc.returncode = 0


def _proxy_is(pid: int, container_id: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(_PROXY_SCRIPT) in cmdline and container_id.encode() in cmdline


def _kill_proxy(container_dir: Path) -> None:
    pid_file = container_dir / _PROXY_PID_FILE
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    if _proxy_is(pid, container_dir.name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not _proxy_is(pid, container_dir.name):
                break
            time.sleep(0.005)
    pid_file.unlink(missing_ok=True)


def teardown(container_dir: Path) -> None:
    """Undo :func:`setup` (idempotent; safe after a crash or a partial setup): kill the port
    proxy, delete the veth, drop the namespace file, release the address."""
    if not ((container_dir / _ATTACHMENT_FILE).exists() or netns_path(container_dir).exists()
            or (container_dir / _PROXY_PID_FILE).exists()):
        return  # never attached, or already torn down
    attached = attachment_of(container_dir)
    _kill_proxy(container_dir)
    ns = netns_path(container_dir)
    veth = attached.veth if attached is not None else ""
    released: str | None = None
    if ns.exists():
        # The veth pair goes with the namespace (the kernel deletes it, asynchronously,
        # once the last process and this mount have left): no deletion to wait for here.
        _drop_netns(ns)
        released = veth or None
    elif veth and os.path.exists(f"/sys/class/net/{veth}"):
        with contextlib.suppress(OSError):
            _del_link(veth)
    _release(container_dir, released)
    (container_dir / _ATTACHMENT_FILE).unlink(missing_ok=True)

