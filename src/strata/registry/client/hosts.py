"""Where a registry name leads: scheme, host, CA certificates (docker's ``registry`` package).

* ``docker.io`` (and ``index.docker.io``) is served by ``registry-1.docker.io`` over HTTPS;
  credentials for it are stored under ``https://index.docker.io/v1/`` as docker does.
* Loopback registries (``localhost``, ``127.0.0.0/8``, ``::1``) and registries listed as
  insecure may speak plain HTTP: like docker, the client tries HTTPS first and falls back
  to plain HTTP when the server does not speak TLS at all.  A certificate that does not
  verify is an error, never a reason to fall back.  Every other registry is HTTPS only.
* CA certificates: docker's ``/etc/docker/certs.d/<host:port>/*.crt`` convention (and
  ``/etc/containers/certs.d``), plus an explicit bundle from the options.
* The insecure list comes from ``--insecure-registry`` and from ``STRATA_ROOT/registries.toml``::

      [[registry]]
      location = "registry.lan:5000"
      insecure = true            # plain HTTP
      ca = "/path/to/ca.pem"     # or HTTPS with this CA

This module reads configuration files; it does no network I/O.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from strata.errors import InvalidContent

__all__ = [
    "DEFAULT_CERTS_DIRS",
    "DOCKER_HUB_AUTH_KEY",
    "Endpoint",
    "RegistryOptions",
    "is_loopback",
    "load_registries_toml",
]

DOCKER_HUB_HOST = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
DEFAULT_CERTS_DIRS = (Path("/etc/docker/certs.d"), Path("/etc/containers/certs.d"))


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """How to reach registries.

    Attributes:
        insecure: registries (``host[:port]``) to talk to over plain HTTP.
        ca_files: per registry, a CA bundle to verify its TLS certificate with.
        ca_file: a CA bundle added for every registry (``--ca-cert``).
        certs_dirs: directories in docker's ``certs.d/<host:port>/*.crt`` layout.
        docker_config: the ``config.json`` holding credentials (default
            ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``).
        workers: how many blobs move at once.
        retries: how many times a request is retried on 5xx, 429 or a broken connection.
        chunk_size: push blobs larger than this in PATCH chunks (None: one monolithic PUT).
        timeout: seconds to wait for a connection or for bytes.
    """

    insecure: frozenset[str] = frozenset()
    ca_files: Mapping[str, Path] = field(default_factory=dict)
    ca_file: Path | None = None
    certs_dirs: tuple[Path, ...] = DEFAULT_CERTS_DIRS
    docker_config: Path | None = None
    workers: int = 4
    retries: int = 4
    chunk_size: int | None = None
    timeout: float = 60.0

    def with_config_file(self, path: Path) -> RegistryOptions:
        """These options plus the insecure registries and CAs of a ``registries.toml``."""
        insecure, cas = load_registries_toml(path)
        return RegistryOptions(
            insecure=self.insecure | insecure,
            ca_files={**cas, **self.ca_files},
            ca_file=self.ca_file,
            certs_dirs=self.certs_dirs,
            docker_config=self.docker_config,
            workers=self.workers,
            retries=self.retries,
            chunk_size=self.chunk_size,
            timeout=self.timeout,
        )

    def endpoint(self, registry: str) -> Endpoint:
        """Where to send requests for ``registry`` (a reference's registry part)."""
        host = DOCKER_HUB_HOST if registry in ("docker.io", "index.docker.io") else registry
        cas: list[Path] = []
        if registry in self.ca_files:
            cas.append(self.ca_files[registry])
        for base in self.certs_dirs:
            d = base / registry
            if d.is_dir():
                cas.extend(sorted(p for p in d.iterdir() if p.suffix == ".crt"))
        if self.ca_file is not None:
            cas.append(self.ca_file)
        plain_ok = not cas and (is_loopback(registry) or registry in self.insecure)
        return Endpoint(registry=registry, host=host, secure=True, ca_files=tuple(cas),
                        plain_http_fallback=plain_ok)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """How to reach one registry: ``https://host`` (with extra CAs), or ``http://host`` when
    ``plain_http_fallback`` allows it and the server does not speak TLS."""

    registry: str
    host: str
    secure: bool = True
    ca_files: tuple[Path, ...] = ()
    plain_http_fallback: bool = False

    @property
    def base_url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}"

    def plain(self) -> Endpoint:
        """The same endpoint over plain HTTP."""
        return Endpoint(self.registry, self.host, False, self.ca_files, False)

    @property
    def auth_key(self) -> str:
        """The key credentials are stored under in docker's config.json."""
        return DOCKER_HUB_AUTH_KEY if self.registry in ("docker.io", "index.docker.io") else self.registry


def is_loopback(registry: str) -> bool:
    """True for ``localhost[:port]``, ``127.x.y.z[:port]`` and ``[::1][:port]``."""
    host = registry
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_registries_toml(path: Path) -> tuple[frozenset[str], dict[str, Path]]:
    """The insecure registries and per-registry CA files a ``registries.toml`` lists.

    A missing file configures nothing.

    Raises:
        InvalidContent: the file is not valid TOML or an entry is malformed.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return frozenset(), {}
    try:
        doc = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidContent(f"{path}: {exc}", path=str(path)) from exc
    entries = doc.get("registry", [])
    if not isinstance(entries, list):
        raise InvalidContent(f"{path}: 'registry' must be an array of tables ([[registry]])",
                             path=str(path))
    insecure: set[str] = set()
    cas: dict[str, Path] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("location"), str):
            raise InvalidContent(f"{path}: registry[{i}] needs a string 'location'", path=str(path))
        location = entry["location"]
        if entry.get("insecure") is True:
            insecure.add(location)
        ca = entry.get("ca")
        if isinstance(ca, str):
            cas[location] = Path(ca)
    return frozenset(insecure), cas

