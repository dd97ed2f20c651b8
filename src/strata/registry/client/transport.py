"""HTTP to one registry: pooling, TLS, authentication, retries, error mapping (urllib3).

:class:`Transport` is the only place where urllib3 is used and where its exceptions are
translated (into :mod:`strata.registry.client.errors`), once.  It:

* keeps a connection pool per registry (keep-alive; as many connections as workers);
* verifies TLS with the system CAs plus the configured ones, or speaks plain HTTP;
* answers ``401`` challenges (Bearer token flow or Basic), caching tokens per scope set and
  fetching a fresh one once when a cached token is refused;
* retries with exponential backoff (honouring ``Retry-After``) on 5xx, 429 and broken
  connections, as long as the request body can be produced again;
* follows redirects (blob downloads often redirect to storage), never sending the
  registry's ``Authorization`` header to another host.

Thread-safe: workers share one transport.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import BinaryIO

import urllib3
from urllib3.exceptions import HTTPError, SSLError
from urllib3.util import Retry, Timeout

from strata import __version__
from strata.registry.client.auth import Challenge, TokenCache, parse_challenges
from strata.registry.client.credentials import Credentials
from strata.registry.client.errors import (
    RegistryUnauthorized,
    RegistryUnavailable,
    error_for_status,
)
from strata.registry.client.hosts import Endpoint

__all__ = ["Body", "Response", "Transport", "read_chunks"]

log = logging.getLogger(__name__)

Response = urllib3.BaseHTTPResponse
#: A request body: bytes, or a factory making a fresh stream/iterable each attempt.
Body = bytes | Callable[[], BinaryIO | Iterable[bytes]] | None

_USER_AGENT = f"strata/{__version__}"
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class Transport:
    """Requests to one registry endpoint on behalf of one set of credentials."""

    def __init__(self, endpoint: Endpoint, *, credentials: Credentials | None = None,
                 retries: int = 4, timeout: float = 60.0, pool_size: int = 8,
                 backoff: float = 0.2) -> None:
        self.endpoint = endpoint
        self.credentials = credentials
        self.retries = retries
        self.backoff = backoff
        self.tokens = TokenCache()
        self._challenge: Challenge | None = None
        self._lock = threading.Lock()
        ctx = ssl.create_default_context()
        for ca in endpoint.ca_files:
            try:
                ctx.load_verify_locations(cafile=str(ca))
            except (OSError, ssl.SSLError) as exc:
                raise RegistryUnavailable(f"cannot load CA certificate {ca}: {exc}",
                                          registry=endpoint.registry, retryable=False) from exc
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=pool_size, block=False,
            timeout=Timeout(connect=min(timeout, 30.0), read=timeout),
            retries=Retry(total=10, connect=0, read=0, status=0, other=0, redirect=10,
                          raise_on_redirect=True, raise_on_status=False),
            ssl_context=ctx,
        )
        self._probed = not endpoint.plain_http_fallback

    def _probe(self) -> None:
        """Decide between HTTPS and plain HTTP for a registry that may speak either: HTTPS
        when it answers a TLS handshake (its certificate must verify), else plain HTTP."""
        with self._lock:
            if self._probed:
                return
            url = self.endpoint.base_url + "/v2/"
            try:
                resp = self._pool.request("GET", url, retries=False, preload_content=False,
                                          timeout=Timeout(connect=10.0, read=30.0))
                _drain(resp)
            except SSLError as exc:
                if _certificate_problem(exc):
                    raise RegistryUnavailable(
                        f"{self.endpoint.registry}: TLS certificate verification failed:"
                        f" {_reason(exc)} (trust its CA: /etc/docker/certs.d/"
                        f"{self.endpoint.registry}/ca.crt, registries.toml or --ca-cert)",
                        registry=self.endpoint.registry, retryable=False) from exc
                self.endpoint = self.endpoint.plain()
            except HTTPError:
                # No TLS spoken there (reset, garbage, refused): plain HTTP, as docker falls back.
                self.endpoint = self.endpoint.plain()
            self._probed = True

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` (``/v2/...``) or of a ``Location`` the registry sent."""
        return urllib.parse.urljoin(self.endpoint.base_url + "/", path)

    def close(self) -> None:
        self._pool.clear()

    # -- authentication ----------------------------------------------------------------
    def _auth_header(self, scopes: frozenset[str]) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            creds = self.credentials
            if creds is None or not creds.username:
                return None
            raw = f"{creds.username}:{creds.password}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        if challenge.scheme == "bearer":
            token = self.tokens.get(scopes)
            if token is None:
                token = self._fetch_token(challenge, scopes)
            return f"Bearer {token}"
        return None

    def _fetch_token(self, challenge: Challenge, scopes: frozenset[str]) -> str:
        """Ask the challenge's realm for a token covering ``scopes``.

        Raises:
            RegistryUnauthorized: the token service refused the credentials.
            RegistryUnavailable: it could not be reached.
        """
        if not challenge.realm:
            raise RegistryUnauthorized(f"{self.endpoint.registry}: Bearer challenge without realm",
                                       registry=self.endpoint.registry)
        creds = self.credentials
        params: list[tuple[str, str]] = []
        if challenge.service:
            params.append(("service", challenge.service))
        params.extend(("scope", s) for s in sorted(scopes))
        headers = {"User-Agent": _USER_AGENT}
        what = f"token from {challenge.realm}"
        try:
            if creds is not None and creds.identity_token:
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token,
                        "client_id": "strata", "service": challenge.service,
                        "scope": " ".join(sorted(scopes))}
                resp = self._pool.request("POST", challenge.realm, fields=form,
                                          encode_multipart=False, headers=headers)
            else:
                if creds is not None and creds.username:
                    raw = f"{creds.username}:{creds.password}".encode()
                    headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
                query = urllib.parse.urlencode(params)
                sep = "&" if "?" in challenge.realm else "?"
                resp = self._pool.request("GET", f"{challenge.realm}{sep}{query}", headers=headers)
        except HTTPError as exc:
            raise RegistryUnavailable(f"{what}: {exc}", registry=self.endpoint.registry) from exc
        if resp.status != 200:
            raise error_for_status(resp.status, resp.data, what=what,
                                   registry=self.endpoint.registry, scope=" ".join(sorted(scopes)))
        try:
            doc = json.loads(resp.data)
        except ValueError as exc:
            raise RegistryUnauthorized(f"{what}: the answer is not JSON",
                                       registry=self.endpoint.registry) from exc
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryUnauthorized(f"{what}: the answer holds no token",
                                       registry=self.endpoint.registry)
        expires_in = doc.get("expires_in", 60)
        self.tokens.put(scopes, token, float(expires_in) if isinstance(expires_in, int | float) else 60)
        return token

    # -- requests ----------------------------------------------------------------------
    def request(self, method: str, path: str, *, scopes: Iterable[str] = (),
                headers: Mapping[str, str] | None = None, body: Body = None,
                ok: Iterable[int] = (200,), what: str = "", stream: bool = False,
                retry_on: Callable[[int], None] | None = None) -> Response:
        """Send a request, authenticating and retrying as needed.

        Args:
            method: the HTTP method.
            path: ``/v2/...`` or an absolute URL (an upload ``Location``).
            scopes: the token scopes the request needs (``repository:a/b:pull``).
            headers: extra headers.
            body: the request body (a factory when it must be re-made for a retry).
            ok: the statuses that count as success (anything else raises).
            what: what is asked for, for error messages.
            stream: leave the body unread (the caller reads and releases it).
            retry_on: called with the attempt number before a retry (progress).

        Returns:
            The response; with ``stream`` its body is unread and the caller must
            ``release_conn()`` it, otherwise it is fully read (``.data``).

        Raises:
            RegistryUnauthorized: 401/403 after authenticating.
            RegistryNotFound: 404.
            RegistryUnavailable: 5xx/429/network failures after the retries.
            RegistryInvalid: another 4xx.
        """
        if not self._probed:
            self._probe()
        oks = frozenset(ok)
        scope_set = frozenset(scopes)
        url = self.url(path)
        what = what or f"{method} {url}"
        auth_tries = 0
        attempt = 0
        while True:
            hdrs = {"User-Agent": _USER_AGENT, **(headers or {})}
            auth = self._auth_header(scope_set)
            if auth is not None:
                hdrs["Authorization"] = auth
            payload: object = body() if callable(body) else body
            try:
                resp = self._pool.request(method, url, body=payload, headers=hdrs,  # type: ignore[arg-type]
                                          preload_content=False, decode_content=False)
            except SSLError as exc:
                hint = (" (certificate: trust its CA with /etc/docker/certs.d/"
                        f"{self.endpoint.registry}/ca.crt, registries.toml or --ca-cert)"
                        if _certificate_problem(exc) else "")
                raise RegistryUnavailable(
                    f"{what}: TLS failure talking to {self.endpoint.host}: {_reason(exc)}{hint}",
                    registry=self.endpoint.registry, retryable=False) from exc
            except HTTPError as exc:
                if attempt < self.retries:  # every Body can be produced again
                    attempt += 1
                    self._sleep(attempt, None)
                    if retry_on is not None:
                        retry_on(attempt)
                    continue
                raise RegistryUnavailable(f"{what}: {_reason(exc)}",
                                          registry=self.endpoint.registry) from exc
            status = resp.status
            if status == 401 and auth_tries < 2:
                auth_tries += 1
                header = resp.headers.get("WWW-Authenticate", "")
                _drain(resp)
                challenges = parse_challenges(header)
                chosen = next((c for c in challenges if c.scheme == "bearer"), None) or next(
                    (c for c in challenges if c.scheme == "basic"), None)
                had_auth = auth is not None
                if chosen is None:
                    raise RegistryUnauthorized(f"{what}: unauthorized (no usable challenge in"
                                               f" {header!r})", status=401,
                                               registry=self.endpoint.registry)
                if chosen.scheme == "basic" and (self.credentials is None
                                                 or not self.credentials.username):
                    raise RegistryUnauthorized(f"{what}: unauthorized: authentication required"
                                               " (log in first)", status=401,
                                               registry=self.endpoint.registry)
                if had_auth and chosen.scheme == "basic":
                    raise RegistryUnauthorized(f"{what}: unauthorized: incorrect username or"
                                               " password", status=401,
                                               registry=self.endpoint.registry)
                with self._lock:
                    self._challenge = chosen
                if had_auth:
                    self.tokens.drop(scope_set)
                continue
            if status in oks:
                if not stream:
                    try:
                        resp.read(cache_content=True)  # kept as .data
                    except HTTPError as exc:
                        resp.release_conn()
                        raise RegistryUnavailable(f"{what}: {_reason(exc)}",
                                                  registry=self.endpoint.registry) from exc
                    resp.release_conn()
                return resp
            if status in _RETRY_STATUSES and attempt < self.retries:
                attempt += 1
                retry_after = resp.headers.get("Retry-After")
                _drain(resp)
                self._sleep(attempt, retry_after)
                if retry_on is not None:
                    retry_on(attempt)
                continue
            data = resp.read()
            resp.release_conn()
            raise error_for_status(status, data, what=what, registry=self.endpoint.registry,
                                   scope=" ".join(sorted(scope_set)))

    def open_url(self, url: str, *, offset: int = 0) -> Response:
        """GET an absolute URL outside the registry API (a foreign layer's ``urls``),
        without the registry's credentials; the caller reads and releases the response.

        Raises:
            RegistryUnavailable: no answer, or not 200/206.
        """
        if not url.startswith(("https://", "http://")):
            raise RegistryUnavailable(f"foreign layer URL {url!r} is not http(s)",
                                      registry=self.endpoint.registry, retryable=False)
        headers = {"User-Agent": _USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = self._pool.request("GET", url, headers=headers, preload_content=False,
                                      decode_content=False)
        except HTTPError as exc:
            raise RegistryUnavailable(f"GET {url}: {_reason(exc)}",
                                      registry=self.endpoint.registry) from exc
        if resp.status not in (200, 206):
            _drain(resp)
            raise RegistryUnavailable(f"GET {url}: HTTP {resp.status}",
                                      registry=self.endpoint.registry, retryable=False)
        return resp

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff * (2 ** (attempt - 1))
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), 30.0))
            except ValueError:
                pass
        log.debug("retrying %s in %.2fs (attempt %d)", self.endpoint.registry, delay, attempt)
        time.sleep(min(delay, 10.0))


def _drain(resp: Response) -> None:
    try:
        resp.read()
    except HTTPError:
        pass
    resp.release_conn()


def _certificate_problem(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        reason = getattr(seen, "reason", None)
        seen = seen.__cause__ or seen.__context__ or (
            reason if isinstance(reason, BaseException) else None)
    return False


def _reason(exc: HTTPError) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)


def read_chunks(resp: Response, size: int = 1 << 20) -> Iterable[bytes]:
    """The body of a streamed response, translating connection failures.

    Raises:
        RegistryUnavailable: the connection broke mid-body (retryable: resume with Range).
    """
    try:
        while True:
            chunk = resp.read(size)
            if not chunk:
                return
            yield chunk
    except HTTPError as exc:
        raise RegistryUnavailable(f"connection broken while reading: {_reason(exc)}") from exc
    except OSError as exc:
        raise RegistryUnavailable(f"connection broken while reading: {exc}") from exc
