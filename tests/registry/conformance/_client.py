"""A small registry HTTP client with the behaviour the upstream suite gets from ``reggie``
(github.com/bloodorangeio/reggie): path templates (``/v2/<name>/blobs/<digest>``), chainable
requests, ``Location`` helpers, the spec's error body, and basic / bearer-token auth on 401.

It runs real HTTP over aiohttp, synchronously (one private event loop), and never raises
for a status code: the specs look at statuses themselves. ``Content-Length`` set by a spec
is not sent as given; the transport writes the body's real length (as Go's ``net/http``
does, which ignores a ``Content-Length`` header and uses the body).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import Self

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = ["Client", "ErrorInfo", "Request", "Response"]

USER_AGENT = "distribution-spec-conformance-tests"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """One entry of the spec's ``{"errors": [...]}`` body."""

    code: str
    message: str


@dataclass
class Request:
    """A request being built: ``client.request("PUT", path).set_header(...).set_body(...)``."""

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    query: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None

    def set_header(self, name: str, value: str) -> Self:
        """Set a header (replacing one of the same name)."""
        for key in list(self.headers):
            if key.lower() == name.lower():
                del self.headers[key]
        self.headers[name] = value
        return self

    def set_query_param(self, name: str, value: str) -> Self:
        """Set a query parameter (replacing one of the same name)."""
        self.query = [(k, v) for k, v in self.query if k != name]
        self.query.append((name, value))
        return self

    def set_body(self, body: bytes) -> Self:
        """Set the request body."""
        self.body = body
        return self


@dataclass(frozen=True)
class Response:
    """A complete response (the body is read; empty for HEAD)."""

    method: str
    url: str
    status_code: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def header(self, name: str) -> str:
        """The first value of a header, or ``""`` (Go's ``Header().Get``)."""
        return self.headers.get(name, "")

    def get_relative_location(self) -> str:
        """The ``Location`` header's path and query, without scheme and host (reggie's
        ``GetRelativeLocation``); ``""`` without a Location."""
        loc = self.header("Location")
        if not loc:
            return ""
        parts = urllib.parse.urlsplit(loc)
        path = parts.path
        if parts.query:
            path += "?" + parts.query
        return path

    def get_absolute_location(self) -> str:
        """The ``Location`` header resolved against the request URL (reggie's
        ``GetAbsoluteLocation``); ``""`` without a Location."""
        loc = self.header("Location")
        if not loc:
            return ""
        return urllib.parse.urljoin(self.url, loc)

    def errors(self) -> list[ErrorInfo]:
        """The spec's error list from the body.

        Raises:
            ValueError: the body is not an error document (upstream's ``resp.Errors()``
                returns an error then, which the specs assert is nil).
        """
        doc = json.loads(self.body)
        if not isinstance(doc, dict) or not isinstance(doc.get("errors"), list):
            raise ValueError(f"not an error body: {self.body[:200]!r}")
        found = []
        for item in doc["errors"]:
            if not isinstance(item, dict):
                raise ValueError(f"malformed error entry: {item!r}")
            found.append(ErrorInfo(code=str(item.get("code", "")), message=str(item.get("message", ""))))
        return found

    def describe(self) -> str:
        """A one-line summary for assertion messages."""
        text = self.body[:300].decode("utf-8", "replace")
        return f"{self.method} {self.url} -> {self.status_code} {text!r}"


