"""Endpoints, registries.toml, ``WWW-Authenticate`` parsing, docker config.json credentials
(with a real credential-helper program), and the registry error mapping."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from strata.errors import InvalidContent, NotFound, Unauthorized, Unavailable
from strata.registry.client import (
    Credentials,
    CredentialStore,
    RegistryError,
    RegistryNotFound,
    RegistryOptions,
    is_loopback,
    load_registries_toml,
    parse_challenges,
)
from strata.registry.client.errors import error_for_status
from strata.registry.client.hosts import DOCKER_HUB_AUTH_KEY


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("[::1]:5000", True),
        ("registry.lan:5000", False),
        ("10.0.0.1:5000", False),
        ("docker.io", False),
    ],
    ids=str,
)
def test_is_loopback(registry: str, expected: bool) -> None:
    assert is_loopback(registry) is expected


def test_docker_hub_endpoint_and_auth_key() -> None:
    endpoint = RegistryOptions(certs_dirs=()).endpoint("docker.io")
    assert endpoint.base_url == "https://registry-1.docker.io"
    assert endpoint.auth_key == DOCKER_HUB_AUTH_KEY
    assert not endpoint.plain_http_fallback


def test_loopback_and_insecure_may_fall_back_to_plain_http() -> None:
    options = RegistryOptions(insecure=frozenset({"registry.lan:5000"}), certs_dirs=())
    assert options.endpoint("127.0.0.1:5000").plain_http_fallback
    assert options.endpoint("registry.lan:5000").plain_http_fallback
    assert not options.endpoint("quay.io").plain_http_fallback
    plain = options.endpoint("127.0.0.1:5000").plain()
    assert plain.base_url == "http://127.0.0.1:5000"


def test_certs_d_ca_makes_https_mandatory(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d" / "127.0.0.1:5443"
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_text("not used here")
    endpoint = RegistryOptions(certs_dirs=(tmp_path / "certs.d",)).endpoint("127.0.0.1:5443")
    assert endpoint.secure and not endpoint.plain_http_fallback
    assert endpoint.ca_files == (certs / "ca.crt",)


def test_registries_toml(tmp_path: Path) -> None:
    path = tmp_path / "registries.toml"
    path.write_text('[[registry]]\nlocation = "a.lan:5000"\ninsecure = true\n\n'
                    '[[registry]]\nlocation = "b.lan"\nca = "/etc/b.pem"\n')
    insecure, cas = load_registries_toml(path)
    assert insecure == frozenset({"a.lan:5000"})
    assert cas == {"b.lan": Path("/etc/b.pem")}
    options = RegistryOptions(certs_dirs=()).with_config_file(path)
    assert options.endpoint("a.lan:5000").plain_http_fallback
    assert options.endpoint("b.lan").ca_files == (Path("/etc/b.pem"),)
    assert load_registries_toml(tmp_path / "missing.toml") == (frozenset(), {})


@pytest.mark.parametrize("text", ["[[registry]]\ninsecure = true\n", "registry = 3\n", "[[x"],
                         ids=["no-location", "not-array", "bad-toml"])
def test_registries_toml_rejects_malformed(tmp_path: Path, text: str) -> None:
    path = tmp_path / "registries.toml"
    path.write_text(text)
    with pytest.raises(InvalidContent):
        load_registries_toml(path)


def test_parse_bearer_challenge() -> None:
    (c,) = parse_challenges('Bearer realm="https://auth.example/token",service="registry.example",'
                            'scope="repository:a/b:pull,push"')
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.example/token"
    assert c.service == "registry.example"
    assert c.scope == "repository:a/b:pull,push"


def test_parse_basic_and_several_challenges() -> None:
    challenges = parse_challenges('Basic realm="Registry Realm", Bearer realm="https://t/x"')
    assert [(c.scheme, c.realm) for c in challenges] == [("basic", "Registry Realm"),
                                                         ("bearer", "https://t/x")]


def _write_config(path: Path, doc: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_credentials_from_auths(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    auth = base64.b64encode(b"alice:s3:cret").decode()
    _write_config(path, {"auths": {"http://127.0.0.1:5000/v2/": {"auth": auth},
                                   DOCKER_HUB_AUTH_KEY: {"username": "u", "password": "p"}}})
    store = CredentialStore(path)
    assert store.get("127.0.0.1:5000") == Credentials("alice", "s3:cret")
    assert store.get(DOCKER_HUB_AUTH_KEY) == Credentials("u", "p")
    assert store.get("other:1") is None


def test_store_and_erase_keep_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "docker" / "config.json"
    _write_config(path, {"psFormat": "table {{.ID}}", "auths": {}})
    store = CredentialStore(path)
    store.store("127.0.0.1:5000", Credentials("bob", "pw"))
    doc = json.loads(path.read_text())
    assert doc["psFormat"] == "table {{.ID}}"
    assert base64.b64decode(doc["auths"]["127.0.0.1:5000"]["auth"]) == b"bob:pw"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    store.erase("127.0.0.1:5000")
    assert json.loads(path.read_text())["auths"] == {}
    with pytest.raises(NotFound):
        store.erase("127.0.0.1:5000")


def test_malformed_auth_entry_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    _write_config(path, {"auths": {"r:1": {"auth": base64.b64encode(b"nocolon").decode()}}})
    with pytest.raises(InvalidContent, match="user:password"):
        CredentialStore(path).get("r:1")


_HELPER = """#!/bin/sh
# A docker credential helper keeping one JSON file per server next to itself.
dir="$(dirname "$0")/store"
mkdir -p "$dir"
read -r input
case "$1" in
  get) key=$(printf %s "$input" | tr '/:' '__')
       if [ -f "$dir/$key" ]; then cat "$dir/$key"
       else echo "credentials not found in native keychain"; exit 1; fi ;;
  store) key=$(printf %s "$input" | sed 's/.*"ServerURL": *"\\([^"]*\\)".*/\\1/' | tr '/:' '__')
       printf %s "$input" > "$dir/$key" ;;
  erase) key=$(printf %s "$input" | tr '/:' '__'); rm -f "$dir/$key" ;;
