"""Registries to test registry clients against: auth, TLS, a token service, a fault proxy.

This module owns the far side of the registry client's boundary in tests:

- :func:`make_tls`: a throwaway CA and a server certificate for ``127.0.0.1`` and
  ``localhost`` (made with ``cryptography``), with the CA laid out for clients
  (:meth:`TLSFiles.certs_d`, docker's ``certs.d/<host:port>/ca.crt`` convention);
- :func:`write_htpasswd`: an htpasswd file of bcrypt hashes (the only kind distribution
  accepts);
- :class:`TokenService`: a token server on 127.0.0.1 (aiohttp, in a thread) speaking the
  docker token protocol (``GET realm?service=&scope=`` with basic credentials, and the
  OAuth2 ``POST`` form), issuing JWTs signed with a test key the way distribution 2.8
  verifies them (ES256; the header carries the signing certificate as ``x5c`` and its
  libtrust key ID as ``kid``; the certificate is the registry's ``rootcertbundle``), granting
  per-repository actions from a table of :class:`Grant`;
- :class:`Registry`: Debian's ``docker-registry`` (distribution 2.8) on a free loopback
  port, plain or TLS, open or behind htpasswd or token auth;
- :class:`Proxy`: a streaming HTTP reverse proxy in front of a registry that counts every
  request and response body byte per exchange (so a test can say "no byte of this blob was
  uploaded") and injects :class:`Fault`\\ s on matching requests: cut the connection after N
  bytes of a body, flip a byte, answer 500/429 N times, substitute a body;
- :class:`CredentialHelper`: a ``docker-credential-NAME`` program keeping secrets in a JSON
  file (a keychain double for ``credsStore`` / ``credHelpers``);
- :func:`derive_image` and :func:`skopeo_push`: small test images sharing layers, pushed by
  a real client.

Everything listens on 127.0.0.1 only, runs under a context manager and stops (processes,
threads, sockets) when it exits. Nothing here imports strata beyond ``strata.testing``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import fnmatch
import gzip
import hashlib
import ipaddress
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import yaml
from aiohttp import ClientSession, ClientTimeout, TCPConnector, client_exceptions, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from multidict import CIMultiDict

from strata.testing import tars, tools

__all__ = [
    "ALICE",
    "BOB",
    "CredentialHelper",
    "Exchange",
    "Fault",
    "FaultKind",
    "Grant",
    "Proxy",
    "Registry",
    "TEST_USERS",
    "TLSFiles",
    "TestImage",
    "TokenRequest",
    "TokenService",
    "basic_auth",
    "bearer_token",
    "derive_image",
    "layout_image",
    "libtrust_key_id",
    "make_tls",
    "skopeo_push",
    "write_htpasswd",
]

_LOOPBACK = "127.0.0.1"

#: The registry servers :class:`Registry` can start.
SERVERS = ("docker-registry", "strata")

#: Test identities (user, password) for the auth registries.
ALICE = ("alice", "alice-secret")
BOB = ("bob", "bob-secret")
#: user → password of :data:`ALICE` and :data:`BOB`.
TEST_USERS: Mapping[str, str] = dict([ALICE, BOB])


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM files of a throwaway CA and a server certificate it signed.

    Attributes:
        ca_cert: the CA certificate clients must trust.
        ca_key: the CA's private key.
        server_cert: the server certificate (SANs ``127.0.0.1``, ``localhost``).
        server_key: the server's private key.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    def certs_d(self, address: str, base: Path | None = None) -> Path:
        """A docker-style ``certs.d`` directory trusting the CA for ``address``.

        Writes ``BASE/ADDRESS/ca.crt`` (docker's ``/etc/docker/certs.d`` layout, also
        skopeo's ``--cert-dir`` when given ``BASE/ADDRESS``).

        Args:
            address: ``host:port`` of the registry.
            base: the ``certs.d`` directory (default: ``certs.d`` beside the CA).

        Returns:
            ``base`` (the directory holding one subdirectory per registry).
        """
        base = base or self.ca_cert.parent / "certs.d"
        d = base / address
        d.mkdir(parents=True, exist_ok=True)
        (d / "ca.crt").write_bytes(self.ca_cert.read_bytes())
        return base

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_cert))


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "strata tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(
        now + datetime.timedelta(days=2)
    )


def make_tls(dest: Path, *, hosts: Sequence[str] = (_LOOPBACK, "localhost")) -> TLSFiles:
    """Create a CA and a server certificate for ``hosts`` under ``dest``.

    Args:
        dest: the directory to write ``ca.crt``, ``ca.key``, ``server.crt``, ``server.key``.
        hosts: the server's names: IP addresses become IP SANs, the rest DNS SANs.

    Returns:
        The file paths.
    """
    dest.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("strata test CA")
    ca = (
        _validity(x509.CertificateBuilder())
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(
        ca_cert=dest / "ca.crt",
        ca_key=dest / "ca.key",
        server_cert=dest / "server.crt",
        server_key=dest / "server.key",
    )
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(files.ca_key, ca_key)
    files.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(files.server_key, server_key)
    return files


# --------------------------------------------------------------------------- htpasswd


def write_htpasswd(path: Path, users: Mapping[str, str], *, rounds: int = 5) -> Path:
    """Write an htpasswd file of bcrypt hashes (``user:$2y$...``), as ``htpasswd -B`` does.

    Args:
        path: the file to write.
        users: user name → password.
        rounds: the bcrypt cost (low: these are test passwords).

    Returns:
        ``path``.
    """
    lines = []
    for user, password in users.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()
        lines.append(f"{user}:$2y${hashed[4:]}")  # htpasswd writes the $2y$ prefix
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- credential helper


_HELPER_SCRIPT = """\
#!{python}
# docker-credential-{name}: a credential helper for tests, keeping secrets in a JSON file.
import json, sys
STORE = {store!r}
def load():
    try:
        with open(STORE) as f:
            return json.load(f)
    except FileNotFoundError:
        return {{}}
def save(doc):
    with open(STORE, "w") as f:
        json.dump(doc, f)
action = sys.argv[1] if len(sys.argv) > 1 else ""
data = sys.stdin.read()
doc = load()
with open(STORE + ".log", "a") as log:
    log.write(action + " " + (data.strip() if action != "store" else json.loads(data)["ServerURL"]) + "\\n")
if action == "get":
    entry = doc.get(data.strip())
    if entry is None:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps({{"ServerURL": data.strip(), "Username": entry[0], "Secret": entry[1]}}))