_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class Client:
    """A registry client bound to a root URL and a default repository name.

    Args:
        root_url: ``http://host:port`` (``OCI_ROOT_URL``).
        more_root_urls: other servers of the same registry; each request goes to the next
            server in turn (round robin), as behind a load balancer with no affinity.
        default_name: the repository ``<name>`` stands for (``OCI_NAMESPACE``).
        username: for basic auth or the token endpoint (``OCI_USERNAME``).
        password: its password (``OCI_PASSWORD``).
        auth_scope: a scope to ask tokens for instead of the challenge's (``OCI_AUTH_SCOPE``).
        debug: write every exchange to stderr (``OCI_DEBUG``).
    """

    def __init__(
        self,
        root_url: str,
        default_name: str,
        *,
        more_root_urls: tuple[str, ...] = (),
        username: str = "",
        password: str = "",
        auth_scope: str = "",
        debug: bool = False,
    ) -> None:
        self.root_url = root_url.rstrip("/")
        self._root_urls = [u.rstrip("/") for u in (root_url, *more_root_urls)]
        self._next = 0
        self.default_name = default_name
        self.username = username
        self.password = password
        self.auth_scope = auth_scope
        self.debug = debug
        self._loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._authorization: str | None = None

    def request(
        self,
        method: str,
        path: str,
        *,
        name: str | None = None,
        digest: str | None = None,
        reference: str | None = None,
    ) -> Request:
        """A new request; ``<name>``, ``<digest>`` and ``<reference>`` in ``path`` are
        replaced (reggie's ``WithName`` / ``WithDigest`` / ``WithReference``)."""
        path = path.replace("<name>", name if name is not None else self.default_name)
        if digest is not None:
            path = path.replace("<digest>", digest)
        if reference is not None:
            path = path.replace("<reference>", reference)
        split = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
        return Request(method=method, path=split.path, query=query)

    def do(self, req: Request) -> Response:
        """Send ``req`` (answering one auth challenge if the registry asks) and read the
        whole response."""
        return self._loop.run_until_complete(self._do(req))

    def close(self) -> None:
        """Close the connection pool and the loop. Idempotent."""
        if self._loop.is_closed():
            return
        if self._session is not None:
            self._loop.run_until_complete(self._session.close())
            self._session = None
        self._loop.close()

    # ------------------------------------------------------------------ internals

    def _url(self, req: Request) -> URL:
        root = self._root_urls[self._next % len(self._root_urls)]
        self._next += 1
        target = root + req.path
        if req.query:
            target += "?" + urllib.parse.urlencode(req.query)
        return URL(target, encoded=True)

    async def _do(self, req: Request) -> Response:
        if self._session is None:
            # As upstream configures reggie: no cookie jar, TLS certificates not verified.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=300),
                headers={"User-Agent": USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(ssl=False),
            )
        resp = await self._send(req)
        if resp.status_code == 401 and await self._authenticate(resp):
            resp = await self._send(req)
        return resp

    async def _send(self, req: Request) -> Response:
        assert self._session is not None
        headers = CIMultiDict(req.headers)
        headers.popall("Content-Length", None)
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        body = req.body
        if body is None and req.method in ("POST", "PUT", "PATCH"):
            body = b""
        url = self._url(req)
        # Send only the headers a spec sets (Go adds no Content-Type on its own).
        skip = () if "Content-Type" in headers else ("Content-Type",)
        async with self._session.request(
            req.method, url, headers=headers, data=body, skip_auto_headers=skip
        ) as resp:
            data = b"" if req.method == "HEAD" else await resp.read()
            result = Response(
                method=req.method,
                url=str(resp.url),
                status_code=resp.status,
                headers=CIMultiDictProxy(CIMultiDict(resp.headers)),
                body=data,
            )
        if self.debug:
            # shown by pytest as "Captured stderr" of a failing spec (-s: live)
            sys.stderr.write(
                f"> {req.method} {url} ({len(body or b'')} bytes) {dict(headers)}\n"
                f"< {result.status_code} {dict(result.headers)}\n< {result.body[:500]!r}\n"
            )
        return result

    async def _authenticate(self, resp: Response) -> bool:
        """Answer a 401 challenge: basic credentials, or a bearer token from the realm."""
        challenge = resp.header("WWW-Authenticate")
        scheme, _, params_text = challenge.partition(" ")
        credentials = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if scheme.lower() == "basic":
            self._authorization = f"Basic {credentials}"
            return True
        if scheme.lower() != "bearer":
            return False
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        realm = params.get("realm")
        if not realm:
            return False
        query = []
        if params.get("service"):
            query.append(("service", params["service"]))
        scope = self.auth_scope or params.get("scope", "")
        for item in scope.split(" "):
            if item:
                query.append(("scope", item))
        assert self._session is not None
        headers = {}
        if self.username or self.password:
            headers["Authorization"] = f"Basic {credentials}"
        token_url = realm + ("?" + urllib.parse.urlencode(query) if query else "")
        async with self._session.get(token_url, headers=headers) as token_resp:
            if token_resp.status != 200:
                return False
            doc = await token_resp.json(content_type=None)
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not token:
            return False
        self._authorization = f"Bearer {token}"
        return True
