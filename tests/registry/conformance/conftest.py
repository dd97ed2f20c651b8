"""Which registry the conformance suite runs against, and how it is started.

- ``OCI_ROOT_URL`` set: that registry, as the upstream suite would test it (target id
  ``external``).
- otherwise ``STRATA_CONFORMANCE_TARGET`` (comma-separated) picks registries this suite
  starts on 127.0.0.1 and stops afterwards:

  ``strata-fs``        ``strata registry serve`` with the filesystem driver
  ``strata-s3``        the same with the S3 driver, on a moto S3 server started here
  ``strata-s3-2nodes`` two ``strata registry serve`` processes sharing one bucket; the
                       client sends each request to the other one (no affinity: a
                       chunked upload starts on one node and continues on the other)
  ``strata``           the three above: the default
  ``strata-htpasswd``  strata-fs behind htpasswd basic auth (the suite authenticates with
                       a user made here, as it would with ``OCI_USERNAME``/``OCI_PASSWORD``)
  ``strata-token``     strata-fs accepting only bearer tokens, verified with the public key
                       of a second strata server that issues them (the docker token
                       protocol with an external issuer)
  ``docker-registry``  Debian's docker-registry 2.8 (deletes enabled). Not in the default
                       run. The specs it is known to fail (:data:`DOCKER_REGISTRY_KNOWN_FAILURES`)
                       are marked ``xfail(strict=True)`` for it, so that run passes only if
                       it fails exactly those, each for the documented reason.

Every spec runs once per target; pytest keeps each target's specs together and in upstream
order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ._client import Client
from ._data import generate
from ._env import TARGET_ENV, settings
from ._suite import Session, Spec

HERE = Path(__file__).parent

STRATA_TARGETS = ("strata-fs", "strata-s3", "strata-s3-2nodes")
KNOWN_TARGETS = (*STRATA_TARGETS, "strata-htpasswd", "strata-token", "docker-registry")

#: The storage section every started registry gets besides its driver: deletes allowed.
_DELETE = {"delete": {"enabled": True}}

#: Specs Debian's docker-registry 2.8.2 fails, with why (also in README.md). Keys are
#: test ids without the target.
_TAGS = "Content Discovery :: Test content discovery endpoints (listing tags) :: "
_REFS = "Content Discovery :: Test content discovery endpoints (listing references) :: "
_NO_REFERRERS = "no referrers API: 404 page not found"
_STALE = "the upload URL carries a signed _state with the offset; the earlier URL is stale and answers "

DOCKER_REGISTRY_KNOWN_FAILURES: dict[str, str] = {
    "Pull :: Error codes :: 400 response body should contain OCI-conforming JSON message": (
        "GET /manifests/sha256:totallywrong answers 500 UNKNOWN (it looks the malformed digest up "
        "as a tag path), not 400 with a spec error code or 404"
    ),
    "Push :: Blob Upload Chunked :: Out-of-order blob upload should return 416": (
        "PATCH ignores Content-Range and appends the chunk: 202 instead of 416"
    ),
    "Push :: Blob Upload Chunked :: Retry previous blob chunk should return 416": (
        _STALE + "404 BLOB_UPLOAD_INVALID instead of 416"
    ),
    "Push :: Blob Upload Chunked :: Get on stale blob upload should return 204 with a range and location": (
        _STALE + "404 BLOB_UPLOAD_INVALID instead of 204 with a Range"
    ),
    "Content Discovery :: Setup :: References setup": (
        "no OCI-Subject header on a manifest PUT with a subject (2.8 predates distribution-spec v1.1)"
    ),
    _TAGS + "GET request to list tags should yield 200 response and be in sorted order": (
        "tags come in storage-walk order, unsorted (stricter check added after v1.1.1)"
    ),
    _TAGS + "GET number of tags should be limitable by `n` query parameter": (
        "tags/list ignores `n` (all tags returned)"
    ),
    _TAGS + "GET start of tag is set by `last` query parameter": (
        "tags/list ignores `last`, so the page still contains it (stricter check added after v1.1.1)"
    ),
    _REFS + "GET request to nonexistent blob should result in empty 200 response": _NO_REFERRERS,
    _REFS + "GET request to existing blob should yield 200": _NO_REFERRERS,
    _REFS + "GET request to existing blob with filter should yield 200": _NO_REFERRERS,
    _REFS + "GET request to missing manifest should yield 200": _NO_REFERRERS,
    "Content Discovery :: Teardown :: Delete created manifest & associated tags": (
        "DELETE /manifests/<tag> answers 400 DIGEST_INVALID (2.8 deletes by digest only)"
    ),
    "Content Management :: Manifest delete :: "
    "DELETE request to manifest tag should return 202, unless tag deletion is disallowed (400/405)": (
        "DELETE /manifests/<tag> answers 400 DIGEST_INVALID; a 400 must carry UNSUPPORTED"
    ),
}


@dataclass(frozen=True, slots=True)
class Target:
    """A registry under test: its id and root URL."""

    name: str
    url: str
    username: str = ""
    password: str = ""
    more_urls: tuple[str, ...] = ()


def _targets() -> list[str]:
    if os.environ.get("OCI_ROOT_URL"):
        return ["external"]
    wanted = os.environ.get(TARGET_ENV, "") or "strata"
    names: list[str] = []
    for raw in wanted.split(","):
        item = raw.strip()
        expanded = list(STRATA_TARGETS) if item == "strata" else [item]
        for name in expanded:
            if name not in KNOWN_TARGETS:
                raise pytest.UsageError(
                    f"{TARGET_ENV}={wanted!r}: unknown target {name!r} "
                    f"(known: strata, {', '.join(KNOWN_TARGETS)})"
                )
            if name not in names:
                names.append(name)
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every spec once per target registry (session-scoped: started once each)."""
    if "conformance_target" in metafunc.fixturenames:
        metafunc.parametrize("conformance_target", _targets(), indirect=True, scope="session")


