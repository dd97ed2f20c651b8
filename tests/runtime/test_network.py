"""``--network bridge|none|host`` and ``-p`` with the built-in runtime and runc.

Containers that must stay up while the test talks to them run in the foreground under a
``strata run`` child process; each serves what the test needs and exits by itself.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strata.errors import NotFound
from strata.runtime import ContainerStore, network
from strata.testing import tools
from strata.testing.baseimages import BUSYBOX_REF, DEBIAN_REF

RUNTIMES = ("builtin", "runc")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path,
         debian_layout: Path) -> Iterator[Path]:
    """A strata root holding busybox and debian (perl, for a UDP server)."""
    tools.require("runc")
    tools.require("ip")
    tools.require("iptables")
    root = tmp_path_factory.mktemp("network") / "root"
    cli = tools.StrataCLI(root)
    cli("load", "-i", busybox_layout)
    cli("load", "-i", debian_layout)
    yield root
    tools.assert_no_mounts_under(root)


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Strata:
    """``strata`` on the module's root; ``run`` adds ``--runtime``."""

    def __init__(self, root: Path, runtime: str) -> None:
        self.root = root
        self.runtime = runtime
        self.cli = tools.StrataCLI(root)

    def __call__(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.cli(*args, check=check)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("run", "--runtime", self.runtime, *args, check=False)

    def background(self, name: str, *args: str) -> subprocess.Popen[str]:
        """``strata run --name NAME`` in the foreground of a child process (stdout piped)."""
        argv = [sys.executable, "-m", "strata", "--root", str(self.root), "run", "--runtime",
                self.runtime, "--name", name, *args]
        env = {k: v for k, v in os.environ.items() if k != "STRATA_ROOT"}
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture
def strata(root: Path, runtime: str) -> Strata:
    return Strata(root, runtime)


def _finish(proc: subprocess.Popen[str], root: Path, name: str, timeout: float = 60
            ) -> tuple[int, str, str]:
    """Wait for a background ``strata run --name NAME``; on a timeout the container is
    removed (``rm -f``) so that nothing outlives the test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tools.StrataCLI(root)("rm", "-f", name, check=False)
        proc.kill()
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"container {name} did not finish: {out} {err}") from None
    return proc.returncode, out, err


def _container_dir(root: Path, name: str) -> Path:
    """The directory of container ``name`` once ``strata run`` has created it."""
    store = ContainerStore(root / "containers.db")
    found: list[Path] = []

    def created() -> bool:
        try:
            found.append(root / "containers" / store.find(name).id)
        except NotFound:
            return False
        return True

    _wait_for(created, f"container {name}")
    return found[0]


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _proxy_pid(cdir: Path) -> int:
    attachment = network.attachment_of(cdir)
    return attachment.proxy_pid if attachment is not None else 0


def _host_has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


#: Whether published ports also listen on ``::`` here (docker does it where IPv6 exists).
IPV6 = _host_has_ipv6()


def _pool() -> dict[str, dict[str, str]]:
    data = json.loads((network.STATE_DIR / f"{network.BRIDGE}.json").read_text())
    allocations: dict[str, dict[str, str]] = data["allocations"]
    return allocations


def _iptables() -> str:
    return "\n".join(tools.run(["iptables", "-w", "-t", t, "-S"]).stdout for t in ("nat",
                                                                                  "filter"))


# --------------------------------------------------------------------------- modes


def test_bridge_gives_eth0_an_address_a_route_and_hosts_entry(strata: Strata) -> None:
    out = strata.run("--rm", "--hostname", "web1", BUSYBOX_REF, "sh", "-c",
                     "ip -4 -o addr show eth0; ip route; cat /etc/hosts; ls /sys/class/net")
    assert out.returncode == 0, out.stderr
    gateway = network.bridge_subnet()
    m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)", out.stdout)
    assert m, out.stdout
    address = m.group(1)
    assert int(m.group(2)) == gateway.network.prefixlen
    assert address in [str(h) for h in gateway.network.hosts()] and address != str(gateway.ip)
    assert f"default via {gateway.ip} dev eth0" in out.stdout
    assert f"{address}\tweb1" in out.stdout.splitlines()
    assert "127.0.0.1\tlocalhost" in out.stdout.splitlines()
    assert out.stdout.split()[-2:] == ["eth0", "lo"]


def test_bridge_container_pings_the_gateway(strata: Strata) -> None:
    gateway = network.bridge_subnet().ip
    out = strata.run("--rm", BUSYBOX_REF, "ping", "-c", "1", "-W", "5", str(gateway))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 packets received" in out.stdout


def test_bridge_container_reaches_a_host_server_on_the_gateway(strata: Strata) -> None:
    gateway = str(network.bridge_subnet().ip)
    server = socket.socket()
    server.bind((gateway, 0))
    server.listen(1)
    port = server.getsockname()[1]
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            received.append(conn.recv(100))
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\nhost-side")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        # busybox-static's wget crashes resolving non-loopback literals; nc speaks HTTP too.
        out = strata.run("--rm", BUSYBOX_REF, "sh", "-c",
                         f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {gateway} {port}")
    finally:
        thread.join(timeout=15)
        server.close()
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("\n\nhost-side"), out.stdout
    assert received and received[0].startswith(b"GET / HTTP")


def test_two_bridge_containers_reach_each_other_by_address(strata: Strata) -> None:
    name = f"peer-{strata.runtime}"
    server = strata.background(name, "--rm", BUSYBOX_REF, "sh", "-c",
                               "hostname -i; echo pong-from-peer | nc -l -p 7000")
    assert server.stdout is not None
    address = server.stdout.readline().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", address), address
    out = None
    for _ in range(100):
        out = strata.run("--rm", BUSYBOX_REF, "nc", "-w", "5", address, "7000")
        if out.stdout:
            break
        time.sleep(0.1)
    assert out is not None and out.stdout == "pong-from-peer\n", out
    code, _, err = _finish(server, strata.root, name)
    assert code == 0, err


def test_none_has_only_loopback(strata: Strata) -> None:
    out = strata.run("--rm", "--network", "none", BUSYBOX_REF, "sh", "-c",
                     "ls /sys/class/net; ip -4 -o addr; cat /etc/hosts")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "lo"
    assert "inet 127.0.0.1/8" in lines[1]
    assert not any("eth0" in line for line in lines)
    assert not any(re.match(r"172\.|10\.", line) for line in lines)


def test_host_sees_the_hosts_interfaces(strata: Strata) -> None:
    out = strata.run("--rm", "--network", "host", BUSYBOX_REF, "sh", "-c",
                     "ls /sys/class/net | tr '\\n' ' '; echo; hostname")
    assert out.returncode == 0, out.stderr
    names, hostname = out.stdout.splitlines()
    # veths come and go with other containers meanwhile; the rest is the host's set.
    assert {n for n in names.split() if not n.startswith("veth")} == {
        n for n in os.listdir("/sys/class/net") if not n.startswith("veth")}
    assert "eth0" in names.split() and network.BRIDGE in names.split()
    assert hostname == socket.gethostname()


def test_unknown_network_fails_with_125(strata: Strata) -> None:
    out = strata.run("--rm", "--network", "nope", BUSYBOX_REF, "true")
    assert out.returncode == 125
    assert "network nope not found" in out.stderr


# --------------------------------------------------------------------------- ports


def _fetch(port: int, host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        chunks: list[bytes] = []
        while True:
            data = s.recv(4096)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_publish_tcp_port_reaches_the_container(strata: Strata) -> None:
    host_port = tools.free_port()
    name = f"pub-{strata.runtime}"
    server = strata.background(name, "--rm", "-p", f"{host_port}:80", BUSYBOX_REF,
                               "sh", "-c", "echo served-by-$HOSTNAME | nc -l -p 80")
    try:
        cdir = _container_dir(strata.root, name)
        _wait_for(lambda: _proxy_pid(cdir) != 0, "the port proxy")
        port_out = strata("port", name)
        v6_line = f"80/tcp -> [::]:{host_port}\n" if IPV6 else ""
        assert port_out.stdout == f"80/tcp -> 0.0.0.0:{host_port}\n{v6_line}", port_out.stderr
        assert strata("port", name, "80").stdout == f"0.0.0.0:{host_port}\n" + (
            f"[::]:{host_port}\n" if IPV6 else "")
        missing = strata("port", name, "81/tcp")
        assert missing.returncode == 1
        assert f"No public port '81/tcp' published for {name}" in missing.stderr
        ps = tools.parse_table(strata("ps").stdout)
        row = next(r for r in ps if r["NAMES"] == name)
        assert row["PORTS"] == f"0.0.0.0:{host_port}->80/tcp" + (
            f", :::{host_port}->80/tcp" if IPV6 else "")
        body = b""
        for _ in range(200):  # until nc listens inside
            body = _fetch(host_port)
            if body:
                break
            time.sleep(0.05)
        assert body.startswith(b"served-by-")
    finally:
        code, _, err = _finish(server, strata.root, name)
    assert code == 0, err


def test_publish_random_host_port(strata: Strata) -> None:
    name = f"rand-{strata.runtime}"
    server = strata.background(name, "--rm", "-p", "127.0.0.1::80", BUSYBOX_REF,
                               "sh", "-c", "echo random | nc -l -p 80")
    try:
        cdir = _container_dir(strata.root, name)
        _wait_for(lambda: bool(strata("port", name, "80/tcp").stdout), "the mapping")
        text = strata("port", name, "80/tcp").stdout.strip()
        ip, _, port = text.partition(":")
        assert ip == "127.0.0.1" and int(port) > 0
        attachment = network.attachment_of(cdir)
        assert attachment is not None and attachment.ports[0].host_port == int(port)
        body = b""
        for _ in range(200):
            body = _fetch(int(port))
            if body:
                break
            time.sleep(0.05)
        assert body == b"random\n"
    finally:
        code, _, err = _finish(server, strata.root, name)
    assert code == 0, err


_UDP_ECHO = ("use IO::Socket::INET; $|=1; my $s = IO::Socket::INET->new(LocalPort => 5353, "
             "Proto => 'udp') or die $!; print \"ready\\n\"; my $m; $s->recv($m, 512); "
             "$s->send(\"echo:$m\"); print \"got:$m\\n\";")


def test_publish_udp_port_round_trip(strata: Strata) -> None:
    host_port = tools.free_port()
    name = f"udp-{strata.runtime}"
    server = strata.background(name, "--rm", "-p", f"{host_port}:5353/udp", DEBIAN_REF,
                               "perl", "-e", _UDP_ECHO)
    assert server.stdout is not None
    assert server.stdout.readline() == "ready\n"
    reply = b""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        for _ in range(60):
            s.sendto(b"ping", ("127.0.0.1", host_port))
            try:
                reply = s.recv(512)
                break
            except TimeoutError:
                continue
    code, out, err = _finish(server, strata.root, name)
    assert reply == b"echo:ping"
    assert (code, out) == (0, "got:ping\n"), err


def test_publish_port_in_use_fails_with_125_and_leaves_nothing(strata: Strata) -> None:
    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    before = strata("ps", "-aq", "--no-trunc").stdout
    try:
        out = strata.run("--rm", "-p", f"{port}:80", BUSYBOX_REF, "true")
    finally:
        busy.close()
    assert out.returncode == 125
    assert f"Bind for 0.0.0.0:{port} failed: port is already allocated" in out.stderr
    assert strata("ps", "-aq", "--no-trunc").stdout == before
    ours = str(strata.root / "containers")
    assert not [ip for ip, owner in _pool().items() if owner["dir"].startswith(ours)
                and not Path(owner["dir"]).exists()]


@pytest.mark.parametrize(("spec", "message"), [
    ("80/sctp", "invalid proto: sctp"),
    ("abc:80", "invalid hostPort: abc"),
    ("8080:x", "invalid containerPort: x"),
    ("1.2.3:80:80", "invalid IP address: 1.2.3"),
    ("8000-8001:80", "invalid ranges specified for container and host Ports"),
], ids=["proto", "host-port", "container-port", "ip", "ranges"])
def test_bad_publish_spec_fails_with_125(strata: Strata, spec: str, message: str) -> None:
    out = strata.run("--rm", "-p", spec, BUSYBOX_REF, "true")
    assert out.returncode == 125
    assert message in out.stderr


def test_parse_publish_forms() -> None:
    pm = network.PortMapping
    assert network.parse_publish("80") == [pm(80)]
    assert network.parse_publish("8080:80/udp") == [pm(80, "udp", "", 8080)]
    assert network.parse_publish("127.0.0.1:8080:80") == [pm(80, "tcp", "127.0.0.1", 8080)]
    assert network.parse_publish("127.0.0.1::80") == [pm(80, "tcp", "127.0.0.1", 0)]
    assert network.parse_publish("8000-8001:80-81") == [pm(80, "tcp", "", 8000),
                                                        pm(81, "tcp", "", 8001)]
    assert str(pm(80, "tcp", "", 8080)) == "0.0.0.0:8080->80/tcp"


# --------------------------------------------------------------------------- cleanup


def test_nothing_is_left_after_the_container_goes(strata: Strata) -> None:
    rules_before = _iptables()
    name = f"leak-{strata.runtime}"
    host_port = tools.free_port()
    proc = strata.background(name, "-p", f"{host_port}:80", "-p",
                             f"{host_port}:53/udp", BUSYBOX_REF, "sh", "-c",
                             "echo bye | nc -l -p 80")
    cdir = _container_dir(strata.root, name)
    _wait_for(lambda: _proxy_pid(cdir) != 0, "the port proxy")
    attachment = network.attachment_of(cdir)
    assert attachment is not None
    veth, proxy = attachment.veth, attachment.proxy_pid
    assert os.path.exists(f"/sys/class/net/{veth}")
    assert attachment.ip_address in _pool()
    for _ in range(200):
        if _fetch(host_port):
            break
        time.sleep(0.05)
    code, _, err = _finish(proc, strata.root, name)
    assert code == 0, err
    # Stopped: the network is gone, the container is not.  (The kernel deletes the veth
    # pair with the namespace, in the background.)
    _wait_for(lambda: not os.path.exists(f"/sys/class/net/{veth}"), f"{veth} to go", 10)
    assert not os.path.exists(f"/proc/{proxy}") or b"portproxy" not in Path(
        f"/proc/{proxy}/cmdline").read_bytes()
    assert not network.netns_path(cdir).exists()
    assert attachment.ip_address not in _pool() or _pool()[attachment.ip_address]["dir"] != str(
        cdir)
    assert strata("port", name).stdout == ""
    assert cdir.is_dir()
    with socket.socket() as s:  # the host port is free again (TIME_WAIT aside)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", host_port))
        s.listen(1)
    assert strata("rm", name).returncode == 0
    assert not cdir.exists()
    assert _iptables() == rules_before
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(cdir) in line]


def test_reclaim_releases_addresses_of_removed_containers(tmp_path: Path) -> None:
    gone = tmp_path / "containers" / ("f" * 64)
    gone.mkdir(parents=True)
    gateway = network.bridge_subnet()
    with network._locked():
        ip = network._allocate(gone, gateway)
    assert str(ip) in _pool()
    gone.rmdir()
    assert str(ip) in network.reclaim()
    assert str(ip) not in _pool()


def test_kill_9_of_supervisor_and_container_is_reconciled(strata: Strata) -> None:
    """strata and the container killed with -9: the next ``ps`` tears the network down."""
    name = f"k9-{strata.runtime}"
    host_port = tools.free_port()
    started = strata("run", "-d", "--runtime", strata.runtime, "--name", name, "-p",
                     f"{host_port}:80", BUSYBOX_REF, "sleep", "600")
    assert started.returncode == 0, started.stderr
    cdir = strata.root / "containers" / started.stdout.strip()
    _wait_for(lambda: _proxy_pid(cdir) != 0, "the port proxy")
    attachment = network.attachment_of(cdir)
    assert attachment is not None
    record = ContainerStore(strata.root / "containers.db").find(name)
    assert record.pid and record.supervisor_pid
    os.kill(record.supervisor_pid, 9)
    os.kill(record.pid, 9)
    _wait_for(lambda: not os.path.exists(f"/proc/{record.pid}/cmdline") or
              not Path(f"/proc/{record.pid}/cmdline").read_bytes(), "the container to die")
    rows = tools.parse_table(strata("ps", "-a").stdout)
    row = next(r for r in rows if r["NAMES"] == name)
    assert row["STATUS"].startswith("Exited") and row["PORTS"] == ""
    assert network.attachment_of(cdir) is None
    assert not network.netns_path(cdir).exists()
    assert attachment.ip_address not in _pool() or _pool()[attachment.ip_address]["dir"] != str(
        cdir)
    assert not os.path.exists(f"/proc/{attachment.proxy_pid}/cmdline") or b"portproxy" not in \
        Path(f"/proc/{attachment.proxy_pid}/cmdline").read_bytes()
    _wait_for(lambda: not os.path.exists(f"/sys/class/net/{attachment.veth}"),
              f"{attachment.veth} to go", 10)
    assert strata("rm", name).returncode == 0


def test_published_port_answers_on_ipv6_loopback_where_there_is_one(strata: Strata) -> None:
    host_port = tools.free_port()
    name = f"v6-{strata.runtime}"
    server = strata.background(name, "--rm", "-p", f"{host_port}:80", BUSYBOX_REF, "sh", "-c",
                               "echo over-ipv6 | nc -l -p 80")
    try:
        cdir = _container_dir(strata.root, name)
        _wait_for(lambda: _proxy_pid(cdir) != 0, "the port proxy")
        attachment = network.attachment_of(cdir)
        assert attachment is not None
        assert [p.host_ip for p in attachment.ports] == (["", "::"] if IPV6 else [""])
        # An IPv4-only host publishes on 0.0.0.0 alone (docker too).
        host = "::1" if IPV6 else "127.0.0.1"
        body = b""
        for _ in range(200):
            try:
                body = _fetch(host_port, host)
            except ConnectionRefusedError:
                body = b""
            if body:
                break
            time.sleep(0.05)
        assert body == b"over-ipv6\n"
    finally:
        code, _, err = _finish(server, strata.root, name)
    assert code == 0, err


def test_a_released_veth_that_outlives_its_namespace_is_deleted_later(tmp_path: Path
                                                                      ) -> None:
    stale = "vethstrataR3t"
    tools.run(["ip", "link", "add", stale, "type", "veth", "peer", "name", f"{stale}p"])
    try:
        owner = tmp_path / "containers" / ("e" * 64)
        owner.mkdir(parents=True)
        network._release(owner, stale)  # as teardown records it
        data = json.loads((network.STATE_DIR / f"{network.BRIDGE}.json").read_text())
        data["released_veths"][stale] -= 60  # released a minute ago
        network._write_pool(data)
        gateway = network.bridge_subnet()
        with network._locked():
            ip = network._allocate(owner, gateway)
        assert not os.path.exists(f"/sys/class/net/{stale}")
        assert stale not in json.loads((network.STATE_DIR / f"{network.BRIDGE}.json")
                                       .read_text()).get("released_veths", {})
        network._release(owner)
        assert str(ip) not in _pool()
    finally:
        if os.path.exists(f"/sys/class/net/{stale}"):
            tools.run(["ip", "link", "del", stale])
