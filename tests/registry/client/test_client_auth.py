"""Acceptance: ``strata login / pull / push / logout`` against docker-registry with htpasswd
(basic) auth, with token auth (the test token service), and over TLS with a custom CA.
Wrong credentials must give a clear ``unauthorized`` error, a non-zero exit, and change
nothing (no credentials written, no image stored). Images are put there by skopeo and read
back by skopeo."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from strata.testing import tools
from strata.testing.registries import (
    ALICE,
    BOB,
    CredentialHelper,
    Registry,
    TestImage,
    TokenService,
    skopeo_push,
)


def _auths(docker_config: Path) -> dict[str, dict[str, str]]:
    path = docker_config / "config.json"
    if not path.exists():
        return {}
    auths: dict[str, dict[str, str]] = json.loads(path.read_text()).get("auths", {})
    return auths


def _creds_of(docker_config: Path, address: str) -> str | None:
    entry = _auths(docker_config).get(address)
    if entry is None or "auth" not in entry:
        return None
    return base64.b64decode(entry["auth"]).decode()


def _login(
    strata: tools.StrataCLI, reg: Registry, user: str, password: str
) -> subprocess.CompletedProcess[str]:
    return strata("login", reg.address, "-u", user, "--password-stdin", input=password + "\n", check=False)


def _assert_unauthorized(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "unauthorized" in proc.stderr.lower(), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr  # a one-line error, not a crash


def _no_images(strata: tools.StrataCLI) -> None:
    assert strata("images", "-q").stdout.strip() == ""


# --------------------------------------------------------------------------- htpasswd


def test_htpasswd_login_pull_push_logout(
    strata: tools.StrataCLI,
    htpasswd_registry: Registry,
    busybox_image: TestImage,
    docker_config: Path,
) -> None:
    reg = htpasswd_registry
    skopeo_push(busybox_image, reg, "private/busybox:1", creds=ALICE)

    login = _login(strata, reg, *ALICE)
    assert login.returncode == 0, login.stderr
    assert "Login Succeeded" in login.stdout
    assert _creds_of(docker_config, reg.address) == ":".join(ALICE)

    pulled = strata("pull", f"{reg.address}/private/busybox:1")
    assert f"Digest: {busybox_image.manifest_digest}" in pulled.stdout
    image_id = strata("inspect", "--format", "{{.Id}}", f"{reg.address}/private/busybox:1").stdout.strip()
    assert image_id == busybox_image.config_digest

    strata("tag", f"{reg.address}/private/busybox:1", f"{reg.address}/private/copy:2")
    pushed = strata("push", f"{reg.address}/private/copy:2")
    assert f"digest: {busybox_image.manifest_digest}" in pushed.stdout
    assert reg.skopeo_digest("private/copy:2", creds=ALICE) == busybox_image.manifest_digest

    logout = strata("logout", reg.address)
    assert logout.returncode == 0
    assert _creds_of(docker_config, reg.address) is None
    strata("rmi", f"{reg.address}/private/busybox:1", f"{reg.address}/private/copy:2")
    _assert_unauthorized(strata("pull", f"{reg.address}/private/busybox:1", check=False))


def test_htpasswd_wrong_password_is_unauthorized_and_changes_nothing(
    strata: tools.StrataCLI,
    htpasswd_registry: Registry,
    busybox_image: TestImage,
    docker_config: Path,
) -> None:
    reg = htpasswd_registry
    skopeo_push(busybox_image, reg, "private/busybox:1", creds=ALICE)

    _assert_unauthorized(_login(strata, reg, "alice", "not-her-password"))
    assert reg.address not in _auths(docker_config)
    _assert_unauthorized(_login(strata, reg, "mallory", "whatever"))
    assert reg.address not in _auths(docker_config)

    _assert_unauthorized(strata("pull", f"{reg.address}/private/busybox:1", check=False))
    _no_images(strata)


def test_htpasswd_credentials_from_docker_config_are_used(
    strata: tools.StrataCLI,
    htpasswd_registry: Registry,
    busybox_image: TestImage,
    docker_config: Path,
) -> None:
    """Credentials docker wrote (``auths.<host>.auth`` = base64 user:password) work as is."""
    reg = htpasswd_registry
    skopeo_push(busybox_image, reg, "private/busybox:1", creds=ALICE)
    auth = base64.b64encode(":".join(ALICE).encode()).decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {reg.address: {"auth": auth}}}))
    pulled = strata("pull", f"{reg.address}/private/busybox:1")
    assert f"Digest: {busybox_image.manifest_digest}" in pulled.stdout

    wrong = base64.b64encode(b"alice:stale-password").decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {reg.address: {"auth": wrong}}}))
    _assert_unauthorized(strata("pull", f"{reg.address}/private/other:1", check=False))


def test_credentials_store_helper_keeps_the_secret_out_of_config_json(
    strata: tools.StrataCLI,
    htpasswd_registry: Registry,
    busybox_image: TestImage,
    docker_config: Path,
    tmp_path: Path,
) -> None:
    """With ``credsStore``, login stores through ``docker-credential-NAME store``, pull reads
    through ``get``, logout calls ``erase``; config.json never holds the password."""
    reg = htpasswd_registry
    skopeo_push(busybox_image, reg, "private/busybox:1", creds=ALICE)
    helper = CredentialHelper.install(tmp_path / "helper")
    (docker_config / "config.json").write_text(json.dumps({"credsStore": helper.name}))
    cli = tools.StrataCLI(strata.root, env={**strata.env, **helper.env()})

    assert _login(cli, reg, *ALICE).returncode == 0
    assert list(helper.entries().values()) == [ALICE]
    server = next(iter(helper.entries()))
    assert reg.address in server
    assert ALICE[1] not in (docker_config / "config.json").read_text()

    pulled = cli("pull", f"{reg.address}/private/busybox:1")
    assert f"Digest: {busybox_image.manifest_digest}" in pulled.stdout
    assert f"get {server}" in helper.calls()

    assert cli("logout", reg.address).returncode == 0
    assert helper.entries() == {}
    cli("rmi", f"{reg.address}/private/busybox:1")
    _assert_unauthorized(cli("pull", f"{reg.address}/private/busybox:1", check=False))


def test_per_registry_credential_helper_is_used(
    strata: tools.StrataCLI,
    htpasswd_registry: Registry,
    busybox_image: TestImage,
    docker_config: Path,
    tmp_path: Path,
) -> None:
    """``credHelpers`` names a helper for one registry; its keychain already has the login."""
    reg = htpasswd_registry
    skopeo_push(busybox_image, reg, "private/busybox:1", creds=ALICE)
    helper = CredentialHelper.install(tmp_path / "helper")
    helper.put(reg.address, *ALICE)
    config = {"credHelpers": {reg.address: helper.name}, "auths": {}}
    (docker_config / "config.json").write_text(json.dumps(config))
    cli = tools.StrataCLI(strata.root, env={**strata.env, **helper.env()})
    pulled = cli("pull", f"{reg.address}/private/busybox:1")
    assert f"Digest: {busybox_image.manifest_digest}" in pulled.stdout
    assert f"get {reg.address}" in helper.calls()


# --------------------------------------------------------------------------- token


def test_token_login_pull_push(
    strata: tools.StrataCLI,
    token_registry: Registry,
    token_service: TokenService,
    busybox_image: TestImage,
    derived_image: TestImage,
    archive_of: Callable[[TestImage], Path],
) -> None:
    reg = token_registry
    skopeo_push(busybox_image, reg, "team/busybox:1", creds=ALICE)

    login = _login(strata, reg, *ALICE)
    assert login.returncode == 0, login.stderr
    assert "Login Succeeded" in login.stdout

    pulled = strata("pull", f"{reg.address}/team/busybox:1")
    assert f"Digest: {busybox_image.manifest_digest}" in pulled.stdout

    strata("load", "-i", archive_of(derived_image))
    strata("tag", derived_image.ref, f"{reg.address}/team/derived:1")
    pushed = strata("push", f"{reg.address}/team/derived:1")
    assert f"digest: {derived_image.manifest_digest}" in pushed.stdout
    assert reg.skopeo_digest("team/derived:1", creds=ALICE) == derived_image.manifest_digest

    # The bearer flow was used, as alice, for the repositories touched, with push granted.
    mine = [r for r in token_service.requests if r.user == "alice" and r.status == 200]
    granted = {(name, action) for r in mine for (_, name, actions) in r.granted for action in actions}
    assert ("team/busybox", "pull") in granted
    assert ("team/derived", "push") in granted


def test_token_is_fetched_once_per_scope_and_reused(
    strata: tools.StrataCLI,
    token_registry: Registry,
    token_service: TokenService,
    derived_image: TestImage,
) -> None:
    """A pull makes several registry requests (manifest, config, layers) with one token."""
    reg = token_registry
    skopeo_push(derived_image, reg, "team/derived:1", creds=ALICE)
    assert _login(strata, reg, *ALICE).returncode == 0
    token_service.requests.clear()
    strata("pull", f"{reg.address}/team/derived:1")
    asked = [r for r in token_service.requests if any("team/derived" in s for s in r.scopes)]
    assert len(asked) == 1, token_service.requests
    assert asked[0].user == "alice"
    assert ("repository", "team/derived", ("pull",)) in asked[0].granted


def test_token_anonymous_pull_of_public_repository(
    strata: tools.StrataCLI, token_registry: Registry, busybox_image: TestImage
) -> None:
    skopeo_push(busybox_image, token_registry, "public/busybox:1", creds=ALICE)
    pulled = strata("pull", f"{token_registry.address}/public/busybox:1")
    assert f"Digest: {busybox_image.manifest_digest}" in pulled.stdout


def test_token_wrong_password_and_missing_grant_are_unauthorized(
    strata: tools.StrataCLI,
    token_registry: Registry,
    token_service: TokenService,
    busybox_image: TestImage,
    docker_config: Path,
) -> None:
    reg = token_registry
    skopeo_push(busybox_image, reg, "team/busybox:1", creds=ALICE)

    _assert_unauthorized(_login(strata, reg, "alice", "wrong"))
    assert reg.address not in _auths(docker_config)
    assert any(r.user == "alice" and r.status == 401 for r in token_service.requests)

    # Anonymous: the token service grants nothing on team/*, the registry refuses.
    _assert_unauthorized(strata("pull", f"{reg.address}/team/busybox:1", check=False))
    _no_images(strata)

    # bob may pull but not push.
    assert _login(strata, reg, *BOB).returncode == 0
    strata("pull", f"{reg.address}/team/busybox:1")
    strata("tag", f"{reg.address}/team/busybox:1", f"{reg.address}/team/bobs:1")
    _assert_unauthorized(strata("push", f"{reg.address}/team/bobs:1", check=False))
    missing = tools.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", ":".join(ALICE),
         f"docker://{reg.address}/team/bobs:1"],
        check=False,
    )  # fmt: skip
    assert missing.returncode != 0 and "manifest unknown" in missing.stderr.lower()


# --------------------------------------------------------------------------- TLS


def test_tls_registry_with_custom_ca(
    strata: tools.StrataCLI,
    tls_registry: Registry,
    busybox_image: TestImage,
    trust_ca: Callable[[Registry], None],
) -> None:
    reg = tls_registry
    skopeo_push(busybox_image, reg, "secure/busybox:1", creds=ALICE)

    untrusted = strata("login", reg.address, "-u", ALICE[0], "--password-stdin", input=ALICE[1], check=False)
    assert untrusted.returncode != 0
    assert "certificate" in untrusted.stderr.lower(), untrusted.stderr

    trust_ca(reg)
    assert _login(strata, reg, *ALICE).returncode == 0
    pulled = strata("pull", f"{reg.address}/secure/busybox:1")
    assert f"Digest: {busybox_image.manifest_digest}" in pulled.stdout
    strata("tag", f"{reg.address}/secure/busybox:1", f"{reg.address}/secure/copy:1")
    strata("push", f"{reg.address}/secure/copy:1")
    assert reg.skopeo_digest("secure/copy:1", creds=ALICE) == busybox_image.manifest_digest