def _spec_of(item: pytest.Item) -> tuple[Spec, str] | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or not Path(str(item.path)).is_relative_to(HERE):
        return None
    spec = callspec.params.get("spec")
    target = callspec.params.get("conformance_target")
    if not isinstance(spec, Spec) or not isinstance(target, str):
        return None
    return spec, target


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``OCI_HIDE_SKIPPED_WORKFLOWS``: leave disabled workflows out (upstream does not even
    register them); mark docker-registry's known failures as strict xfails."""
    env = settings()
    kept: list[pytest.Item] = []
    hidden: list[pytest.Item] = []
    for item in items:
        found = _spec_of(item)
        if found is None:
            kept.append(item)
            continue
        spec, target = found
        if env.hide_skipped_workflows and env.disabled(spec.workflow):
            hidden.append(item)
            continue
        reason = DOCKER_REGISTRY_KNOWN_FAILURES.get(spec.id)
        if target == "docker-registry" and reason is not None:
            item.add_marker(pytest.mark.xfail(reason=f"docker-registry 2.8: {reason}", strict=True))
        kept.append(item)
    if hidden:
        config.hook.pytest_deselected(items=hidden)
        items[:] = kept


@contextlib.contextmanager
def _docker_registry(workdir: Path) -> Iterator[Target]:
    from strata.testing.tools import DockerRegistry

    with DockerRegistry(workdir) as registry:
        yield Target("docker-registry", registry.url)


@contextlib.contextmanager
def _strata_fs(workdir: Path) -> Iterator[Target]:
    from strata.testing.registry_server import StrataRegistry

    with StrataRegistry(workdir, config={"storage": _DELETE}) as registry:
        yield Target("strata-fs", registry.url)