elif action == "store":
    req = json.loads(data)
    doc[req["ServerURL"]] = [req["Username"], req["Secret"]]
    save(doc)
elif action == "erase":
    if doc.pop(data.strip(), None) is None:
        print("credentials not found in native keychain")
        sys.exit(1)
    save(doc)
elif action == "list":
    print(json.dumps({{k: v[0] for k, v in doc.items()}}))
else:
    print("unknown action: " + action, file=sys.stderr)
    sys.exit(1)
"""


@dataclass(frozen=True, slots=True)
class CredentialHelper:
    """A ``docker-credential-NAME`` program speaking docker's credential-helper protocol
    (``get`` / ``store`` / ``erase`` / ``list`` on stdin/stdout), keeping secrets in a JSON
    file: a test double of a keychain, for ``credsStore`` / ``credHelpers``.

    Attributes:
        name: the helper name (``credsStore`` value); the program is ``docker-credential-NAME``.
        bin_dir: the directory holding the program (put it first on ``PATH``).
        store: the JSON file: server → ``[username, secret]``.
    """

    name: str
    bin_dir: Path
    store: Path

    @classmethod
    def install(cls, directory: Path, name: str = "strata-test") -> CredentialHelper:
        """Write the program into ``directory/bin`` and an empty store beside it."""
        bin_dir = directory / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        helper = cls(name, bin_dir, directory / "credentials.json")
        program = bin_dir / f"docker-credential-{name}"
        program.write_text(_HELPER_SCRIPT.format(python=sys.executable, name=name, store=str(helper.store)))
        program.chmod(0o755)
        return helper

    def env(self) -> dict[str, str]:
        """``PATH`` with :attr:`bin_dir` first."""
        return {"PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}

    def entries(self) -> dict[str, tuple[str, str]]:
        """server → (username, secret) as stored now."""
        if not self.store.exists():
            return {}
        doc = json.loads(self.store.read_text())
        return {k: (v[0], v[1]) for k, v in doc.items()}

    def put(self, server: str, username: str, secret: str) -> None:
        """Store credentials directly (as a keychain filled by another tool)."""
        doc = {k: list(v) for k, v in self.entries().items()}
        doc[server] = [username, secret]
        self.store.write_text(json.dumps(doc))

    def calls(self) -> list[str]:
        """``"ACTION SERVER"`` of every call so far."""
        log = Path(f"{self.store}.log")
        return log.read_text().splitlines() if log.exists() else []


# --------------------------------------------------------------------------- asyncio in a thread


class _Server:
    """An aiohttp application served from its own event loop in a daemon thread."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"{self._name} is not started")  # programming error
        return self._loop

    def start(
        self, app: web.Application, *, on_start: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread

        async def setup() -> int:
            if on_start is not None:
                await on_start()
            runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
            await runner.setup()
            site = web.TCPSite(runner, _LOOPBACK, 0)
            await site.start()
            self._runner = runner
            port: int = runner.addresses[0][1]
            return port

        try:
            self.port = asyncio.run_coroutine_threadsafe(setup(), loop).result(30)
        except BaseException:
            self.stop()
            raise

    @property
    def running(self) -> bool:
        return self._loop is not None

    def call(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        asyncio.run_coroutine_threadsafe(fn(), self.loop).result(30)

    def stop(self) -> None:
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None:
            return
        if runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        self._loop = self._thread = self._runner = None


# --------------------------------------------------------------------------- token service


@dataclass(frozen=True, slots=True)
class Grant:
    """Actions a user may have on the repositories matching a pattern.

    Attributes:
        user: the user name, or ``None`` for anonymous requests.
        repository: an ``fnmatch`` pattern of repository names (``"*"``, ``"team/*"``).
        actions: the actions granted (``"pull"``, ``"push"``, ``"delete"``, ``"*"``).
    """

    user: str | None
    repository: str
    actions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One request the token service answered.

    Attributes:
        method: ``GET`` (docker token protocol) or ``POST`` (OAuth2 form).
        user: the authenticated user, ``None`` when anonymous.
        service: the ``service`` parameter.
        scopes: the scopes asked for.
        granted: ``(type, name, actions)`` of each access entry put in the token.
        status: the HTTP status answered (401 for bad credentials).
    """

    method: str
    user: str | None
    service: str
    scopes: tuple[str, ...]
    granted: tuple[tuple[str, str, tuple[str, ...]], ...]
    status: int


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The libtrust key ID of a public key, as distribution 2.8 names trusted keys.

    It is the SHA-256 of the DER SubjectPublicKeyInfo, truncated to 240 bits, base32
    encoded and cut into twelve groups of four characters joined by ``:``.
    """
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


_SCOPE = re.compile(r"^(?P<type>[a-z0-9]+)(?:\((?P<class>[a-z0-9]+)\))?:(?P<name>.+):(?P<actions>[a-z*,]*)$")


class TokenService(tools.Service):
    """A docker token service for :class:`Registry` token auth (a test double of the far side).

    ``with TokenService(workdir, users={"alice": "pw"}, grants=[Grant("alice", "*",
    ("pull", "push"))]) as ts: Registry(dir, token=ts)``. It answers at :attr:`realm`:

    - ``GET REALM?service=S&scope=repository:NAME:pull,push[&scope=...]`` with optional
      ``Authorization: Basic`` → ``{"token", "access_token", "expires_in", "issued_at"}``;
    - ``POST REALM`` form ``grant_type=password&username=&password=&service=&scope=`` (scopes
      space-separated) → ``{"access_token", "expires_in", "issued_at", "scope"}``.

    Wrong credentials get 401. Known users (and anonymous requests) get a token whose
    ``access`` holds, for each scope asked, the asked actions their grants allow (possibly
    none: the registry then answers 401/403 itself). Each answer is recorded in
    :attr:`requests`. With ``x5c=False`` the JWT header names the key only by its libtrust
    ``kid`` (distribution then finds it among the keys of ``rootcertbundle``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str],
        grants: Sequence[Grant],
        service: str = "strata-test-registry",
        issuer: str = "strata-test-token-issuer",
        lifetime: int = 300,
        x5c: bool = True,
    ) -> None:
        self.workdir = workdir
        self.x5c = x5c
        self.users = dict(users)
        self.grants = list(grants)
        self.service = service
        self.issuer = issuer
        self.lifetime = lifetime
        self.cert_path = workdir / "token-signing.crt"
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._server = _Server("strata-token-service")
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = _name("strata test token signer")
        self._cert = (
            _validity(x509.CertificateBuilder())
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.key_id = libtrust_key_id(self._key.public_key())

    @property
    def port(self) -> int:
        """The port it listens on (0 before :meth:`start`)."""
        return self._server.port

    @property
    def realm(self) -> str:
        """The token endpoint URL (the registry's ``auth.token.realm``)."""
        return f"http://{_LOOPBACK}:{self._server.port}/token"

    def allowed(self, user: str | None, repository: str) -> set[str]:
        """The actions ``user`` may take on ``repository`` under :attr:`grants`."""
        actions: set[str] = set()
        for grant in self.grants:
            if grant.user == user and fnmatch.fnmatchcase(repository, grant.repository):
                actions.update(grant.actions)
        return actions

    def issue(
        self, user: str | None, scopes: Sequence[str]
    ) -> tuple[str, tuple[tuple[str, str, tuple[str, ...]], ...]]:
        """A signed token for ``user`` granting what they may of ``scopes``.

        Returns:
            The compact JWT and its ``access`` claim as ``(type, name, actions)`` entries.
        """
        granted: list[tuple[str, str, tuple[str, ...]]] = []
        for scope in scopes:
            for part in scope.split(" "):
                m = _SCOPE.match(part)
                if m is None:
                    continue
                asked = [a for a in m["actions"].split(",") if a]
                allowed = self.allowed(user, m["name"]) if m["type"] == "repository" else set()
                given = tuple(a for a in asked if a in allowed or "*" in allowed)
                granted.append((m["type"], m["name"], given))
        access = [{"type": t, "name": n, "actions": list(a)} for t, n, a in granted]
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        der = self._cert.public_bytes(serialization.Encoding.DER)
        headers: dict[str, object] = {"kid": self.key_id}
        if self.x5c:
            headers["x5c"] = [base64.b64encode(der).decode()]
        token = jwt.encode(claims, self._key, algorithm="ES256", headers=headers)
        return token, tuple(granted)

    def _check(self, user: str | None, password: str | None) -> bool:
        return user is None or (user in self.users and self.users[user] == password)

    def _record(self, req: TokenRequest) -> None:
        with self._lock:
            self.requests.append(req)

    async def _handle(self, request: web.Request) -> web.Response:
        user: str | None = None
        password: str | None = None
        if request.method == "POST":
            form = await request.post()
            grant_type = str(form.get("grant_type", ""))
            service = str(form.get("service", ""))
            scopes = tuple(s for s in str(form.get("scope", "")).split(" ") if s)
            if grant_type == "password":
                user, password = str(form.get("username", "")), str(form.get("password", ""))
            elif grant_type != "refresh_token":
                return web.json_response({"error": "unsupported_grant_type"}, status=400)
        else:
            service = request.query.get("service", "")
            scopes = tuple(request.query.getall("scope", []))
            header = request.headers.get("Authorization", "")
            if header.lower().startswith("basic "):
                try:
                    decoded = base64.b64decode(header[6:].strip()).decode()
                except (ValueError, UnicodeDecodeError):
                    decoded = ":"
                user, _, password = decoded.partition(":")
        if service != self.service or not self._check(user, password):
            self._record(TokenRequest(request.method, user, service, scopes, (), 401))
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication failed"}]},
                status=401,
                headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'},
            )
        token, granted = self.issue(user, scopes)
        self._record(TokenRequest(request.method, user, service, scopes, granted, 200))
        issued = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body: dict[str, object] = {
            "access_token": token,
            "expires_in": self.lifetime,
            "issued_at": issued,
        }
        if request.method == "POST":
            body["scope"] = " ".join(scopes)
        else:
            body["token"] = token
        return web.json_response(body)

    def start(self) -> None:
        """Write the signing certificate and start answering on a free loopback port."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        app = web.Application()
        app.router.add_route("GET", "/token", self._handle)
        app.router.add_route("POST", "/token", self._handle)
        self._server.start(app)

    def stop(self) -> None:
        """Stop answering. Idempotent."""
        self._server.stop()



# --------------------------------------------------------------------------- registry


class Registry(tools.Service):
    """A registry with auth and TLS options: Debian's ``docker-registry serve CONFIG``
    (distribution 2.8) by default, or ``server="strata"`` for ``strata registry serve
    --config CONFIG`` given the same distribution-shaped configuration.

    ``with Registry(workdir, htpasswd={"alice": "pw"}, tls=make_tls(d)) as reg: reg.address``.
    At most one of ``htpasswd`` and ``token``. Storage is ``workdir/storage``; deletes are
    enabled. Without ``tls`` it speaks plain HTTP (clients need their insecure switch, which
    docker implies for 127.0.0.0/8).

    Attributes:
        users: the htpasswd users (name → password), empty without htpasswd auth.
        token: the token service, with token auth.
        tls: the certificates, with TLS.
        extra_config: top-level configuration sections added as given (``validation``...).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        htpasswd: Mapping[str, str] | None = None,
        token: TokenService | None = None,
        tls: TLSFiles | None = None,
        server: str = "docker-registry",
        start_timeout: float = 30,
        extra_config: Mapping[str, object] | None = None,
    ) -> None:
        if server not in SERVERS:
            raise ValueError(f"unknown registry server {server!r}")  # test misuse
        if htpasswd is not None and token is not None:
            raise ValueError("a registry has one auth method: htpasswd or token")  # test misuse
        self.server = server
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.users = dict(htpasswd or {})
        self._htpasswd = htpasswd is not None
        self.token = token
        self.tls = tls
        self.start_timeout = start_timeout
        self.extra_config = dict(extra_config or {})
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = workdir / "registry.log"

    @property
    def address(self) -> str:
        """``host:port`` to put in image references."""
        return f"{_LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The registry process's ID while it runs."""
        return self._proc.pid if self._proc is not None else None

    @property
    def scheme(self) -> str:
        """``https`` with TLS, else ``http``."""
        return "https" if self.tls is not None else "http"

    @property
    def url(self) -> str:
        """The base URL (``http(s)://127.0.0.1:PORT``)."""
        return f"{self.scheme}://{self.address}"

    def log(self) -> str:
        """The registry's log so far."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def config(self) -> dict[str, object]:
        """The registry's configuration (YAML-able) for the current port."""
        http: dict[str, object] = {
            "addr": self.address,
            "secret": "strata-tests",
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.tls is not None:
            http["tls"] = {
                "certificate": str(self.tls.server_cert),
                "key": str(self.tls.server_key),
            }
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
            "health": {"storagedriver": {"enabled": False}},
        }
        if self._htpasswd:
            config["auth"] = {
                "htpasswd": {"realm": "strata-test-registry", "path": str(self.workdir / "htpasswd")}
            }
        elif self.token is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(self.token.cert_path),
                }
            }
        config.update(self.extra_config)
        return config

    def start(self) -> None:
        """Start the registry and wait until ``GET /v2/`` answers (200, or 401 with auth).

        Raises:
            ToolError: it did not come up (after three tries on fresh ports).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(parents=True, exist_ok=True)
        if self._htpasswd:
            write_htpasswd(self.workdir / "htpasswd", self.users)
        context = self.tls.ssl_context() if self.tls is not None else None

        def command(port: int) -> list[str]:
            self.port = port
            config_path = self.workdir / "config.yml"
            config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
            return self._command(config_path)

        self._proc, self.port = tools.spawn_listening(
            command,
            lambda port: tools.http_ready(f"{self.scheme}://{_LOOPBACK}:{port}/v2/",
                                          accept=(200, 401), context=context),
            log=self._log, what=self.server, timeout=self.start_timeout)

    def _command(self, config_path: Path) -> list[str]:
        if self.server == "strata":
            return [sys.executable, "-m", "strata", "registry", "serve", "--config", str(config_path),
                    "--access-log", str(self.workdir / "access.log")]
        return [tools.require("docker-registry"), "serve", str(config_path)]

    def stop(self) -> None:
        """Stop the registry (SIGTERM, SIGKILL after 10 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait()

    def skopeo_flags(self, side: str = "", *, creds: tuple[str, str] | None = None) -> list[str]:
        """skopeo flags to reach this registry as the ``side`` (``src`` or ``dest``) of a
        copy, or (``side=""``) for ``skopeo inspect``.

        Plain HTTP gets ``--SIDE-tls-verify=false``; TLS gets ``--SIDE-cert-dir`` holding the
        CA; ``creds`` become ``--SIDE-creds USER:PASSWORD``.
        """
        prefix = f"--{side}-" if side else "--"
        flags: list[str] = []
        if self.tls is None:
            flags.append(f"{prefix}tls-verify=false")
        else:
            flags += [f"{prefix}cert-dir", str(self.tls.certs_d(self.address) / self.address)]
        if creds is not None:
            flags += [f"{prefix}creds", f"{creds[0]}:{creds[1]}"]
        return flags

    def skopeo_digest(self, repository: str, *, creds: tuple[str, str] | None = None) -> str:
        """The manifest digest of ``REPOSITORY`` (``name:tag``) here, as skopeo reads it.

        Raises:
            ToolError: skopeo failed (missing manifest, refused credentials...).
        """
        proc = tools.run(
            [
                "skopeo", "inspect", "--raw", *self.skopeo_flags(creds=creds),
                f"docker://{self.address}/{repository}",
            ]
        )  # fmt: skip
        # --raw prints the manifest bytes exactly as served; hash them (not --format Digest,
        # which would trust the registry's header)
        return _sha256(proc.stdout.encode("utf-8", "surrogateescape"))



# --------------------------------------------------------------------------- proxy


class FaultKind(StrEnum):
    """What a :class:`Fault` does to a matching exchange."""

    CUT = "cut"
    """Forward the response head and ``after`` body bytes, then close the connection."""
    FLIP = "flip"
    """Forward the response with the byte at blob offset ``offset`` inverted."""
    STATUS = "status"
    """Answer ``status`` (with ``Retry-After`` if given) without asking the registry."""
    BODY = "body"
    """Forward the registry's status and headers with ``body`` as the response body."""


_BLOB_PATH = r"/v2/(?:.+)/blobs/{digest}"
_MANIFEST_PATH = r"/v2/(?:.+)/manifests/{reference}"


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault the :class:`Proxy` injects into the exchanges it matches.

    A fault matches a request whose method is in ``methods`` and whose path (without the
    query) fully matches ``path``; it fires on the first ``times`` matches (``None``: every
    one). Build them with the class methods.

    Attributes:
        kind: what it does.
        path: a regular expression the whole request path must match.
        methods: the request methods it applies to.
        times: how many matching exchanges it fires on (``None``: all).
        after: body bytes forwarded before a :attr:`FaultKind.CUT`.
        offset: the blob offset of the byte a :attr:`FaultKind.FLIP` inverts.
        status: the status a :attr:`FaultKind.STATUS` answers.
        retry_after: the ``Retry-After`` seconds a :attr:`FaultKind.STATUS` sends.
        body: the body a :attr:`FaultKind.BODY` substitutes.
        headers: extra response headers a :attr:`FaultKind.STATUS` sends.
    """

    kind: FaultKind
    path: str
    methods: tuple[str, ...] = ("GET",)
    times: int | None = 1
    after: int = 0
    offset: int = 0
    status: int = 500
    retry_after: int | None = None
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def cut_blob(cls, digest: str, *, after: int, times: int | None = 1) -> Fault:
        """Cut a ``GET`` of blob ``digest`` after ``after`` body bytes."""
        return cls(FaultKind.CUT, _BLOB_PATH.format(digest=re.escape(digest)), times=times, after=after)

    @classmethod
    def flip_blob(cls, digest: str, *, offset: int, times: int | None = None) -> Fault:
        """Invert the byte at ``offset`` of blob ``digest`` in ``GET`` responses."""
        return cls(FaultKind.FLIP, _BLOB_PATH.format(digest=re.escape(digest)), times=times, offset=offset)

    @classmethod
    def error(
        cls,
        path: str,
        *,
        status: int = 500,
        times: int | None = 1,
        methods: Sequence[str] = ("GET", "HEAD"),
        retry_after: int | None = None,
    ) -> Fault:
        """Answer ``status`` to requests matching ``path`` (a regex) ``times`` times."""
        return cls(
            FaultKind.STATUS, path, tuple(methods), times, status=status, retry_after=retry_after
        )

    @classmethod
    def unauthorized(cls, path: str, challenge: str, *, times: int | None = 1,
                     methods: Sequence[str] = ("GET", "HEAD")) -> Fault:
        """Answer ``401`` with ``WWW-Authenticate: challenge`` to requests matching ``path``
        (a regex), as a registry does when it refuses a token it accepted before."""
        return cls(FaultKind.STATUS, path, tuple(methods), times, status=401,
                   headers=(("WWW-Authenticate", challenge),))

    @classmethod
    def blob_error(
        cls, digest: str, *, status: int = 500, times: int | None = 1, retry_after: int | None = None
    ) -> Fault:
        """Answer ``status`` to ``GET``/``HEAD`` of blob ``digest`` ``times`` times."""
        return cls.error(
            _BLOB_PATH.format(digest=re.escape(digest)),
            status=status,
            times=times,
            retry_after=retry_after,
        )

    @classmethod
    def replace_manifest(cls, reference: str, body: bytes, *, times: int | None = None) -> Fault:
        """Serve ``body`` instead of the manifest ``reference`` (a digest or tag) to ``GET``;
        the registry's headers (``Docker-Content-Digest`` included) are kept."""
        return cls(
            FaultKind.BODY, _MANIFEST_PATH.format(reference=re.escape(reference)), times=times, body=body
        )


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request the proxy handled.

    Attributes:
        method: the request method.
        path: the request path (no query).
        query: the query parameters (last value of each).
        status: the status the client got (0 if it got no response head).
        request_bytes: request body bytes received from the client.
        response_bytes: response body bytes sent to the client.
        fault: the kind of fault injected, if any.
        upload: the upload session ID for ``/blobs/uploads/<id>`` requests.
        request_headers: the client's request headers.
    """

    method: str
    path: str
    query: Mapping[str, str]
    status: int
    request_bytes: int
    response_bytes: int
    fault: FaultKind | None
    upload: str | None
    request_headers: Mapping[str, str] = field(default_factory=dict)


_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "date",
        "server",
    }
)
_UPLOAD = re.compile(r"^/v2/.+/blobs/uploads/(?P<id>[^/]+)$")
_BLOB = re.compile(r"^/v2/.+/blobs/(?P<digest>[a-z0-9]+:[a-f0-9]+)$")
_CHUNK = 64 * 1024


class _ArmedFault:
    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.fired = 0
        self.pattern = re.compile(fault.path)

    def take(self, method: str, path: str) -> bool:
        if method not in self.fault.methods or self.pattern.fullmatch(path) is None:
            return False
        if self.fault.times is not None and self.fired >= self.fault.times:
            return False
        self.fired += 1
        return True


class Proxy(tools.Service):
    """A counting, fault-injecting, streaming reverse proxy in front of a registry.

    ``with Proxy(registry.url) as proxy: ... proxy.address`` — point the client at
    ``proxy.address`` (plain HTTP on 127.0.0.1, whatever the upstream speaks). Bodies stream
    both ways in 64 KiB chunks; the client's ``Host`` is forwarded (with
    ``X-Forwarded-Proto: http``) so the registry's upload ``Location``\\ s point back at the
    proxy, and absolute ``Location``\\ s naming the upstream are rewritten to the proxy.

    Every exchange is recorded (:attr:`exchanges`); :meth:`uploaded_bytes` and
    :meth:`downloaded_bytes` total the body bytes of one blob each way (upload sessions are
    attributed to the digest their final ``PUT ?digest=`` names). :meth:`inject` arms a
    :class:`Fault`.
    """

    def __init__(self, upstream: str, *, ca_cert: Path | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self._ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca_cert)) if ca_cert is not None else False
        )
        self._server = _Server("strata-test-proxy")
        self._session: ClientSession | None = None
        self._lock = threading.Lock()
        self._faults: list[_ArmedFault] = []
        self._exchanges: list[Exchange] = []

    @property
    def port(self) -> int:
        """The port it listens on (0 before :meth:`start`)."""
        return self._server.port

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` to put in image references."""
        return f"{_LOOPBACK}:{self._server.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.address}"

    # ---- control (any thread)

    def inject(self, fault: Fault) -> None:
        """Arm ``fault`` (faults are tried in the order they were injected)."""
        with self._lock:
            self._faults.append(_ArmedFault(fault))

    def fired(self, fault: Fault) -> int:
        """How many exchanges ``fault`` has fired on so far (0 if it was never injected)."""
        with self._lock:
            return sum(a.fired for a in self._faults if a.fault == fault)

    def clear_faults(self) -> None:
        """Disarm every fault."""
        with self._lock:
            self._faults.clear()

    @property
    def exchanges(self) -> list[Exchange]:
        """A copy of the exchanges recorded so far, in the order they finished."""
        with self._lock:
            return list(self._exchanges)

    def settled(self, count: int, timeout: float = 10) -> list[Exchange]:
        """The exchanges once ``count`` have finished (a client can read a whole body before
        the proxy has recorded its end); fewer after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.exchanges) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.exchanges

    def reset(self) -> None:
        """Forget the recorded exchanges."""
        with self._lock:
            self._exchanges.clear()

    def totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(method, path) → (request body bytes, response body bytes), summed."""
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for ex in self.exchanges:
            sent, got = out.get((ex.method, ex.path), (0, 0))
            out[(ex.method, ex.path)] = (sent + ex.request_bytes, got + ex.response_bytes)
        return out

    def upload_digests(self) -> dict[str, str]:
        """Upload session ID → the digest its final ``PUT ?digest=`` named."""
        found: dict[str, str] = {}
        for ex in self.exchanges:
            if ex.method == "PUT" and ex.upload is not None and "digest" in ex.query:
                found[ex.upload] = ex.query["digest"]
        return found

    def uploaded_bytes(self, digest: str) -> int:
        """Request body bytes sent for blob ``digest``: every ``PATCH``/``PUT`` of an upload
        session finished with ``?digest=DIGEST``, and monolithic ``POST ?digest=DIGEST``."""
        sessions = {u for u, d in self.upload_digests().items() if d == digest}
        total = 0
        for ex in self.exchanges:
            in_session = ex.upload is not None and ex.upload in sessions
            if in_session or (ex.method == "POST" and ex.query.get("digest") == digest):
                total += ex.request_bytes
        return total

    def upload_bytes_total(self) -> int:
        """Request body bytes sent to any blob upload endpoint."""
        return sum(ex.request_bytes for ex in self.exchanges if "/blobs/uploads/" in ex.path + "/")

    def downloaded_bytes(self, digest: str) -> int:
        """Response body bytes of ``GET /v2/NAME/blobs/DIGEST`` sent to the client."""
        return sum(
            ex.response_bytes
            for ex in self.exchanges
            if ex.method == "GET" and (m := _BLOB.match(ex.path)) and m["digest"] == digest
        )

    def requests_for(self, method: str, pattern: str) -> list[Exchange]:
        """The exchanges with ``method`` whose path fully matches the regex ``pattern``."""
        rx = re.compile(pattern)
        return [ex for ex in self.exchanges if ex.method == method and rx.fullmatch(ex.path)]

    # ---- serving (the proxy's loop)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for armed in self._faults:
                if armed.take(method, path):
                    return armed.fault
        return None

    def _record(self, ex: Exchange) -> None:
        with self._lock:
            self._exchanges.append(ex)

    def _location(self, value: str) -> str:
        if value.startswith(self.upstream):
            return self.url + value[len(self.upstream) :]
        https_self = f"https://{self.address}"
        if value.startswith(https_self):
            return self.url + value[len(https_self) :]
        return value

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        query = {k: v for k, v in request.query.items()}
        m = _UPLOAD.match(path)
        upload = m["id"] if m else None
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        counts = {"in": 0, "out": 0, "status": 0}
        fault = self._take_fault(request.method, path)

        def record() -> None:
            self._record(
                Exchange(
                    request.method,
                    path,
                    query,
                    counts["status"],
                    counts["in"],
                    counts["out"],
                    fault.kind if fault else None,
                    upload,
                    headers,
                )
            )

        try:
            if fault is not None and fault.kind is FaultKind.STATUS:
                async for chunk in request.content.iter_chunked(_CHUNK):
                    counts["in"] += len(chunk)
                return await self._answer_status(request, fault, counts)
            return await self._forward(request, fault, counts)
        finally:
            record()

    async def _answer_status(
        self, request: web.Request, fault: Fault, counts: dict[str, int]
    ) -> web.Response:
        code = {429: "TOOMANYREQUESTS", 401: "UNAUTHORIZED"}.get(fault.status, "UNKNOWN")
        body = json.dumps({"errors": [{"code": code, "message": "injected by the test proxy"}]})
        extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        extra.update(fault.headers)
        counts["status"] = fault.status
        data = b"" if request.method == "HEAD" else body.encode()
        counts["out"] = len(data)
        return web.Response(
            status=fault.status, body=data, content_type="application/json", headers=extra
        )

    async def _forward(
        self, request: web.Request, fault: Fault | None, counts: dict[str, int]
    ) -> web.StreamResponse:
        assert self._session is not None
        out_headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        out_headers["Host"] = request.host
        out_headers["X-Forwarded-Proto"] = "http"
        has_body = request.body_exists
        if has_body and request.content_length is not None:
            out_headers["Content-Length"] = str(request.content_length)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.content.iter_chunked(_CHUNK):
                counts["in"] += len(chunk)
                yield chunk

        url = self.upstream + request.raw_path
        try:
            upstream = await self._session.request(
                request.method,
                url,
                headers=out_headers,
                data=body() if has_body else None,
                allow_redirects=False,
                ssl=self._ssl,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type", "Accept"),
            )
        except (client_exceptions.ClientError, OSError) as exc:
            counts["status"] = 502
            return web.Response(status=502, text=f"proxy: upstream failed: {exc}\n")
        async with upstream:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() in _HOP_BY_HOP:
                    continue
                resp.headers.add(key, self._location(value) if key.lower() == "location" else value)
            length = upstream.content_length
            if fault is not None and fault.kind is FaultKind.BODY:
                length = len(fault.body)
            if length is not None:
                resp.content_length = length
            counts["status"] = upstream.status
            await resp.prepare(request)
            if request.method == "HEAD":
                await resp.write_eof()
                return resp
            if fault is not None and fault.kind is FaultKind.BODY:
                await upstream.read()
                await resp.write(fault.body)
                counts["out"] += len(fault.body)
                await resp.write_eof()
                return resp
            start = 0
            content_range = upstream.headers.get("Content-Range", "")
            if m := re.match(r"bytes (\d+)-", content_range):
                start = int(m[1])
            position = start
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                data = chunk
                if fault is not None and fault.kind is FaultKind.FLIP:
                    i = fault.offset - position
                    if 0 <= i < len(data):
                        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                if fault is not None and fault.kind is FaultKind.CUT:
                    room = fault.after - counts["out"]
                    if room < len(data):
                        if room > 0:
                            await resp.write(data[:room])
                            counts["out"] += room
                        if request.transport is not None:
                            request.transport.close()
                        return resp
                await resp.write(data)
                counts["out"] += len(data)
                position += len(chunk)
            await resp.write_eof()
            return resp

    def start(self) -> None:
        """Start serving on a free loopback port."""

        async def open_session() -> None:
            self._session = ClientSession(
                connector=TCPConnector(limit=64, force_close=False),
                auto_decompress=False,
                timeout=ClientTimeout(total=None, sock_connect=10),
            )

        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server.start(app, on_start=open_session)

    def stop(self) -> None:
        """Stop serving and close upstream connections. Idempotent."""
        session, self._session = self._session, None
        if session is not None and self._server.running:
            self._server.call(session.close)
        self._server.stop()



