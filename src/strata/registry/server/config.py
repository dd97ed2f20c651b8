"""The registry server's configuration: a YAML (or TOML) file in the shape of distribution's
``config.yml``, plus strata's own per-repository access rules.

Owns parsing and validating the file into frozen values; does no I/O besides reading the
file named by :func:`load_config`.  Recognised keys (others are ignored, as distribution
ignores sections it does not use)::

    http:
      addr: 127.0.0.1:5000
    log:
      accesslog:
        disabled: false
        path: /var/log/strata-registry.log   # strata: default stderr
    storage:
      filesystem:
        rootdirectory: /var/lib/registry
      # or
      s3: {bucket, region, regionendpoint, accesskey, secretkey, rootdirectory,
           chunksize, secure}
      delete:
        enabled: true
    auth:
      htpasswd: {realm: strata, path: /etc/registry/htpasswd}
      token:
        realm: https://auth.example/token   # where clients get tokens
        service: registry.example
        issuer: auth.example
        rootcertbundle: /etc/registry/token.pem   # certificates / public keys to verify
        signingkey: /etc/registry/token.key       # strata: issue tokens at /auth/token
        expiration: 300                           # strata: lifetime of issued tokens
    access:                                      # strata: who may do what where
      anonymous: [pull]                          # actions allowed without credentials
      rules:                                     # first rule matching repository+user wins
        - repository: "team/*"                   # fnmatch pattern
          users: [alice]                         # "*" = any authenticated user
          actions: [pull, push, delete]
    limits:                                      # strata
      manifestsize: 4194304
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Self

import yaml

from strata.errors import InvalidArgument

__all__ = [
    "ACTIONS",
    "AccessConfig",
    "AccessRule",
    "HtpasswdConfig",
    "ServerConfig",
    "TokenConfig",
    "load_config",
    "resolve_config",
]

#: The actions a permission can grant (the token scope's actions, plus ``delete``).
ACTIONS = frozenset({"pull", "push", "delete"})

DEFAULT_MANIFEST_SIZE = 4 * 1024 * 1024
_STORAGE_SECTIONS = frozenset({"delete", "maintenance", "cache", "redirect"})


@dataclass(frozen=True, slots=True)
class HtpasswdConfig:
    """Basic auth against an htpasswd file of bcrypt hashes."""

    realm: str
    path: Path


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """Bearer token auth (the docker token protocol).

    Attributes:
        realm: the token endpoint clients are sent to (``WWW-Authenticate``); empty means
            this server's own ``/auth/token``.
        service: the ``aud`` a token must carry.
        issuer: the ``iss`` a token must carry.
        rootcertbundle: PEM certificates or public keys that verify token signatures.
        signingkey: a PEM private key; when set, the server issues tokens itself at
            ``/auth/token`` after checking htpasswd credentials.
        expiration: lifetime of issued tokens in seconds.
    """

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path | None = None
    signingkey: Path | None = None
    expiration: int = 300


@dataclass(frozen=True, slots=True)
class AccessRule:
    """Grants ``actions`` on repositories matching ``repository`` to ``users``."""

    repository: str
    users: tuple[str, ...]
    actions: frozenset[str]

    def matches(self, repository: str, user: str | None) -> bool:
        """True if this rule speaks of ``repository`` and ``user`` (``None``: anonymous)."""
        if not fnmatch.fnmatchcase(repository, self.repository):
            return False
        if user is None:
            return "" in self.users or "anonymous" in self.users
        return "*" in self.users or user in self.users


@dataclass(frozen=True, slots=True)
class AccessConfig:
    """Per-repository permissions.  With no rules, an authenticated user may do anything."""

    anonymous: frozenset[str] = frozenset()
    rules: tuple[AccessRule, ...] = ()

    def allowed(self, repository: str, user: str | None) -> frozenset[str]:
        """The actions ``user`` (``None`` = anonymous) may take on ``repository``."""
        base = set(self.anonymous)
        if user is not None and not self.rules:
            return ACTIONS
        for rule in self.rules:
            if rule.matches(repository, user):
                return frozenset(base | rule.actions)
        return frozenset(base)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``strata registry serve`` needs to know."""

    addr: str = "127.0.0.1:5000"
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    storage_driver: str = "filesystem"
    storage_options: Mapping[str, object] = field(default_factory=dict)
    delete_enabled: bool = True
    htpasswd: HtpasswdConfig | None = None
    token: TokenConfig | None = None
    access: AccessConfig = field(default_factory=AccessConfig)
    access_log: bool = True
    access_log_path: Path | None = None
    manifest_size_limit: int = DEFAULT_MANIFEST_SIZE

    @property
    def auth_enabled(self) -> bool:
        """True when requests must carry credentials (beyond anonymous grants)."""
        return self.htpasswd is not None or self.token is not None

    @classmethod
    def from_mapping(cls, data: Mapping[str, object], *, base: Path | None = None) -> Self:
        """Build the configuration from parsed YAML/TOML.

        Args:
            data: the document.
            base: directory relative paths are resolved against (the file's directory).

        Raises:
            InvalidArgument: a key has the wrong type, the storage section names no or
                several drivers, an action is unknown.
        """
        base = base or Path.cwd()

        def path(value: object, key: str) -> Path:
            p = Path(_str(value, key)).expanduser()
            return p if p.is_absolute() else base / p

        http = _section(data, "http")
        addr = _str(http.get("addr", "127.0.0.1:5000"), "http.addr")
        tls = _section(http, "tls", prefix="http")
        tls_certificate = path(tls["certificate"], "http.tls.certificate") if tls.get("certificate") else None
        tls_key = path(tls["key"], "http.tls.key") if tls.get("key") else None
        if (tls_certificate is None) != (tls_key is None):
            raise InvalidArgument("registry config: http.tls needs both certificate and key")

        storage = _section(data, "storage")
        drivers = [k for k in storage if k not in _STORAGE_SECTIONS]
        if len(drivers) > 1:
            raise InvalidArgument(f"registry config: storage names several drivers: {', '.join(drivers)}")
        driver = drivers[0] if drivers else "filesystem"
        options = dict(_section(storage, driver, prefix="storage")) if drivers else {}
        if driver == "filesystem" and "rootdirectory" in options:
            options["rootdirectory"] = str(path(options["rootdirectory"], "storage.filesystem.rootdirectory"))
        delete = _section(storage, "delete", prefix="storage")
        delete_enabled = _bool(delete.get("enabled", True), "storage.delete.enabled")

        auth = _section(data, "auth")
        htpasswd = None
        if "htpasswd" in auth:
            h = _section(auth, "htpasswd", prefix="auth")
            htpasswd = HtpasswdConfig(
                realm=_str(h.get("realm", "strata"), "auth.htpasswd.realm"),
                path=path(h.get("path"), "auth.htpasswd.path"),
            )
        token = None
        if "token" in auth:
            t = _section(auth, "token", prefix="auth")
            token = TokenConfig(
                realm=_str(t["realm"], "auth.token.realm") if t.get("realm") else "",
                service=_str(t.get("service", "strata-registry"), "auth.token.service"),
                issuer=_str(t.get("issuer", "strata-registry"), "auth.token.issuer"),
                rootcertbundle=path(t["rootcertbundle"], "auth.token.rootcertbundle")
                if t.get("rootcertbundle")
                else None,
                signingkey=path(t["signingkey"], "auth.token.signingkey") if t.get("signingkey") else None,
                expiration=_int(t.get("expiration", 300), "auth.token.expiration"),
            )
            if not token.realm and token.signingkey is None:
                raise InvalidArgument("registry config: auth.token.realm is required without signingkey")
            if token.rootcertbundle is None and token.signingkey is None:
                raise InvalidArgument("registry config: auth.token needs rootcertbundle or signingkey")
            if token.signingkey is not None and htpasswd is None:
                raise InvalidArgument(
                    "registry config: auth.token.signingkey (built-in token endpoint) needs "
                    "auth.htpasswd to check credentials"
                )

        access_section = _section(data, "access")
        anonymous = _actions(access_section.get("anonymous", []), "access.anonymous")
        rules = []
        raw_rules = access_section.get("rules", [])
        if not isinstance(raw_rules, list):
            raise InvalidArgument("registry config: access.rules must be a list")
        for i, raw in enumerate(raw_rules):
            if not isinstance(raw, Mapping):
                raise InvalidArgument(f"registry config: access.rules[{i}] must be a mapping")
            users = raw.get("users", ["*"])
            if isinstance(users, str):
                users = [users]
            if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
                raise InvalidArgument(f"registry config: access.rules[{i}].users must be a list of names")
            rules.append(
                AccessRule(
                    repository=_str(raw.get("repository", "*"), f"access.rules[{i}].repository"),
                    users=tuple(users),
                    actions=_actions(raw.get("actions", []), f"access.rules[{i}].actions"),
                )
            )
        if not (htpasswd or token) and (rules or anonymous):
            raise InvalidArgument("registry config: access rules need auth.htpasswd or auth.token")

        log = _section(data, "log")
        accesslog = _section(log, "accesslog", prefix="log")
        log_path = accesslog.get("path")

        limits = _section(data, "limits")
        return cls(
            addr=addr,
            tls_certificate=tls_certificate,
            tls_key=tls_key,
            storage_driver=driver,
            storage_options=options,
            delete_enabled=delete_enabled,
            htpasswd=htpasswd,
            token=token,
            access=AccessConfig(anonymous=anonymous, rules=tuple(rules)),
            access_log=not _bool(accesslog.get("disabled", False), "log.accesslog.disabled"),
            access_log_path=path(log_path, "log.accesslog.path") if log_path else None,
            manifest_size_limit=_int(
                limits.get("manifestsize", DEFAULT_MANIFEST_SIZE), "limits.manifestsize"
            ),
        )


