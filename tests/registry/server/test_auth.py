"""Auth: htpasswd (bcrypt) basic auth, the built-in token endpoint, tokens from an external
issuer verified with its public key, per-repository pull/push/delete rules, anonymous read;
and real clients (skopeo) pushing and pulling through both schemes."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from strata.testing import baseimages, tools
from strata.testing.registry_server import HTTPAnswer, StrataRegistry, http_request

USERS = {"alice": "wonderland", "bob": "builder", "carol": "singer"}
RULES = [
    {"repository": "team/*", "users": ["alice"], "actions": ["pull", "push", "delete"]},
    {"repository": "team/*", "users": ["bob"], "actions": ["pull"]},
    {"repository": "public/*", "users": ["*"], "actions": ["pull", "push"]},
]


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _basic(user: str, password: str | None = None) -> dict[str, str]:
    secret = f"{user}:{password if password is not None else USERS[user]}".encode()
    return {"Authorization": "Basic " + base64.b64encode(secret).decode()}


def _htpasswd(path: Path) -> Path:
    path.write_text("".join(
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n" for u, p in USERS.items()
    ))
    return path


def _push(reg: StrataRegistry, repo: str, data: bytes, headers: dict[str, str]) -> HTTPAnswer:
    return http_request(reg.url, "POST", f"/v2/{repo}/blobs/uploads/?digest={_d(data)}", body=data,
                        headers=headers)


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[StrataRegistry]:
    config = {
        "auth": {"htpasswd": {"realm": "strata-test", "path": str(_htpasswd(tmp_path / "htpasswd"))}},
        "access": {"anonymous": ["pull"], "rules": RULES},
    }
    with StrataRegistry(tmp_path / "reg", config=config) as reg:
        yield reg


def test_basic_auth_enforces_per_repository_permissions(basic_registry: StrataRegistry) -> None:
    reg = basic_registry
    data = b"team secret"
    r = _push(reg, "team/app", data, {})
    assert r.status == 401 and r.error_codes == ["UNAUTHORIZED"]
    assert r.headers["www-authenticate"] == 'Basic realm="strata-test"'
    r = _push(reg, "team/app", data, _basic("alice", "wrong"))
    assert r.status == 401
    assert _push(reg, "team/app", data, _basic("alice")).status == 201
    r = _push(reg, "team/app", b"bob was here", _basic("bob"))
    assert r.status == 403 and r.error_codes == ["DENIED"]
    assert http_request(reg.url, "GET", f"/v2/team/app/blobs/{_d(data)}", headers=_basic("bob")).body == data
    r = http_request(reg.url, "DELETE", f"/v2/team/app/blobs/{_d(data)}", headers=_basic("bob"))
    assert r.status == 403
    r = http_request(reg.url, "GET", f"/v2/team/app/blobs/{_d(data)}", headers=_basic("carol"))
    assert r.status == 200  # anonymous pull is allowed, so any user may pull
    assert _push(reg, "public/x", b"anyone", _basic("carol")).status == 201
    assert _push(reg, "private/x", b"nobody", _basic("carol")).status == 403
    # Anonymous read: no credentials, pull works, push does not.
    assert http_request(reg.url, "GET", f"/v2/team/app/blobs/{_d(data)}").body == data
    assert http_request(reg.url, "GET", "/v2/").status == 401  # the challenge, even so
    assert http_request(reg.url, "GET", "/v2/", headers=_basic("carol")).status == 200
    assert http_request(reg.url, "GET", "/v2/", headers=_basic("alice", "wrong")).status == 401
    assert http_request(reg.url, "GET", "/v2/_catalog").status == 401
    assert http_request(reg.url, "GET", "/v2/_catalog", headers=_basic("carol")).status == 200
    r = http_request(reg.url, "DELETE", f"/v2/team/app/blobs/{_d(data)}", headers=_basic("alice"))
    assert r.status == 202


def test_mount_needs_pull_on_the_source_repository(tmp_path: Path) -> None:
    config = {
        "auth": {"htpasswd": {"realm": "r", "path": str(_htpasswd(tmp_path / "htpasswd"))}},
        "access": {"rules": [
            {"repository": "secret/*", "users": ["alice"], "actions": ["pull", "push"]},
            {"repository": "secret/*", "users": ["*"], "actions": []},  # first match wins
            {"repository": "*", "users": ["*"], "actions": ["pull", "push"]},
        ]},
    }
    with StrataRegistry(tmp_path / "reg", config=config) as reg:
        data = b"alice only"
        assert _push(reg, "secret/a", data, _basic("alice")).status == 201
        r = http_request(reg.url, "POST", f"/v2/bobs/repo/blobs/uploads/?mount={_d(data)}&from=secret/a",
                         headers=_basic("bob"))
        assert r.status == 202  # not mounted: bob may not read the source
        r = http_request(reg.url, "GET", f"/v2/bobs/repo/blobs/{_d(data)}", headers=_basic("bob"))
        assert r.status == 404


def test_skopeo_pushes_and_pulls_with_basic_auth(
    basic_registry: StrataRegistry, tmp_path: Path, test_images: dict[str, baseimages.BuildahImage]
) -> None:
    image = test_images["busybox-history"]
    remote = f"docker://{basic_registry.address}/team/history:v1"
    with pytest.raises(tools.ToolError):
        tools.skopeo_copy(f"oci:{image.oci_layout}:{image.ref}", remote,
                          extra=["--dest-tls-verify=false", "--dest-creds", "bob:builder"])
    tools.skopeo_copy(f"oci:{image.oci_layout}:{image.ref}", remote,
                      extra=["--dest-tls-verify=false", "--dest-creds", "alice:wonderland"])
    tools.skopeo_copy(remote, f"oci:{tmp_path / 'out'}:{image.ref}",
                      extra=["--src-tls-verify=false", "--src-creds", "bob:builder"])
    tools.skopeo_copy(remote, f"oci:{tmp_path / 'anon'}:{image.ref}", extra=["--src-tls-verify=false"])


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[StrataRegistry]:
    key = ec.generate_private_key(ec.SECP256R1())
    key_path = tmp_path / "token.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    config = {
        "auth": {
            "htpasswd": {"realm": "basic", "path": str(_htpasswd(tmp_path / "htpasswd"))},
            "token": {"service": "strata-test", "issuer": "strata-test-issuer", "signingkey": str(key_path)},
        },
        "access": {"rules": RULES},
    }
    with StrataRegistry(tmp_path / "reg", config=config) as reg:
        yield reg


def test_builtin_token_endpoint_grants_only_what_rules_allow(token_registry: StrataRegistry) -> None:
    reg = token_registry
    r = _push(reg, "team/app", b"x", {})
    assert r.status == 401
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'realm="http://{reg.address}/auth/token"' in challenge
    assert 'service="strata-test"' in challenge
    assert 'scope="repository:team/app:pull,push"' in challenge
    r = http_request(reg.url, "GET", "/auth/token?service=strata-test&scope=repository:team/app:pull,push",
                     headers=_basic("bob"))
    assert r.status == 200
    token = r.json()["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
    r = _push(reg, "team/app", b"x", {"Authorization": f"Bearer {token}"})
    assert r.status == 401 and 'error="insufficient_scope"' in r.headers["www-authenticate"]
    r = http_request(reg.url, "GET", "/auth/token?service=strata-test&scope=repository:team/app:pull,push",
                     headers=_basic("alice"))
    token = r.json()["token"]
    assert _push(reg, "team/app", b"x", {"Authorization": f"Bearer {token}"}).status == 201
    # A token for one repository does not open another.
    assert _push(reg, "team/other", b"x", {"Authorization": f"Bearer {token}"}).status == 401
    r = http_request(reg.url, "GET", "/auth/token?service=strata-test&scope=repository:team/app:pull",
                     headers=_basic("alice", "wrong"))
    assert r.status == 401
    assert http_request(reg.url, "GET", "/v2/", headers={"Authorization": "Bearer not.a.jwt"}).status == 401


def test_skopeo_round_trips_through_the_token_flow(
    token_registry: StrataRegistry, tmp_path: Path, test_images: dict[str, baseimages.BuildahImage]
) -> None:
    image = test_images["busybox-layers"]
    remote = f"docker://{token_registry.address}/team/layers:v1"
    tools.skopeo_copy(f"oci:{image.oci_layout}:{image.ref}", remote,
                      extra=["--dest-tls-verify=false", "--dest-creds", "alice:wonderland"])
    tools.skopeo_copy(remote, f"oci:{tmp_path / 'out'}:{image.ref}",
                      extra=["--src-tls-verify=false", "--src-creds", "bob:builder"])
    with pytest.raises(tools.ToolError):
        tools.skopeo_copy(f"oci:{image.oci_layout}:{image.ref}", remote,
                          extra=["--dest-tls-verify=false", "--dest-creds", "bob:builder"])


def test_tokens_of_an_external_issuer_are_verified_with_its_public_key(tmp_path: Path) -> None:
    issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bundle = tmp_path / "issuer.pem"
    bundle.write_bytes(issuer_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = {"auth": {"token": {"realm": "https://auth.example/token", "service": "reg",
                                 "issuer": "auth.example", "rootcertbundle": str(bundle)}}}

    def token(key: rsa.RSAPrivateKey, *, actions: list[str], exp: float | None = None,
              issuer: str = "auth.example", audience: str = "reg") -> dict[str, str]:
        now = time.time()
        claims = {"iss": issuer, "sub": "ci", "aud": audience, "iat": int(now),
                  "exp": int(exp if exp is not None else now + 300),
                  "access": [{"type": "repository", "name": "ext/app", "actions": actions}]}
        return {"Authorization": "Bearer " + jwt.encode(claims, key, algorithm="RS256")}

    with StrataRegistry(tmp_path / "reg", config=config) as reg:
        r = _push(reg, "ext/app", b"data", {})
        assert r.status == 401
        assert r.headers["www-authenticate"].startswith('Bearer realm="https://auth.example/token",service="reg"')
        assert _push(reg, "ext/app", b"data", token(issuer_key, actions=["pull", "push"])).status == 201
        assert _push(reg, "ext/app", b"d2", token(other_key, actions=["pull", "push"])).status == 401
        assert _push(reg, "ext/app", b"d2", token(issuer_key, actions=["pull", "push"],
                                                   exp=time.time() - 60)).status == 401
        assert _push(reg, "ext/app", b"d2", token(issuer_key, actions=["pull", "push"],
                                                   issuer="evil")).status == 401
        assert _push(reg, "ext/app", b"d2", token(issuer_key, actions=["pull", "push"],
                                                   audience="other")).status == 401
        assert _push(reg, "ext/app", b"d2", token(issuer_key, actions=["pull"])).status == 401
        r = http_request(reg.url, "GET", f"/v2/ext/app/blobs/{_d(b'data')}",
                         headers=token(issuer_key, actions=["pull"]))
        assert r.body == b"data"


def test_token_endpoint_speaks_the_oauth2_password_grant(token_registry: StrataRegistry) -> None:
    """containerd and docker's refresh-token flow POST the credentials as a form."""
    reg = token_registry
    form = "grant_type=password&username=alice&password=wonderland&service=strata-test" \
           "&scope=repository%3Ateam%2Fapp%3Apull%2Cpush&client_id=strata-test"
    r = http_request(reg.url, "POST", "/auth/token", body=form.encode(),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 200, r.body
    token = r.json()["access_token"]
    assert _push(reg, "team/app", b"via oauth", {"Authorization": f"Bearer {token}"}).status == 201
    bad = form.replace("wonderland", "nope")
    r = http_request(reg.url, "POST", "/auth/token", body=bad.encode(),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 401 and r.json()["error"] == "invalid_grant"
    r = http_request(reg.url, "POST", "/auth/token", body=b"grant_type=refresh_token&refresh_token=x",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 400 and r.json()["error"] == "unsupported_grant_type"
