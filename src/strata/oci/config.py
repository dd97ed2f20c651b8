"""The image configuration (OCI image-spec config.md, with Docker's extra fields).

Parsed from its exact bytes; the image ID is the digest of those bytes.  Docker's extra
fields (``container``, ``container_config``, ``docker_version``, ``comment``) are kept so that
``inspect`` can print what docker prints.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Self

from strata.errors import InvalidArgument, InvalidContent
from strata.oci._json import (
    JSONObject,
    JSONValue,
    as_object,
    dumps,
    get_list,
    get_object,
    get_str,
    key_set,
    loads_object,
    opt_bool,
    opt_int,
    opt_str,
    str_list,
    str_map,
)
from strata.oci.digest import Digest

__all__ = [
    "ContainerConfig",
    "Healthcheck",
    "History",
    "ImageConfig",
    "RootFS",
    "format_time",
    "parse_time",
]


def parse_time(text: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp with up to nanosecond precision (Go's time format).

    Raises:
        InvalidArgument: not RFC 3339.
    """
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    date, sep, rest = value.partition("T")
    if not sep:
        date, sep, rest = value.partition(" ")
    frac = ""
    if "." in rest:
        clock, _, tail = rest.partition(".")
        digits = ""
        while tail and tail[0].isdigit():
            digits, tail = digits + tail[0], tail[1:]
        frac = "." + (digits[:6].ljust(6, "0")) if digits else ""
        rest = clock + frac + tail
    try:
        parsed = dt.datetime.fromisoformat(f"{date}T{rest}")
    except ValueError as exc:
        raise InvalidArgument(f"invalid timestamp {text!r}: {exc}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def format_time(when: dt.datetime) -> str:
    """RFC 3339 in UTC with nanoseconds trimmed as Go's RFC3339Nano does."""
    when = when.astimezone(dt.UTC)
    base = when.strftime("%Y-%m-%dT%H:%M:%S")
    if when.microsecond:
        base += ("." + f"{when.microsecond:06d}").rstrip("0")
    return base + "Z"


@dataclass(frozen=True, slots=True)
class Healthcheck:
    """Docker's HEALTHCHECK settings (durations in nanoseconds)."""

    test: tuple[str, ...] = ()
    interval: int | None = None
    timeout: int | None = None
    start_period: int | None = None
    retries: int | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, JSONValue], what: str) -> Self:
        return cls(
            test=str_list(obj, "Test", what) or (),
            interval=opt_int(obj, "Interval", what),
            timeout=opt_int(obj, "Timeout", what),
            start_period=opt_int(obj, "StartPeriod", what),
            retries=opt_int(obj, "Retries", what),
        )

    def to_json(self) -> JSONObject:
        out: JSONObject = {"Test": list(self.test)}
        for key, value in (
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("Retries", self.retries),
        ):
            if value:
                out[key] = value
        return out


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """The ``config`` object: how a container of this image runs.

    ``exposed_ports`` and ``volumes`` are the keys of docker's ``{"80/tcp": {}}`` sets.
    """

    user: str | None = None
    exposed_ports: tuple[str, ...] | None = None
    env: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    volumes: tuple[str, ...] | None = None
    working_dir: str | None = None
    labels: Mapping[str, str] | None = None
    stop_signal: str | None = None
    args_escaped: bool | None = None
    healthcheck: Healthcheck | None = None
    on_build: tuple[str, ...] | None = None
    shell: tuple[str, ...] | None = None
    # Docker-only fields that appear in docker-written configs.
    hostname: str | None = None
    domainname: str | None = None
    image: str | None = None
    stop_timeout: int | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, JSONValue], what: str = "config") -> Self:
        health = get_object(obj, "Healthcheck", what)
        return cls(
            user=opt_str(obj, "User", what),
            exposed_ports=key_set(obj, "ExposedPorts", what),
            env=str_list(obj, "Env", what),
            entrypoint=str_list(obj, "Entrypoint", what),
            cmd=str_list(obj, "Cmd", what),
            volumes=key_set(obj, "Volumes", what),
            working_dir=opt_str(obj, "WorkingDir", what),
            labels=str_map(obj, "Labels", what),
            stop_signal=opt_str(obj, "StopSignal", what),
            args_escaped=opt_bool(obj, "ArgsEscaped", what),
            healthcheck=Healthcheck.from_json(health, f"{what}.Healthcheck") if health else None,
            on_build=str_list(obj, "OnBuild", what),
            shell=str_list(obj, "Shell", what),
            hostname=opt_str(obj, "Hostname", what),
            domainname=opt_str(obj, "Domainname", what),
            image=opt_str(obj, "Image", what),
            stop_timeout=opt_int(obj, "StopTimeout", what),
        )

    def to_json(self) -> JSONObject:
        """The OCI shape: only the fields that are set, in the spec's order."""
        out: JSONObject = {}
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.env is not None:
            out["Env"] = list(self.env)
        if self.entrypoint is not None:
            out["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            out["Cmd"] = list(self.cmd)
        if self.volumes:
            out["Volumes"] = {v: {} for v in self.volumes}
        if self.working_dir:
            out["WorkingDir"] = self.working_dir
        if self.labels:
            out["Labels"] = dict(self.labels)
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.args_escaped:
            out["ArgsEscaped"] = True
        if self.healthcheck is not None:
            out["Healthcheck"] = self.healthcheck.to_json()
        if self.on_build:
            out["OnBuild"] = list(self.on_build)
        if self.shell:
            out["Shell"] = list(self.shell)
        return out

    def to_docker_json(self) -> JSONObject:
        """The shape ``docker inspect`` prints: every field of docker's container.Config."""
        out: JSONObject = {
            "Hostname": self.hostname or "",
            "Domainname": self.domainname or "",
            "User": self.user or "",
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
        }
        if self.exposed_ports:
            out["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        out.update({"Tty": False, "OpenStdin": False, "StdinOnce": False})
        out["Env"] = list(self.env) if self.env is not None else None
        out["Cmd"] = list(self.cmd) if self.cmd is not None else None
        if self.healthcheck is not None:
            out["Healthcheck"] = self.healthcheck.to_json()
        if self.args_escaped:
            out["ArgsEscaped"] = True
        out["Image"] = self.image or ""
        out["Volumes"] = {v: {} for v in self.volumes} if self.volumes else None
        out["WorkingDir"] = self.working_dir or ""
        out["Entrypoint"] = list(self.entrypoint) if self.entrypoint is not None else None
        out["OnBuild"] = list(self.on_build) if self.on_build is not None else None
        out["Labels"] = dict(self.labels) if self.labels is not None else None
        if self.stop_signal:
            out["StopSignal"] = self.stop_signal
        if self.stop_timeout is not None:
            out["StopTimeout"] = self.stop_timeout
        if self.shell:
            out["Shell"] = list(self.shell)
        return out


@dataclass(frozen=True, slots=True)
class RootFS:
    """``rootfs``: the diff_ids of the layers, bottom first."""

    diff_ids: tuple[Digest, ...] = ()
    type: str = "layers"

    def to_json(self) -> JSONObject:
        return {"type": self.type, "diff_ids": [str(d) for d in self.diff_ids]}


@dataclass(frozen=True, slots=True)
class History:
    """One entry of ``history``; ``empty_layer`` entries made no layer."""

    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False

    @classmethod
    def from_json(cls, obj: Mapping[str, JSONValue], what: str) -> Self:
        return cls(
            created=opt_str(obj, "created", what),
            created_by=opt_str(obj, "created_by", what),
            author=opt_str(obj, "author", what),
            comment=opt_str(obj, "comment", what),
            empty_layer=bool(opt_bool(obj, "empty_layer", what)),
        )

    def to_json(self) -> JSONObject:
        out: JSONObject = {}
        if self.created:
            out["created"] = self.created
        if self.created_by:
            out["created_by"] = self.created_by
        if self.author:
            out["author"] = self.author
        if self.comment:
            out["comment"] = self.comment
        if self.empty_layer:
            out["empty_layer"] = True
        return out

    @property
    def created_at(self) -> dt.datetime | None:
        if not self.created:
            return None
        try:
            return parse_time(self.created)
        except InvalidArgument:
            return None


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """An image configuration."""

    architecture: str
    os: str
    rootfs: RootFS
    created: str | None = None
    author: str | None = None
    variant: str | None = None
    os_version: str | None = None
    config: ContainerConfig | None = None
    history: tuple[History, ...] = ()
    comment: str | None = None
    container: str | None = None
    container_config: ContainerConfig | None = None
    docker_version: str | None = None
    extra: Mapping[str, JSONValue] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes, what: str = "image config") -> Self:
        """Parse the exact bytes of an image config.

        Raises:
            InvalidContent: malformed JSON, missing rootfs, or a bad diff_id.
        """
        obj = loads_object(raw, what)
        rootfs_obj = get_object(obj, "rootfs", what)
        if rootfs_obj is None:
            raise InvalidContent(f"malformed {what}: missing field 'rootfs'", path=what)
        diff_ids: list[Digest] = []
        for i, value in enumerate(get_list(rootfs_obj, "diff_ids", f"{what}.rootfs")):
            if not isinstance(value, str):
                raise InvalidContent(f"malformed {what}: rootfs.diff_ids[{i}] not a string", path=what)
            try:
                diff_ids.append(Digest.parse(value))
            except InvalidArgument as exc:
                raise InvalidContent(f"malformed {what}: rootfs.diff_ids[{i}]: {exc}", path=what) from exc
        cfg = get_object(obj, "config", what)
        ccfg = get_object(obj, "container_config", what)
        known = {
            "architecture", "os", "rootfs", "created", "author", "variant", "os.version", "config",
            "history", "comment", "container", "container_config", "docker_version",
        }
        return cls(
            architecture=get_str(obj, "architecture", what, default=""),
            os=get_str(obj, "os", what, default=""),
            rootfs=RootFS(tuple(diff_ids), get_str(rootfs_obj, "type", what, default="layers")),
            created=opt_str(obj, "created", what),
            author=opt_str(obj, "author", what),
            variant=opt_str(obj, "variant", what),
            os_version=opt_str(obj, "os.version", what),
            config=ContainerConfig.from_json(cfg, f"{what}.config") if cfg is not None else None,
            history=tuple(
                History.from_json(as_object(v, f"{what}.history[{i}]"), f"{what}.history[{i}]")
                for i, v in enumerate(get_list(obj, "history", what))
            ),
            comment=opt_str(obj, "comment", what),
            container=opt_str(obj, "container", what),
            container_config=(
                ContainerConfig.from_json(ccfg, f"{what}.container_config") if ccfg else None
            ),
            docker_version=opt_str(obj, "docker_version", what),
            extra={k: v for k, v in obj.items() if k not in known},
        )

    def to_json(self) -> JSONObject:
        out: JSONObject = {}
        if self.created:
            out["created"] = self.created
        if self.author:
            out["author"] = self.author
        out["architecture"] = self.architecture
        if self.variant:
            out["variant"] = self.variant
        out["os"] = self.os
        if self.os_version:
            out["os.version"] = self.os_version
        if self.config is not None:
            out["config"] = self.config.to_json()
        out["rootfs"] = self.rootfs.to_json()
        if self.history:
            out["history"] = [h.to_json() for h in self.history]
        if self.comment:
            out["comment"] = self.comment
        for key, value in self.extra.items():
            out[key] = value
        return out

    def to_bytes(self) -> bytes:
        """Canonical bytes for a config strata creates."""
        return dumps(self.to_json())

    @property
    def created_at(self) -> dt.datetime | None:
        if not self.created:
            return None
        try:
            return parse_time(self.created)
        except InvalidArgument:
            return None

    def with_layers(self, diff_ids: tuple[Digest, ...], history: tuple[History, ...]) -> ImageConfig:
        """A copy with ``rootfs.diff_ids`` and ``history`` replaced."""
        return replace(self, rootfs=RootFS(diff_ids, self.rootfs.type), history=history)

    def layer_history(self) -> list[tuple[History, int | None]]:
        """Each history entry with the index of the layer it made (None for empty ones).

        Follows docker's ``history`` walk: entries without ``empty_layer`` consume the
        diff_ids in order.
        """
        out: list[tuple[History, int | None]] = []
        index = 0
        for entry in self.history:
            if entry.empty_layer:
                out.append((entry, None))
            else:
                out.append((entry, index if index < len(self.rootfs.diff_ids) else None))
                index += 1
        return out