# --------------------------------------------------------------------------- test images


@dataclass(frozen=True, slots=True)
class TestImage:
    """An image in an OCI layout, as a registry test needs to know it.

    Attributes:
        layout: the OCI layout directory.
        ref: its ``org.opencontainers.image.ref.name`` in the layout.
        manifest_digest: the digest of its manifest bytes.
        config_digest: the image ID.
        layers: ``(digest, size)`` of each layer blob, bottom first.
    """

    __test__ = False  # not a pytest test class

    layout: Path
    ref: str
    manifest_digest: str
    config_digest: str
    layers: tuple[tuple[str, int], ...]

    @property
    def layer_digests(self) -> tuple[str, ...]:
        """The layer blob digests, bottom first."""
        return tuple(d for d, _ in self.layers)

    @property
    def diff_ids(self) -> tuple[str, ...]:
        """The config's ``rootfs.diff_ids``, bottom first."""
        config = json.loads(self.blob(self.config_digest))
        return tuple(config["rootfs"]["diff_ids"])

    def blob(self, digest: str) -> bytes:
        """The bytes of blob ``digest`` in the layout."""
        algorithm, hex_ = digest.split(":", 1)
        return (self.layout / "blobs" / algorithm / hex_).read_bytes()

    def raw_manifest(self) -> bytes:
        """The exact manifest bytes."""
        return self.blob(self.manifest_digest)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layout_image(layout: Path, ref: str) -> TestImage:
    """Describe the image tagged ``ref`` in the OCI layout ``layout``.

    Raises:
        KeyError: no manifest in the layout's index has that ref name.
    """
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            digest = entry["digest"]
            break
    else:
        raise KeyError(f"{ref!r} is not in {layout}")
    algorithm, hex_ = digest.split(":", 1)
    manifest = json.loads((layout / "blobs" / algorithm / hex_).read_bytes())
    return TestImage(
        layout=layout,
        ref=ref,
        manifest_digest=digest,
        config_digest=manifest["config"]["digest"],
        layers=tuple((layer["digest"], int(layer["size"])) for layer in manifest["layers"]),
    )


