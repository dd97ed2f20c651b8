"""Who may do what: htpasswd basic auth, bearer tokens (issued here or by an external
issuer), per-repository permissions and anonymous grants.

Owns the :class:`Authorizer` protocol the HTTP layer asks, its implementations, and the
built-in token endpoint (the docker token protocol: ``GET /auth/token?service=&scope=``
answered with a signed JWT whose ``access`` claim lists the granted actions).  Credentials
are never logged.  Actions are ``pull``, ``push`` and ``delete``; the catalog needs an
authenticated user (scope ``registry:catalog:*``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Protocol

import bcrypt
import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from strata.errors import InvalidArgument
from strata.registry.server.config import ACTIONS, ServerConfig, TokenConfig
from strata.registry.server.errors import RegistryHTTPError

__all__ = [
    "Authorizer",
    "ConfiguredAuthorizer",
    "Htpasswd",
    "OpenAuthorizer",
    "make_authorizer",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_Identity = tuple[bool, str | None, dict[str, frozenset[str]] | None]
_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "EdDSA"]


class Authorizer(Protocol):
    """Decides whether a request may take ``actions`` on a repository."""

    async def authorize(
        self, request: web.Request, repository: str | None, actions: frozenset[str]
    ) -> str | None:
        """Check the request's credentials against what it needs.

        Args:
            request: the HTTP request (its ``Authorization`` header).
            repository: the repository concerned, ``None`` for ``/v2/`` and the catalog.
            actions: what the request does (``{"pull"}``, ``{"pull", "push"}``,
                ``{"delete"}``; ``{"*"}`` for the catalog; empty for ``/v2/``).

        Returns:
            The user name, or ``None`` when anonymous.

        Raises:
            RegistryHTTPError: ``UNAUTHORIZED`` (401, with the challenge) or ``DENIED`` (403).
        """
        ...

    async def can(self, request: web.Request, repository: str, action: str) -> bool:
        """True if the request's credentials allow ``action`` on ``repository``."""
        ...

    def token_handler(self) -> Handler | None:
        """The built-in token endpoint's handler, if this authorizer issues tokens."""
        ...


class OpenAuthorizer:
    """No auth configured: everyone may do everything."""

    async def authorize(
        self, request: web.Request, repository: str | None, actions: frozenset[str]
    ) -> str | None:
        return None

    async def can(self, request: web.Request, repository: str, action: str) -> bool:
        return True

    def token_handler(self) -> Handler | None:
        return None


class Htpasswd:
    """An htpasswd file of bcrypt hashes; successful checks are cached (bcrypt is slow)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._users: dict[str, bytes] = {}
        self._ok: dict[tuple[str, bytes], bool] = {}
        self._mtime = -1.0
        self._load()

    def _load(self) -> None:
        try:
            st = self.path.stat()
            if st.st_mtime == self._mtime:
                return
            lines = self.path.read_text().splitlines()
        except OSError as exc:
            raise InvalidArgument(f"cannot read htpasswd file {self.path}: {exc.strerror}") from exc
        users = {}
        for line in lines:
            user, sep, hashed = line.strip().partition(":")
            if sep and user and hashed.startswith(("$2y$", "$2b$", "$2a$")):
                users[user] = hashed.encode()
        self._users = users
        self._ok.clear()
        self._mtime = st.st_mtime

    async def check(self, user: str, password: str) -> bool:
        """True if ``password`` is ``user``'s."""
        self._load()
        hashed = self._users.get(user)
        if hashed is None:
            return False
        key = (user, hashlib.sha256(password.encode()).digest())
        cached = self._ok.get(key)
        if cached is None:
            cached = await asyncio.to_thread(bcrypt.checkpw, password.encode(), hashed)
            self._ok[key] = cached
        return cached


def _basic(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "\0")  # malformed: never a valid user
    if not user and not password:
        return None  # "Basic Og==" (empty user and password), as anonymous clients send
    return (user, password) if sep else ("", "\0")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _load_public_keys(bundle: Path) -> list[object]:
    """Certificates and public keys of a PEM bundle."""
    try:
        data = bundle.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read token root cert bundle {bundle}: {exc.strerror}") from exc
    keys: list[object] = []
    blocks = data.split(b"-----END ")
    for block in blocks:
        start = block.find(b"-----BEGIN ")
        if start < 0:
            continue
        kind = block[start + 11:].split(b"-----", 1)[0]
        pem = block[start:] + b"-----END " + kind + b"-----\n"
        try:
            if kind == b"CERTIFICATE":
                keys.append(x509.load_pem_x509_certificate(pem).public_key())
            elif kind == b"PUBLIC KEY":
                keys.append(serialization.load_pem_public_key(pem))
        except ValueError as exc:
            raise InvalidArgument(f"token root cert bundle {bundle}: bad {kind.decode()}: {exc}") from exc
    if not keys:
        raise InvalidArgument(f"token root cert bundle {bundle} holds no certificate or public key")
    return keys


