"""The registry test infrastructure itself (strata.testing.registries), checked with real
clients (skopeo, curl) and no strata code: TLS with a throwaway CA, htpasswd and token auth
on Debian's docker-registry, the token service's JWTs, the counting and fault-injecting
proxy, and derived test images that share layers. When a client test fails, these say
whether the fixture or the client is at fault."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from strata.testing import baseimages, tools
from strata.testing.registries import (
    ALICE,
    BOB,
    CredentialHelper,
    Fault,
    FaultKind,
    Grant,
    Proxy,
    Registry,
    TestImage,
    TLSFiles,
    TokenService,
    basic_auth,
    bearer_token,
    derive_image,
    layout_image,
    libtrust_key_id,
    make_tls,
    skopeo_push,
)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    """curl printing ``STATUS`` on the last line; the body goes to stdout before it."""
    return tools.run(["curl", "-sS", "-w", "\n%{http_code}", *args], check=False)


def _status(proc: subprocess.CompletedProcess[str]) -> int:
    return int(proc.stdout.rsplit("\n", 1)[-1])


def _skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return tools.run(["skopeo", *args], check=check)


@pytest.fixture(scope="module")
def busybox(cache_dir: Path) -> TestImage:
    return layout_image(baseimages.busybox_oci(cache_dir), baseimages.BUSYBOX_REF)


@pytest.fixture(scope="module")
def derived(busybox: TestImage, tmp_path_factory: pytest.TempPathFactory) -> TestImage:
    return derive_image(
        busybox,
        tmp_path_factory.mktemp("derived") / "layout",
        ref="localhost/derived:latest",
        files={"etc/derived.txt": b"derived layer\n", "opt/data.bin": bytes(range(256)) * 512},
    )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry") as reg:
        yield reg


# --------------------------------------------------------------------------- TLS


def test_tls_registry_is_trusted_through_the_ca_only(
    tmp_path: Path, tls: TLSFiles, busybox: TestImage
) -> None:
    with Registry(tmp_path / "reg", tls=tls) as reg:
        assert reg.url.startswith("https://127.0.0.1:")
        ok = _curl("--cacert", str(tls.ca_cert), f"{reg.url}/v2/")
        assert _status(ok) == 200, ok.stderr
        refused = _curl(f"{reg.url}/v2/")
        assert refused.returncode == 60, refused.stderr  # peer certificate cannot be verified
        certs_d = tls.certs_d(reg.address, tmp_path / "certs.d")
        assert (certs_d / reg.address / "ca.crt").read_bytes() == tls.ca_cert.read_bytes()
        skopeo_push(busybox, reg, "tls/busybox:1")
        raw = _skopeo(
            "inspect", "--raw", "--cert-dir", str(certs_d / reg.address), f"docker://{reg.address}/tls/busybox:1"
        )
        assert _sha256(raw.stdout.encode()) == busybox.manifest_digest
        untrusted = _skopeo("inspect", "--raw", f"docker://{reg.address}/tls/busybox:1", check=False)
        assert untrusted.returncode != 0
        assert "certificate" in untrusted.stderr


def test_server_certificate_names_loopback_and_is_signed_by_the_ca(tls: TLSFiles) -> None:
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]


# --------------------------------------------------------------------------- htpasswd


def test_htpasswd_registry_accepts_only_the_right_password(tmp_path: Path, busybox: TestImage) -> None:
    with Registry(tmp_path / "reg", htpasswd=dict([ALICE])) as reg:
        anonymous = _curl("-D", "-", f"{reg.url}/v2/")
        assert _status(anonymous) == 401
        assert 'www-authenticate: basic realm="strata-test-registry"' in anonymous.stdout.lower()
        right = _curl("-u", ":".join(ALICE), f"{reg.url}/v2/")
        assert _status(right) == 200
        wrong = _curl("-u", "alice:wrong", f"{reg.url}/v2/")
        assert _status(wrong) == 401
        assert (tmp_path / "reg" / "htpasswd").read_text().startswith("alice:$2y$")

        skopeo_push(busybox, reg, "private/busybox:1", creds=ALICE)
        raw = _skopeo(
            "inspect", "--raw", "--tls-verify=false", "--creds", ":".join(ALICE),
            f"docker://{reg.address}/private/busybox:1",
        )  # fmt: skip
        assert _sha256(raw.stdout.encode()) == busybox.manifest_digest
        denied = _skopeo(
            "inspect", "--raw", "--tls-verify=false", "--creds", "alice:wrong",
            f"docker://{reg.address}/private/busybox:1", check=False,
        )  # fmt: skip
        assert denied.returncode != 0
        assert "unauthorized" in denied.stderr.lower() or "authentication" in denied.stderr.lower()


# --------------------------------------------------------------------------- token


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[tuple[TokenService, Registry]]:
    grants = [
        Grant(ALICE[0], "*", ("pull", "push")),
        Grant(BOB[0], "*", ("pull",)),
        Grant(None, "public/*", ("pull",)),
    ]
    with (
        TokenService(tmp_path / "token", users=dict([ALICE, BOB]), grants=grants) as ts,
        Registry(tmp_path / "reg", token=ts) as reg,
    ):
        yield ts, reg


def _jwt_part(token: str, index: int) -> dict[str, object]:
    part = token.split(".")[index]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def test_token_service_issues_what_distribution_verifies(
    token_registry: tuple[TokenService, Registry],
) -> None:
    ts, reg = token_registry
    challenge = _curl("-D", "-", f"{reg.url}/v2/")
    assert _status(challenge) == 401
    assert f'www-authenticate: bearer realm="{ts.realm}",service="{ts.service}"' in challenge.stdout.lower()

    token = bearer_token(ts, *ALICE, "repository:team/app:pull,push")
    header, claims = _jwt_part(token, 0), _jwt_part(token, 1)
    assert header["alg"] == "ES256"
    assert header["kid"] == ts.key_id
    cert = x509.load_pem_x509_certificate(ts.cert_path.read_bytes())
    assert header["x5c"] == [base64.b64encode(cert.public_bytes(Encoding.DER)).decode()]
    assert claims["iss"] == ts.issuer and claims["aud"] == ts.service and claims["sub"] == "alice"
    assert claims["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    for name in ("exp", "nbf", "iat", "jti"):
        assert name in claims

    ok = _curl("-H", f"Authorization: Bearer {token}", f"{reg.url}/v2/")
    assert _status(ok) == 200, reg.log()[-2000:]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bad = _curl("-H", f"Authorization: Bearer {forged}", f"{reg.url}/v2/")
    assert _status(bad) == 401

    with pytest.raises(urllib.error.HTTPError) as refused:
        bearer_token(ts, "alice", "wrong", "repository:team/app:pull")
    assert refused.value.code == 401
    assert [r.status for r in ts.requests] == [200, 401]


def test_token_signed_with_kid_only_is_accepted(tmp_path: Path) -> None:
    """The libtrust key ID we compute is the one distribution derives from rootcertbundle."""
    with (
        TokenService(tmp_path / "t", users=dict([ALICE]), grants=[Grant("alice", "*", ("pull",))], x5c=False)
        as ts,
        Registry(tmp_path / "reg", token=ts) as reg,
    ):
        token = bearer_token(ts, *ALICE, "repository:x:pull")
        assert "x5c" not in _jwt_part(token, 0)
        kid = _jwt_part(token, 0)["kid"]
        assert isinstance(kid, str) and len(kid.split(":")) == 12
        cert = x509.load_pem_x509_certificate(ts.cert_path.read_bytes())
        public_key = cert.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        assert kid == libtrust_key_id(public_key)
        ok = _curl("-H", f"Authorization: Bearer {token}", f"{reg.url}/v2/")
        assert _status(ok) == 200, reg.log()[-2000:]


def test_token_grants_are_per_repository_and_user(
    token_registry: tuple[TokenService, Registry], busybox: TestImage
) -> None:
    ts, reg = token_registry
    skopeo_push(busybox, reg, "team/busybox:1", creds=ALICE)
    skopeo_push(busybox, reg, "public/busybox:1", creds=ALICE)
    for creds in (ALICE, BOB):
        raw = _skopeo(
            "inspect", "--raw", "--tls-verify=false", "--creds", ":".join(creds),
            f"docker://{reg.address}/team/busybox:1",
        )  # fmt: skip
        assert _sha256(raw.stdout.encode()) == busybox.manifest_digest
    anonymous_public = _skopeo(
        "inspect", "--raw", "--tls-verify=false", "--no-creds", f"docker://{reg.address}/public/busybox:1"
    )
    assert _sha256(anonymous_public.stdout.encode()) == busybox.manifest_digest
    anonymous_team = _skopeo(
        "inspect", "--raw", "--tls-verify=false", "--no-creds", f"docker://{reg.address}/team/busybox:1",
        check=False,
    )  # fmt: skip
    assert anonymous_team.returncode != 0
    assert "unauthorized" in anonymous_team.stderr.lower() or "denied" in anonymous_team.stderr.lower()
    with pytest.raises(tools.ToolError) as bob_push:
        skopeo_push(busybox, reg, "team/bob:1", creds=BOB)
    assert "denied" in str(bob_push.value).lower() or "unauthorized" in str(bob_push.value).lower()
    granted_to_bob = {g for r in ts.requests if r.user == "bob" for g in r.granted}
    assert ("repository", "team/bob", ("pull",)) in granted_to_bob  # asked pull,push; got pull


# --------------------------------------------------------------------------- proxy


def test_proxy_counts_each_blob_pushed_and_pulled(
    registry: Registry, busybox: TestImage, derived: TestImage, tmp_path: Path
) -> None:
    shared = set(busybox.layer_digests)
    assert shared < set(derived.layer_digests)
    with Proxy(registry.url) as proxy:
        skopeo_push(busybox, registry, "base:1", address=proxy.address)
        for digest, size in busybox.layers:
            assert proxy.uploaded_bytes(digest) == size
        proxy.reset()
        skopeo_push(derived, registry, "derived:1", address=proxy.address)
        (new_digest, new_size) = derived.layers[-1]
        assert proxy.uploaded_bytes(new_digest) == new_size
        for digest in shared:
            assert proxy.uploaded_bytes(digest) == 0  # cross-repo mount or HEAD hit: no bytes
        config = derived.blob(derived.config_digest)
        manifest_put = proxy.requests_for("PUT", r"/v2/derived/manifests/1")
        assert [ex.request_bytes for ex in manifest_put] == [len(derived.raw_manifest())]
        assert proxy.upload_bytes_total() == new_size + len(config)

        proxy.reset()
        out = tmp_path / "pulled"
        tools.skopeo_copy(
            f"docker://{proxy.address}/derived:1", f"oci:{out}:x", extra=["--src-tls-verify=false"]
        )
        totals = proxy.totals()
        for digest, size in derived.layers:
            assert proxy.downloaded_bytes(digest) == size
            assert totals[("GET", f"/v2/derived/blobs/{digest}")] == (0, size)
            assert (out / "blobs" / "sha256" / digest.split(":")[1]).read_bytes() == derived.blob(digest)
        assert all(ex.fault is None for ex in proxy.exchanges)


def test_proxy_cut_stops_the_body_once_and_ranges_resume(registry: Registry, busybox: TestImage) -> None:
    skopeo_push(busybox, registry, "busybox:1")
    digest, size = busybox.layers[0]
    url_path = f"/v2/busybox/blobs/{digest}"
    with Proxy(registry.url) as proxy:
        fault = Fault.cut_blob(digest, after=100_000)
        proxy.inject(fault)
        cut = _curl("-o", "/dev/null", f"{proxy.url}{url_path}")
        assert cut.returncode == 18, cut.stderr  # partial file
        assert proxy.fired(fault) == 1
        status, headers, rest = _fetch(proxy.url + url_path, {"Range": "bytes=100000-"})
        whole = busybox.blob(digest)
        assert status == 206
        assert headers["Content-Range"] == f"bytes 100000-{size - 1}/{size}"
        assert rest == whole[100_000:]
        exchanges = proxy.settled(2)
        assert [(ex.status, ex.response_bytes, ex.fault) for ex in exchanges] == [
            (200, 100_000, FaultKind.CUT),
            (206, size - 100_000, None),
        ]
        again = tools.run(["curl", "-sS", "-w", "%{size_download}", "-o", "/dev/null", proxy.url + url_path])
        assert int(again.stdout) == size == len(whole)


def _fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def test_proxy_flips_one_byte_at_the_blob_offset(registry: Registry, busybox: TestImage) -> None:
    skopeo_push(busybox, registry, "busybox:1")
    digest, size = busybox.layers[0]
    whole = busybox.blob(digest)
    with Proxy(registry.url) as proxy:
        proxy.inject(Fault.flip_blob(digest, offset=size // 2))
        url = f"{proxy.url}/v2/busybox/blobs/{digest}"
        for headers, start in (({}, 0), ({"Range": f"bytes={size // 4}-"}, size // 4)):
            status, _, body = _fetch(url, headers)
            assert status in (200, 206)
            expected = whole[start:]
            assert len(body) == len(expected)
            diffs = [i for i in range(len(body)) if body[i] != expected[i]]
            assert diffs == [size // 2 - start]
            assert body[size // 2 - start] == expected[size // 2 - start] ^ 0xFF


def test_proxy_answers_errors_n_times_then_passes_through(registry: Registry, busybox: TestImage) -> None:
    skopeo_push(busybox, registry, "busybox:1")
    with Proxy(registry.url) as proxy:
        proxy.inject(Fault.error(r"/v2/busybox/manifests/1", status=500, times=2))
        proxy.inject(Fault.blob_error(busybox.config_digest, status=429, retry_after=3, times=1))
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        codes = [_fetch(f"{proxy.url}/v2/busybox/manifests/1", accept)[0] for _ in range(3)]
        assert codes == [500, 500, 200]
        status, headers, body = _fetch(f"{proxy.url}/v2/busybox/blobs/{busybox.config_digest}")
        assert (status, headers.get("Retry-After")) == (429, "3")
        assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"
        status, _, body = _fetch(f"{proxy.url}/v2/busybox/blobs/{busybox.config_digest}")
        assert status == 200 and _sha256(body) == busybox.config_digest


def test_proxy_substitutes_a_manifest_keeping_the_registry_headers(
    registry: Registry, busybox: TestImage, derived: TestImage
) -> None:
    skopeo_push(busybox, registry, "busybox:1")
    with Proxy(registry.url) as proxy:
        proxy.inject(Fault.replace_manifest(busybox.manifest_digest, derived.raw_manifest()))
        accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        status, headers, body = _fetch(f"{proxy.url}/v2/busybox/manifests/{busybox.manifest_digest}", accept)
        assert status == 200
        assert body == derived.raw_manifest()
        assert headers["Docker-Content-Digest"] == busybox.manifest_digest  # the lie a client must catch
        assert int(headers["Content-Length"]) == len(body)
        _, _, by_tag = _fetch(f"{proxy.url}/v2/busybox/manifests/1", accept)
        assert by_tag == busybox.raw_manifest()  # the fault matches the digest path only


def test_proxy_in_front_of_tls_and_auth_forwards_credentials(
    tmp_path: Path, tls: TLSFiles, busybox: TestImage
) -> None:
    with (
        Registry(tmp_path / "reg", tls=tls, htpasswd=dict([ALICE])) as reg,
        Proxy(reg.url, ca_cert=tls.ca_cert) as proxy,
    ):
        skopeo_push(busybox, reg, "busybox:1", creds=ALICE, address=proxy.address)
        assert proxy.uploaded_bytes(busybox.layers[0][0]) == busybox.layers[0][1]
        uploads = [ex for ex in proxy.exchanges if ex.method == "PATCH"]
        assert uploads
        assert all(ex.request_headers.get("Authorization") == basic_auth(*ALICE) for ex in uploads)
        status, _, _ = _fetch(f"{proxy.url}/v2/")
        assert status == 401


def test_derived_image_shares_the_base_layers(busybox: TestImage, derived: TestImage) -> None:
    assert derived.layer_digests[:-1] == busybox.layer_digests
    assert derived.manifest_digest != busybox.manifest_digest
    config = json.loads(derived.blob(derived.config_digest))
    base_config = json.loads(busybox.blob(busybox.config_digest))
    assert config["rootfs"]["diff_ids"][:-1] == base_config["rootfs"]["diff_ids"]
    assert _sha256(derived.raw_manifest()) == derived.manifest_digest


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_servers_leave_nothing_running(tmp_path: Path) -> None:
    threads_before = {t.ident for t in threading.enumerate()}
    with (
        TokenService(tmp_path / "t", users=dict([ALICE]), grants=[]) as ts,
        Registry(tmp_path / "reg", token=ts) as reg,
        Proxy(reg.url) as proxy,
    ):
        ports = [ts.port, reg.port, proxy.port]
        pid = reg.pid
        assert pid is not None
        assert not any(_refused(p) for p in ports)
    assert all(_refused(p) for p in ports)
    assert not Path(f"/proc/{pid}").exists()
    assert {t.ident for t in threading.enumerate()} <= threads_before


def test_credential_helper_serves_skopeo(tmp_path: Path, busybox: TestImage) -> None:
    """The test keychain speaks docker's helper protocol well enough for containers/image."""
    helper = CredentialHelper.install(tmp_path / "helper")
    with Registry(tmp_path / "reg", htpasswd=dict([ALICE])) as reg:
        skopeo_push(busybox, reg, "private/busybox:1", creds=ALICE)
        authfile = tmp_path / "auth.json"
        authfile.write_text(json.dumps({"credHelpers": {reg.address: helper.name}}))
        inspect = [
            "skopeo", "inspect", "--raw", "--tls-verify=false", "--authfile", str(authfile),
            f"docker://{reg.address}/private/busybox:1",
        ]  # fmt: skip
        assert tools.run(inspect, env=helper.env(), check=False).returncode != 0  # empty keychain
        helper.put(reg.address, *ALICE)
        raw = tools.run(inspect, env=helper.env())
        assert _sha256(raw.stdout.encode()) == busybox.manifest_digest
        assert helper.calls() == [f"get {reg.address}", f"get {reg.address}"]
