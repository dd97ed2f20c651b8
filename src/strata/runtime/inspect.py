"""``inspect`` of a container: docker's JSON shape, from the records and the container's files.

Owns two things:

* :func:`save_create_config` writes, when a container is created, what docker keeps in
  ``config.v2.json`` and ``hostconfig.json``: the container's ``Config`` (the image's config
  with the run options applied, as docker merges them) and its ``HostConfig`` (the options
  strata knows: binds, network mode, ports, limits, capabilities...), in
  ``ROOT/containers/ID/config.v2.json``;
* :func:`container_json` puts together ``docker inspect``'s object from that file, the
  container record (``State``), the writable layer's directories (``GraphDriver``), the
  bundle's mounts (``Mounts``) and the network attachment (``NetworkSettings``).

It never changes a container.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from strata.errors import InvalidContent
from strata.oci import ContainerConfig
from strata.runtime.spec import MASKED_PATHS, READONLY_PATHS, RunOptions
from strata.runtime.store import ContainerRecord, State

__all__ = ["CREATE_FILE", "container_config", "container_json", "go_time",
           "load_create_config", "save_create_config"]

#: The per-container file holding ``Config`` and ``HostConfig`` (docker's names).
CREATE_FILE = "config.v2.json"

_ZERO_TIME = "0001-01-01T00:00:00Z"


def go_time(when: float | None) -> str:
    """A time as docker prints it (RFC 3339 with nanoseconds, UTC); Go's zero time for None."""
    if not when:
        return _ZERO_TIME
    stamp = dt.datetime.fromtimestamp(when, dt.UTC)
    nanos = round((when - int(when)) * 1e9) % 1_000_000_000
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + (f".{nanos:09d}".rstrip("0") if nanos
                                                   else "") + "Z"


def _merge_env(image_env: Sequence[str], options: RunOptions) -> list[str]:
    """docker's ``ReplaceOrAppendEnvValues(image Env, -e)``: later wins, order kept."""
    merged: dict[str, str | None] = {}
    for item in image_env:
        key, sep, value = item.partition("=")
        merged[key] = value if sep else None
    for item in options.env:
        key, sep, value = item.partition("=")
        if sep:
            merged[key] = value
        elif key in options.host_env:
            merged[key] = options.host_env[key]
        else:
            merged.pop(key, None)
    return [f"{k}={v}" if v is not None else k for k, v in merged.items()]


def container_config(image: ContainerConfig | None, options: RunOptions, *, hostname: str,
                     image_name: str) -> ContainerConfig:
    """The container's ``Config`` as docker merges it from the image's and the options."""
    base = image or ContainerConfig()
    entrypoint: tuple[str, ...] | None
    if options.entrypoint is not None:
        entrypoint = (options.entrypoint,) if options.entrypoint else None
        cmd = tuple(options.command) or None
    else:
        entrypoint = base.entrypoint
        cmd = tuple(options.command) if options.command else base.cmd
    ports = set(base.exposed_ports or ())
    for item in getattr(options, "publish", ()):
        rest, _, proto = item.partition("/")
        port = rest.rsplit(":", 1)[-1]
        if port:
            ports.add(f"{port}/{(proto or 'tcp').lower()}")
    volumes = set(base.volumes or ())
    for item in getattr(options, "volumes", ()):
        if ":" not in item:
            volumes.add(item)  # an anonymous volume
    return ContainerConfig(
        user=options.user if options.user is not None else base.user,
        exposed_ports=tuple(sorted(ports)) or None,
        env=tuple(_merge_env(base.env or (), options)),
        entrypoint=entrypoint, cmd=cmd, volumes=tuple(sorted(volumes)) or None,
        working_dir=options.workdir or base.working_dir,
        labels=dict(base.labels or {}), stop_signal=base.stop_signal,
        healthcheck=base.healthcheck, on_build=base.on_build, shell=base.shell,
        hostname=hostname, domainname="", image=image_name, stop_timeout=base.stop_timeout)