def _algorithm_for(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: "ES256", 384: "ES384", 521: "ES512"}.get(key.curve.key_size, "ES256")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise InvalidArgument("token signing key must be RSA, EC or Ed25519")


def _parse_scopes(values: Iterable[str]) -> list[tuple[str, str, frozenset[str]]]:
    """``repository:name:pull,push`` scopes (several may be space-separated)."""
    out = []
    for value in values:
        for scope in value.split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind and name:
                out.append((kind, name, frozenset(a for a in actions.split(",") if a)))
    return out


class ConfiguredAuthorizer:
    """htpasswd and/or token auth with the configuration's access rules."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.htpasswd = Htpasswd(config.htpasswd.path) if config.htpasswd else None
        self.token: TokenConfig | None = config.token
        self._keys: list[object] = []
        self._signing_key: object | None = None
        self._algorithm = "RS256"
        if self.token is not None:
            if self.token.rootcertbundle is not None:
                self._keys += _load_public_keys(self.token.rootcertbundle)
            if self.token.signingkey is not None:
                try:
                    key = serialization.load_pem_private_key(self.token.signingkey.read_bytes(), None)
                except (OSError, ValueError, TypeError) as exc:
                    raise InvalidArgument(
                        f"cannot load token signing key {self.token.signingkey}: {exc}"
                    ) from exc
                self._algorithm = _algorithm_for(key)
                self._signing_key = key
                self._keys.append(key.public_key())

    # ---------------------------------------------------------------- identity

    def _challenge(self, request: web.Request, repository: str | None, actions: frozenset[str],
                   *, error: str | None = None) -> dict[str, str]:
        if self.token is not None:
            realm = self.token.realm or f"{request.scheme}://{request.host}/auth/token"
            parts = [f'realm="{realm}"', f'service="{self.token.service}"']
            if repository is not None and actions:
                wanted = ",".join(sorted(actions))
                parts.append(f'scope="repository:{repository}:{wanted}"')
            elif actions == frozenset({"*"}):
                parts.append('scope="registry:catalog:*"')
            if error:
                parts.append(f'error="{error}"')
            return {"WWW-Authenticate": "Bearer " + ",".join(parts)}
        assert self.config.htpasswd is not None
        return {"WWW-Authenticate": f'Basic realm="{self.config.htpasswd.realm}"'}

    async def _identify(self, request: web.Request) -> _Identity:
        """(credentials given, user, token grants by repository or None for basic/anonymous).

        Raises:
            RegistryHTTPError: credentials were given but are wrong.
        """
        cached = request.get("_identity")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        result: _Identity
        token = _bearer(request)
        basic = _basic(request)
        if token is not None and self.token is not None:
            claims = self._verify(token)
            grants: dict[str, frozenset[str]] = {}
            access = claims.get("access") or []
            if isinstance(access, list):
                for entry in access:
                    if not isinstance(entry, dict):
                        continue
                    kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
                    if isinstance(name, str) and isinstance(actions, list):
                        key = name if kind == "repository" else f"{kind}:{name}"
                        grants[key] = grants.get(key, frozenset()) | frozenset(
                            a for a in actions if isinstance(a, str)
                        )
            sub = claims.get("sub")
            result = (True, sub if isinstance(sub, str) and sub else None, grants)
        elif basic is not None and self.htpasswd is not None:
            user, password = basic
            if not await self.htpasswd.check(user, password):
                raise RegistryHTTPError("UNAUTHORIZED", message="invalid username or password",
                                        headers=self._challenge(request, None, frozenset()))
            result = (True, user, None)
        elif token is not None or basic is not None:
            raise RegistryHTTPError("UNAUTHORIZED", message="unsupported credentials",
                                    headers=self._challenge(request, None, frozenset()))
        else:
            result = (False, None, None)
        request["_identity"] = result
        return result

    def _verify(self, token: str) -> dict[str, object]:
        assert self.token is not None
        last: Exception | None = None
        for key in self._keys:
            try:
                claims: dict[str, object] = jwt.decode(
                    token, key,  # type: ignore[arg-type]
                    algorithms=_ALGORITHMS,
                    audience=self.token.service,
                    issuer=self.token.issuer,
                    options={"require": ["exp", "iss", "aud"]},
                )
                return claims
            except jwt.PyJWTError as exc:
                last = exc
        raise RegistryHTTPError("UNAUTHORIZED", message=f"invalid token: {last}",
                                headers={"WWW-Authenticate": f'Bearer realm="{self.token.realm}",'
                                         f'service="{self.token.service}",error="invalid_token"'})

    def _allowed(self, user: str | None, grants: dict[str, frozenset[str]] | None,
                 repository: str) -> frozenset[str]:
        by_rules = self.config.access.allowed(repository, user)
        if grants is None:
            return by_rules
        return grants.get(repository, frozenset())

    # ---------------------------------------------------------------- Authorizer

    async def authorize(
        self, request: web.Request, repository: str | None, actions: frozenset[str]
    ) -> str | None:
        given, user, grants = await self._identify(request)
        if repository is None:
            if actions == frozenset({"*"}):  # catalog
                if grants is not None:
                    if "*" in grants.get("registry:catalog", frozenset()):
                        return user
                elif given:
                    return user
                raise RegistryHTTPError("UNAUTHORIZED", headers=self._challenge(request, None, actions,
                                                                               error="insufficient_scope"))
            # /v2/: always challenge a request without credentials (even with anonymous
            # grants), so that clients holding credentials learn to send them.
            if given:
                return user
            raise RegistryHTTPError("UNAUTHORIZED", headers=self._challenge(request, None, actions))
        allowed = self._allowed(user if given else None, grants, repository)
        if actions <= allowed:
            return user
        if not given or grants is not None:
            # no credentials, or a token lacking the scope: send the client for (another) token
            raise RegistryHTTPError(
                "UNAUTHORIZED",
                {"repository": repository, "actions": sorted(actions)},
                headers=self._challenge(request, repository, actions,
                                        error="insufficient_scope" if given else None),
            )
        raise RegistryHTTPError("DENIED", {"repository": repository, "actions": sorted(actions)})

    async def can(self, request: web.Request, repository: str, action: str) -> bool:
        try:
            given, user, grants = await self._identify(request)
        except RegistryHTTPError:
            return False
        return action in self._allowed(user if given else None, grants, repository)

    def token_handler(self) -> Handler | None:
        if self._signing_key is None:
            return None
        return self._issue

    async def _issue(self, request: web.Request) -> web.StreamResponse:
        """The token endpoint: GET with basic auth (or anonymous), or the OAuth2 password
        grant by POST; grants the requested scopes that the access rules allow."""
        assert self.token is not None and self.htpasswd is not None
        request["route"] = "token"
        user: str | None = None
        scopes = list(request.query.getall("scope", []))
        if request.method == "POST":
            form = await request.post()
            if form.get("grant_type") != "password":
                return web.json_response({"error": "unsupported_grant_type"}, status=400)
            name, password = str(form.get("username", "")), str(form.get("password", ""))
            if not await self.htpasswd.check(name, password):
                return web.json_response({"error": "invalid_grant"}, status=401)
            user = name
            scopes += str(form.get("scope", "")).split()
        else:
            basic = _basic(request)
            if basic is not None:
                if not await self.htpasswd.check(*basic):
                    return web.json_response(
                        {"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]},
                        status=401,
                        headers={"WWW-Authenticate": f'Basic realm="{self.config.htpasswd.realm}"'}
                        if self.config.htpasswd else {},
                    )
                user = basic[0]
        access = []
        for kind, name, wanted in _parse_scopes(scopes):
            if kind == "repository":
                granted = sorted((wanted & self.config.access.allowed(name, user)) & ACTIONS)
            elif kind == "registry" and name == "catalog" and user is not None:
                granted = sorted(wanted & {"*"})
            else:
                granted = []
            access.append({"type": kind, "name": name, "actions": granted})
        now = int(time.time())
        claims = {
            "iss": self.token.issuer,
            "sub": user or "",
            "aud": self.token.service,
            "exp": now + self.token.expiration,
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = jwt.encode(claims, self._signing_key, algorithm=self._algorithm)  # type: ignore[arg-type]
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return web.json_response(
            {"token": token, "access_token": token, "expires_in": self.token.expiration, "issued_at": issued}
        )


def make_authorizer(config: ServerConfig) -> Authorizer:
    """The authorizer the configuration asks for.

    Raises:
        InvalidArgument: an htpasswd file, bundle or key cannot be read.
    """
    if not config.auth_enabled:
        return OpenAuthorizer()
    return ConfiguredAuthorizer(config)