esac
"""


def test_credential_helper_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-strata-test"
    helper.write_text(_HELPER)
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    path = tmp_path / "config.json"
    _write_config(path, {"credHelpers": {"127.0.0.1:5000": "strata-test"}})
    store = CredentialStore(path)
    assert store.get("127.0.0.1:5000") is None
    store.store("127.0.0.1:5000", Credentials("carol", "helper-secret"))
    assert "auths" not in json.loads(path.read_text())  # kept by the helper, not the file
    assert store.get("127.0.0.1:5000") == Credentials("carol", "helper-secret")
    store.erase("127.0.0.1:5000")
    assert store.get("127.0.0.1:5000") is None


def test_missing_credential_helper_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    _write_config(path, {"credsStore": "strata-no-such-helper"})
    with pytest.raises(Unavailable, match="not installed"):
        CredentialStore(path).get("127.0.0.1:5000")


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, Unauthorized), (403, Unauthorized), (404, NotFound), (429, Unavailable),
     (503, Unavailable)],
    ids=["401", "403", "404", "429", "503"],
)
def test_error_for_status_maps_onto_the_error_tree(status: int, kind: type[Exception]) -> None:
    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown",
                                   "detail": {"Tag": "x"}}]}).encode()
    exc = error_for_status(status, body, what="manifest r/a:x", registry="r")
    assert isinstance(exc, kind) and isinstance(exc, RegistryError)
    assert exc.code == "MANIFEST_UNKNOWN"
    assert exc.status == status
    assert "manifest unknown" in str(exc)
    if status == 404:
        assert isinstance(exc, RegistryNotFound)
