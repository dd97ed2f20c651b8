"""Registry authentication: ``WWW-Authenticate`` challenges, bearer tokens, basic auth.

The flow is the distribution "token authentication" spec as docker runs it:

1. a request answered ``401`` carries ``WWW-Authenticate: Bearer realm="…",service="…",
   scope="…"`` (or ``Basic realm="…"``);
2. for Bearer, the client asks ``realm?service=…&scope=…`` for a token, with basic
   credentials when it has some (or an OAuth2 ``refresh_token`` POST for an identity token),
   and retries the request with ``Authorization: Bearer <token>``;
3. tokens are cached per set of scopes until they expire; a ``401`` on a cached token drops
   it and fetches a fresh one once.

This module parses and caches; the HTTP round trips are the transport's.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

__all__ = ["Challenge", "TokenCache", "parse_challenges", "repository_scope"]

_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a scheme (lower case) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scope(self) -> str:
        return self.params.get("scope", "")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` header (one or more challenges, RFC 7235).

    >>> parse_challenges('Bearer realm="https://a/token",service="reg",scope="repository:x:pull"')[0].service
    'reg'
    """
    out: list[Challenge] = []
    text = header.strip()
    while text:
        m = re.match(r"([A-Za-z][A-Za-z0-9_-]*)\s*", text)
        if m is None:
            break
        scheme = m.group(1).lower()
        text = text[m.end():]
        params: dict[str, str] = {}
        while True:
            pm = _PARAM.match(text)
            if pm is None or not pm.group(0).strip():
                break
            # A new scheme token ("Basic realm=") is not a parameter of this challenge.
            if pm.group(1) and not re.match(r"\s*[A-Za-z0-9_.-]+\s*=", text):
                break
            value = pm.group(2) if pm.group(2) is not None else (pm.group(3) or "")
            params[pm.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
            text = text[pm.end():]
            if re.match(r"\s*[A-Za-z][A-Za-z0-9_-]*\s+[A-Za-z0-9_.-]+\s*=", text):
                break
        out.append(Challenge(scheme, params))
        text = text.lstrip(" ,")
    return out


def repository_scope(repository: str, *actions: str) -> str:
    """``repository:NAME:pull,push``."""
    return f"repository:{repository}:{','.join(actions)}"


@dataclass(slots=True)
class _Token:
    value: str
    expires: float


class TokenCache:
    """Bearer tokens by set of scopes, thread-safe; expired tokens are never returned."""

    def __init__(self) -> None:
        self._tokens: dict[frozenset[str], _Token] = {}
        self._lock = threading.Lock()

    def get(self, scopes: frozenset[str]) -> str | None:
        with self._lock:
            token = self._tokens.get(scopes)
            if token is None:
                # A token granted for a superset of scopes serves a subset too.
                for key, candidate in self._tokens.items():
                    if scopes <= key and candidate.expires > time.monotonic():
                        return candidate.value
                return None
            if token.expires <= time.monotonic():
                del self._tokens[scopes]
                return None
            return token.value

    def put(self, scopes: frozenset[str], value: str, expires_in: float) -> None:
        # Renew a little early so a token never expires between the check and the request.
        with self._lock:
            self._tokens[scopes] = _Token(value, time.monotonic() + max(1.0, expires_in - 10))

    def drop(self, scopes: frozenset[str]) -> None:
        with self._lock:
            self._tokens.pop(scopes, None)
            for key in [k for k in self._tokens if scopes <= k]:
                del self._tokens[key]