def _port_bindings(publish: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for item in publish:
        rest, _, proto = item.partition("/")
        parts = rest.rsplit(":", 2)
        container = parts[-1]
        host_port = parts[-2] if len(parts) >= 2 else ""
        host_ip = parts[-3] if len(parts) == 3 else ""
        out.setdefault(f"{container}/{(proto or 'tcp').lower()}", []).append(
            {"HostIp": host_ip, "HostPort": host_port})
    return out


def _host_config(options: RunOptions) -> dict[str, Any]:
    """docker's ``HostConfig`` for what strata's run options hold."""
    binds = [v for v in getattr(options, "volumes", ()) if ":" in v]
    tmpfs: dict[str, str] = {}
    for item in options.tmpfs:
        path, _, opts = item.partition(":")
        tmpfs[path] = opts
    cpus = getattr(options, "cpus", None)
    privileged = bool(getattr(options, "privileged", False))
    return {
        "Binds": binds or None,
        "ContainerIDFile": "",
        "LogConfig": {"Type": "json-file", "Config": {}},
        "NetworkMode": getattr(options, "network", "none") or "none",
        "PortBindings": _port_bindings(getattr(options, "publish", ())),
        "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
        "AutoRemove": options.remove,
        "VolumeDriver": "",
        "VolumesFrom": None,
        "CapAdd": list(options.cap_add) or None,
        "CapDrop": list(options.cap_drop) or None,
        "CgroupnsMode": "",
        "Dns": [],
        "DnsOptions": [],
        "DnsSearch": [],
        "ExtraHosts": None,
        "GroupAdd": None,
        "IpcMode": "private",
        "Cgroup": "",
        "Links": None,
        "OomScoreAdj": 0,
        "PidMode": "",
        "Privileged": privileged,
        "PublishAllPorts": False,
        "ReadonlyRootfs": options.read_only,
        "SecurityOpt": list(getattr(options, "security_opt", ())) or None,
        "Tmpfs": tmpfs or None,
        "UTSMode": "",
        "UsernsMode": getattr(options, "userns", None) or "",
        "ShmSize": 67108864,
        "Runtime": options.runtime,
        "Isolation": "",
        "Memory": getattr(options, "memory", None) or 0,
        "MemorySwap": getattr(options, "memory_swap", None) or 0,
        "NanoCpus": round(cpus * 1e9) if cpus else 0,
        "PidsLimit": getattr(options, "pids_limit", None),
        "Mounts": list(getattr(options, "mounts", ())) or None,
        "MaskedPaths": [] if privileged else list(MASKED_PATHS),
        "ReadonlyPaths": [] if privileged else list(READONLY_PATHS),
    }


def save_create_config(container_dir: Path, image: ContainerConfig | None,
                       options: RunOptions, *, hostname: str, image_name: str,
                       runtime_name: str) -> None:
    """Write ``config.v2.json`` (``Config``, ``HostConfig``) for a new container.

    ``runtime_name`` is strata's runtime (``builtin``, ``runc``) kept beside docker's fields.
    """
    config = container_config(image, options, hostname=hostname, image_name=image_name)
    docker_config = dict(config.to_docker_json())
    docker_config["Tty"] = options.tty
    data = {"Config": docker_config, "HostConfig": _host_config(options),
            "StrataRuntime": runtime_name}
    tmp = container_dir / f".{CREATE_FILE}.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, container_dir / CREATE_FILE)


def load_create_config(container_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``Config`` and ``HostConfig`` as saved at creation (empty dicts if the file is missing).

    Raises:
        InvalidContent: the file is corrupt.
    """
    try:
        data = json.loads((container_dir / CREATE_FILE).read_text())
    except FileNotFoundError:
        return {}, {}
    except (OSError, ValueError) as exc:
        raise InvalidContent(f"{container_dir / CREATE_FILE}: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidContent(f"{container_dir / CREATE_FILE}: not an object")
    return dict(data.get("Config") or {}), dict(data.get("HostConfig") or {})


def _mounts(bundle_config: Mapping[str, Any], container_dir: Path) -> list[dict[str, Any]]:
    """docker's ``Mounts``: the bind and volume mounts of the bundle (not strata's own)."""
    out: list[dict[str, Any]] = []
    for m in bundle_config.get("mounts") or ():
        if m.get("type") != "bind":
            continue
        source = str(m.get("source", ""))
        if source.startswith(str(container_dir) + "/"):
            continue  # /etc/hosts, /etc/hostname, /etc/resolv.conf
        options = list(m.get("options") or ())
        entry: dict[str, Any] = {"Type": "bind", "Source": source,
                                 "Destination": m.get("destination", ""), "Mode": "",
                                 "RW": "ro" not in options, "Propagation": "rprivate"}
        parts = Path(source).parts
        if len(parts) >= 3 and parts[-1] == "_data" and parts[-3] == "volumes":
            entry = {"Type": "volume", "Name": parts[-2], "Source": source,
                     "Destination": m.get("destination", ""), "Driver": "local", "Mode": "z",
                     "RW": "ro" not in options, "Propagation": ""}
        out.append(entry)
    return out


def _network_settings(container_dir: Path, host_config: Mapping[str, Any]) -> dict[str, Any]:
    mode = str(host_config.get("NetworkMode") or "none")
    attachment: Any = None
    try:
        from strata.runtime import network
        attachment = network.attachment_of(container_dir)
    except (ImportError, AttributeError, OSError, ValueError, KeyError):
        attachment = None
    ip = getattr(attachment, "ip_address", "") or ""
    prefix = int(getattr(attachment, "prefix_len", 0) or 0)
    gateway = getattr(attachment, "gateway", "") or ""
    mac = getattr(attachment, "mac_address", "") or ""
    ports: dict[str, Any] = {}
    for p in getattr(attachment, "ports", ()) or ():
        ports.setdefault(f"{p.container_port}/{p.protocol}", []).append(
            {"HostIp": p.host_ip or "0.0.0.0", "HostPort": str(p.host_port)})
    netns = getattr(attachment, "netns", None)
    endpoint = {"IPAMConfig": None, "Links": None, "Aliases": None, "NetworkID": "",
                "EndpointID": "", "Gateway": gateway, "IPAddress": ip,
                "IPPrefixLen": prefix, "IPv6Gateway": "", "GlobalIPv6Address": "",
                "GlobalIPv6PrefixLen": 0, "MacAddress": mac, "DriverOpts": None}
    return {"Bridge": "", "SandboxID": "", "HairpinMode": False, "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0, "Ports": ports,
            "SandboxKey": str(netns) if netns else "", "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None, "EndpointID": "", "Gateway": gateway,
            "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "IPAddress": ip,
            "IPPrefixLen": prefix, "IPv6Gateway": "", "MacAddress": mac,
            "Networks": {mode: endpoint}}


def container_json(record: ContainerRecord, container_dir: Path, *, driver: str,
                   graph_data: Mapping[str, str] | None,
                   sizes: tuple[int, int] | None = None) -> dict[str, Any]:
    """``docker inspect``'s object for one container.

    Args:
        record: the container's record.
        container_dir: ``ROOT/containers/ID``.
        driver: the snapshotter's name (docker's ``Driver``).
        graph_data: ``GraphDriver.Data`` (LowerDir, UpperDir, WorkDir, MergedDir).
        sizes: (SizeRw, SizeRootFs) for ``inspect -s``.

    Raises:
        InvalidContent: the container's files are corrupt.
    """
    config, host_config = load_create_config(container_dir)
    try:
        bundle = json.loads((container_dir / "bundle" / "config.json").read_text())
    except (OSError, ValueError):
        bundle = {}
    if not config:
        config = ContainerConfig(cmd=record.command, image=record.image).to_docker_json()
    running = record.state == State.RUNNING
    state = {
        "Status": record.state,
        "Running": running,
        "Paused": False,
        "Restarting": False,
        "OOMKilled": bool(getattr(record, "oom_killed", False)),
        "Dead": False,
        "Pid": record.pid if running else 0,
        "ExitCode": record.exit_code or 0,
        "Error": "",
        "StartedAt": go_time(record.started),
        "FinishedAt": go_time(record.finished),
    }
    out: dict[str, Any] = {
        "Id": record.id,
        "Created": go_time(record.created),
        "Path": record.command[0] if record.command else "",
        "Args": list(record.command[1:]),
        "State": state,
        "Image": record.image_id,
        "ResolvConfPath": str(container_dir / "resolv.conf"),
        "HostnamePath": str(container_dir / "hostname"),
        "HostsPath": str(container_dir / "hosts"),
        "LogPath": str(getattr(record, "log_path", "") or ""),
        "Name": f"/{record.name}",
        "RestartCount": 0,
        "Driver": driver,
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": host_config,
    }
    if sizes is not None:
        out["SizeRw"], out["SizeRootFs"] = sizes
    out.update({
        "GraphDriver": {"Data": dict(graph_data) if graph_data else None, "Name": driver},
        "Mounts": _mounts(bundle, container_dir),
        "Config": config,
        "NetworkSettings": _network_settings(container_dir, host_config),
    })
    return out
