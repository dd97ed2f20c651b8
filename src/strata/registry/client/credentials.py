"""Credentials from docker's ``config.json``, as the docker CLI keeps them.

* ``auths.<registry>.auth``: base64 of ``user:password`` (or ``username``/``password``
  fields, or an ``identitytoken``);
* ``credHelpers.<registry>`` (one helper per registry) or ``credsStore`` (one for all): the
  program ``docker-credential-<name>`` is run with ``get`` / ``store`` / ``erase`` and speaks
  JSON on stdin/stdout (docker-credential-helpers protocol);
* keys are matched by host, so ``https://index.docker.io/v1/``, ``http://host:5000`` and
  ``host:5000`` all name the registry they point at.

The file is ``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``.  It is rewritten
atomically, keeping every other key it holds and mode 0600.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from strata.errors import InvalidContent, NotFound, Unavailable

__all__ = ["Credentials", "CredentialStore", "default_docker_config"]


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password, or an identity (refresh) token."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:  # never show secrets in tracebacks or logs
        return f"Credentials(username={self.username!r}, password=***)"


def default_docker_config() -> Path:
    """``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``."""
    base = os.environ.get("DOCKER_CONFIG")
    return (Path(base) if base else Path.home() / ".docker") / "config.json"


def _host_of(key: str) -> str:
    key = key.strip()
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key.split("/", 1)[0]


class CredentialStore:
    """Reads and writes credentials in one docker ``config.json``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_docker_config()

    def _load(self) -> dict[str, object]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise Unavailable(f"reading {self.path}: {exc.strerror}", retryable=False) from exc
        if not raw.strip():
            return {}
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise InvalidContent(f"{self.path}: not valid JSON: {exc}", path=str(self.path)) from exc
        if not isinstance(doc, dict):
            raise InvalidContent(f"{self.path}: expected a JSON object", path=str(self.path))
        return doc

    def _save(self, doc: dict[str, object]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".config.json.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent="\t")
                f.write("\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _helper(self, doc: dict[str, object], key: str) -> str | None:
        helpers = doc.get("credHelpers")
        if isinstance(helpers, dict):
            for k, v in helpers.items():
                if _host_of(k) == _host_of(key) and isinstance(v, str) and v:
                    return v
        store = doc.get("credsStore")
        return store if isinstance(store, str) and store else None

    def get(self, key: str) -> Credentials | None:
        """The credentials stored for a registry (``Endpoint.auth_key``), or None.

        Raises:
            InvalidContent: the file or an ``auth`` entry is malformed.
            Unavailable: a credential helper failed.
        """
        doc = self._load()
        helper = self._helper(doc, key)
        if helper is not None:
            found = self._run_helper(helper, "get", key)
            if found is not None:
                return found
        auths = doc.get("auths")
        if not isinstance(auths, dict):
            return None
        for k, entry in auths.items():
            if _host_of(k) != _host_of(key) or not isinstance(entry, dict):
                continue
            token = entry.get("identitytoken")
            auth = entry.get("auth")
            if isinstance(auth, str) and auth:
                try:
                    user, sep, password = base64.b64decode(auth).decode().partition(":")
                except (binascii.Error, UnicodeDecodeError) as exc:
                    raise InvalidContent(f"{self.path}: auths[{k!r}].auth is not base64 of"
                                         " user:password", path=str(self.path)) from exc
                if not sep:
                    raise InvalidContent(f"{self.path}: auths[{k!r}].auth is not base64 of"
                                         " user:password", path=str(self.path))
                return Credentials(user, password, token if isinstance(token, str) else "")
            name = entry.get("username")
            secret = entry.get("password")
            if isinstance(name, str) and isinstance(secret, str):
                return Credentials(name, secret)
            if isinstance(token, str) and token:
                return Credentials(identity_token=token)
        return None

    def store(self, key: str, creds: Credentials) -> None:
        """Save credentials for a registry: in its helper if one is configured, else in
        ``auths`` (base64, as ``docker login`` without a helper)."""
        doc = self._load()
        helper = self._helper(doc, key)
        if helper is not None:
            secret = creds.identity_token or creds.password
            user = "<token>" if creds.identity_token else creds.username
            payload = json.dumps({"ServerURL": key, "Username": user, "Secret": secret})
            self._call(helper, "store", payload)
            return
        auths = doc.get("auths")
        if not isinstance(auths, dict):
            auths = {}
        for k in [k for k in auths if _host_of(k) == _host_of(key)]:
            del auths[k]
        entry: dict[str, str] = {
            "auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        }
        if creds.identity_token:
            entry = {"identitytoken": creds.identity_token}
        auths[key] = entry
        doc["auths"] = auths
        self._save(doc)

    def erase(self, key: str) -> None:
        """Forget the credentials of a registry.

        Raises:
            NotFound: none were stored (docker: ``Not logged in to ...``).
        """
        doc = self._load()
        found = False
        helper = self._helper(doc, key)
        if helper is not None and self._run_helper(helper, "get", key) is not None:
            self._call(helper, "erase", key)
            found = True
        auths = doc.get("auths")
        if isinstance(auths, dict):
            keys = [k for k in auths if _host_of(k) == _host_of(key)]
            for k in keys:
                del auths[k]
            if keys:
                found = True
                self._save(doc)
        if not found:
            raise NotFound(f"Not logged in to {key}")

    def _run_helper(self, helper: str, action: str, key: str) -> Credentials | None:
        out = self._call(helper, action, key, missing_ok=True)
        if out is None:
            return None
        try:
            doc = json.loads(out)
        except ValueError as exc:
            raise InvalidContent(f"docker-credential-{helper} {action}: not JSON") from exc
        if not isinstance(doc, dict):
            raise InvalidContent(f"docker-credential-{helper} {action}: expected an object")
        user = str(doc.get("Username") or "")
        secret = str(doc.get("Secret") or "")
        if user == "<token>":
            return Credentials(identity_token=secret)
        return Credentials(user, secret)

    def _call(self, helper: str, action: str, payload: str, *, missing_ok: bool = False,
              ) -> str | None:
        program = f"docker-credential-{helper}"
        try:
            proc = subprocess.run([program, action], input=payload, capture_output=True,
                                  text=True, timeout=60, check=False)
        except FileNotFoundError as exc:
            raise Unavailable(f"credential helper {program} is not installed (configured in"
                              f" {self.path})", retryable=False) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"credential helper {program} {action}: {exc}") from exc
        if proc.returncode != 0:
            text = (proc.stdout + proc.stderr).strip()
            if missing_ok and "credentials not found" in text.lower():
                return None
            raise Unavailable(f"credential helper {program} {action} failed: {text}",
                              retryable=False)
        return proc.stdout