def derive_image(
    base: TestImage,
    dest: Path,
    *,
    ref: str,
    files: Mapping[str, bytes],
    created_by: str = "COPY files /",
) -> TestImage:
    """A new OCI layout holding ``base`` plus one gzip layer of ``files``, tagged ``ref``.

    The base's blobs are copied unchanged, so the two images share every base layer; the new
    config extends the base's ``rootfs.diff_ids`` and ``history``.

    Args:
        base: the image to build on.
        dest: the layout directory to create.
        ref: the new image's ref name in the layout.
        files: path (relative, no leading ``/``) → content of the regular files to add.
        created_by: the history entry of the new layer.
    """
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    manifest = json.loads(base.raw_manifest())
    config = json.loads(base.blob(base.config_digest))
    for digest in (base.config_digest, *base.layer_digests):
        (blobs / digest.split(":", 1)[1]).write_bytes(base.blob(digest))
    entries = [tars.Entry(name, data=data, mode=0o644) for name, data in sorted(files.items())]
    tar = tars.build(entries)
    layer = gzip.compress(tar, compresslevel=6, mtime=0)
    (blobs / _sha256(layer).split(":", 1)[1]).write_bytes(layer)
    config["rootfs"]["diff_ids"].append(_sha256(tar))
    config.setdefault("history", []).append(
        {"created": "2024-01-01T00:00:00Z", "created_by": created_by}
    )
    raw_config = json.dumps(config, separators=(",", ":")).encode()
    (blobs / _sha256(raw_config).split(":", 1)[1]).write_bytes(raw_config)
    manifest["config"] = {**manifest["config"], "digest": _sha256(raw_config), "size": len(raw_config)}
    manifest["layers"].append(
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": _sha256(layer),
            "size": len(layer),
        }
    )
    raw_manifest = json.dumps(manifest, separators=(",", ":")).encode()
    (blobs / _sha256(raw_manifest).split(":", 1)[1]).write_bytes(raw_manifest)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": manifest.get("mediaType", "application/vnd.oci.image.manifest.v1+json"),
                "digest": _sha256(raw_manifest),
                "size": len(raw_manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index))
    return layout_image(dest, ref)