def resolve_config(
    path: Path | None, *, root: Path | None = None, listen: str | None = None
) -> ServerConfig:
    """The configuration ``strata registry serve/gc`` runs with: the file (if any), with
    ``--root`` (a filesystem storage root) and ``--listen`` overriding it.

    Raises:
        InvalidArgument: the file is invalid, or ``--root`` is given with a non-filesystem
            storage driver.
    """
    config = load_config(path) if path is not None else ServerConfig()
    changes: dict[str, object] = {}
    if root is not None:
        if config.storage_driver != "filesystem":
            raise InvalidArgument(f"--root applies to filesystem storage, not {config.storage_driver}")
        changes["storage_options"] = {**config.storage_options, "rootdirectory": str(root.absolute())}
    if listen is not None:
        changes["addr"] = listen
    return replace(config, **changes) if changes else config  # type: ignore[arg-type]


def load_config(path: Path) -> ServerConfig:
    """Read a configuration file: TOML if it ends in ``.toml``, YAML otherwise.

    Raises:
        InvalidArgument: unreadable, not YAML/TOML, or invalid (see
            :meth:`ServerConfig.from_mapping`).
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read registry config {path}: {exc.strerror}") from exc
    data: object
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument(f"registry config {path} is malformed: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"registry config {path} must be a mapping at the top level")
    return ServerConfig.from_mapping(data, base=path.parent.resolve())


def _section(data: Mapping[str, object], key: str, *, prefix: str = "") -> Mapping[str, object]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        name = f"{prefix}.{key}" if prefix else key
        raise InvalidArgument(f"registry config: {name} must be a mapping")
    return value


def _str(value: object, key: str) -> str:
    if isinstance(value, str) and value:
        return value
    raise InvalidArgument(f"registry config: {key} must be a non-empty string")


def _int(value: object, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise InvalidArgument(f"registry config: {key} must be a positive integer")


def _bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidArgument(f"registry config: {key} must be true or false")


def _actions(value: object, key: str) -> frozenset[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not all(isinstance(a, str) for a in value):
        raise InvalidArgument(f"registry config: {key} must be a list of actions")
    unknown = set(value) - ACTIONS - {"*"}
    if unknown:
        raise InvalidArgument(
            f"registry config: {key}: unknown action(s) {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(ACTIONS))})"
        )
    return ACTIONS if "*" in value else frozenset(value)