@contextlib.contextmanager
def _strata_s3(workdir: Path, *, nodes: int) -> Iterator[Target]:
    from strata.testing.registry_server import StrataRegistry
    from strata.testing.s3 import S3Server

    name = "strata-s3" if nodes == 1 else f"strata-s3-{nodes}nodes"
    with S3Server(workdir / "s3") as s3, contextlib.ExitStack() as stack:
        storage = {"s3": s3.registry_storage(rootdirectory="/conformance"), **_DELETE}
        servers = [
            stack.enter_context(StrataRegistry(workdir / f"registry{i}", config={"storage": storage}))
            for i in range(nodes)
        ]
        yield Target(name, servers[0].url, more_urls=tuple(server.url for server in servers[1:]))
        stack.close()
        # The run really went through the bucket, not a local directory.
        assert s3.keys(prefix="conformance/"), "the S3 driver stored nothing in the bucket"
        for server in servers:
            local = server.storage
            assert not local.exists() or not any(local.iterdir()), f"the S3 run wrote to {local}"


@contextlib.contextmanager
def _strata_auth(workdir: Path, *, tokens: bool) -> Iterator[Target]:
    """strata-fs behind htpasswd, or (``tokens``) behind bearer tokens that a second strata
    server issues after checking the same htpasswd file."""
    import bcrypt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from strata.testing.registry_server import StrataRegistry

    user, password = "conformance", secrets.token_urlsafe(12)
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(5)).decode()}\n")
    basic = {"htpasswd": {"realm": "strata-conformance", "path": str(htpasswd)}}
    if not tokens:
        with StrataRegistry(workdir, config={"storage": _DELETE, "auth": basic}) as registry:
            yield Target("strata-htpasswd", registry.url, user, password)
        return
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (workdir / "token.key").write_bytes(private_pem)
    (workdir / "token.pub").write_bytes(public_pem)
    issuing = {
        **basic,
        "token": {"realm": "http://127.0.0.1/unused", "signingkey": str(workdir / "token.key")},
    }
    with StrataRegistry(workdir / "issuer", config={"auth": issuing}) as issuer:
        verifying = {
            "token": {"realm": f"{issuer.url}/auth/token", "rootcertbundle": str(workdir / "token.pub")}
        }
        with StrataRegistry(workdir / "registry", config={"storage": _DELETE, "auth": verifying}) as registry:
            yield Target("strata-token", registry.url, user, password)


_STARTERS: dict[str, Callable[[Path], contextlib.AbstractContextManager[Target]]] = {
    "docker-registry": _docker_registry,
    "strata-fs": _strata_fs,
    "strata-s3": functools.partial(_strata_s3, nodes=1),
    "strata-s3-2nodes": functools.partial(_strata_s3, nodes=2),
    "strata-htpasswd": functools.partial(_strata_auth, tokens=False),
    "strata-token": functools.partial(_strata_auth, tokens=True),
}


@pytest.fixture(scope="session")
def conformance_target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """The registry (started here and stopped after its specs, unless ``OCI_ROOT_URL``
    names one)."""
    name = str(request.param)
    if name == "external":
        yield Target(name, os.environ["OCI_ROOT_URL"])
        return
    with _STARTERS[name](tmp_path_factory.mktemp(f"conformance-{name}")) as target:
        yield target


@pytest.fixture(scope="session")
def conformance(conformance_target: Target) -> Iterator[Session]:
    """A fresh client, fresh test data and empty spec state for one target registry."""
    env = settings()
    if env.root_url is None and conformance_target.name.startswith("strata") and not (
        env.run_automatic_crossmount_test
    ):
        # A registry the suite started itself is known, not guessed: strata never mounts a
        # blob without ``from`` (as distribution), so upstream's "automatic content discovery
        # disabled" spec runs against it instead of being skipped for want of the variable.
        env = dataclasses.replace(env, run_automatic_crossmount_test=True, automatic_crossmount_enabled=False)
    client = Client(
        conformance_target.url,
        env.namespace,
        more_root_urls=conformance_target.more_urls,
        username=conformance_target.username or env.username,
        password=conformance_target.password or env.password,
        auth_scope=env.auth_scope,
        debug=env.debug,
    )
    data = generate(blob_digest=env.blob_digest, manifest_digest=env.manifest_digest)
    try:
        yield Session(settings=env, client=client, data=data, target=conformance_target.name)
    finally:
        client.close()