def skopeo_push(
    image: TestImage,
    registry: Registry,
    repository: str,
    *,
    creds: tuple[str, str] | None = None,
    address: str | None = None,
) -> str:
    """Push ``image`` to ``registry`` as ``REPOSITORY`` with skopeo, keeping its digest.

    Args:
        image: the image to push.
        registry: the registry (its TLS and plain-HTTP flags are used).
        repository: ``name:tag`` in that registry.
        creds: user and password.
        address: push to this ``host:port`` instead (a :class:`Proxy` in front of it).

    Returns:
        The pushed reference (``ADDRESS/REPOSITORY``).

    Raises:
        ToolError: skopeo failed.
    """
    target = f"{address or registry.address}/{repository}"
    flags = registry.skopeo_flags("dest", creds=creds)
    if address is not None and registry.tls is not None:
        flags = ["--dest-tls-verify=false", *flags[2:]]
    tools.skopeo_copy(
        f"oci:{image.layout}:{image.ref}",
        f"docker://{target}",
        extra=["--preserve-digests", *flags],
    )
    return target


def basic_auth(user: str, password: str) -> str:
    """An ``Authorization`` header value for basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def bearer_token(service: TokenService, user: str, password: str, scope: str) -> str:
    """Fetch a token from ``service`` for ``scope`` with basic credentials (a real HTTP
    round trip).

    Raises:
        urllib.error.HTTPError: the service refused (401 for wrong credentials).
    """
    query = urllib.parse.urlencode({"service": service.service, "scope": scope})
    req = urllib.request.Request(
        f"{service.realm}?{query}", headers={"Authorization": basic_auth(user, password)}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        token: str = json.loads(resp.read())["token"]
    return token
