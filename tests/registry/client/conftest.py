"""Fixtures for the registry client tests: real registries on 127.0.0.1, the counting and
fault-injecting proxy, small test images pushed there by skopeo, and a strata CLI with its
own store root and its own ``DOCKER_CONFIG``.

- ``registry``: Debian's docker-registry, plain HTTP, no auth;
- ``htpasswd_registry``: basic auth for :data:`USERS` (``registries.ALICE`` and ``BOB``);
- ``token_service`` / ``token_registry``: token auth; :data:`GRANTS` say who may do what
  (alice: pull+push everywhere; bob: pull only; anonymous: pull ``public/*``);
- ``tls`` / ``tls_registry``: HTTPS with a throwaway CA, plus ``trust_ca(registry)`` that
  tells strata to trust it (through ``STRATA_ROOT/registries.toml``);
- ``proxy``: a :class:`~strata.testing.registries.Proxy` in front of ``registry``;
  ``proxy_for(reg)`` for any other one;
- ``busybox_image`` / ``derived_image``: two OCI layouts sharing busybox's layer (the
  second adds one layer), ``push_image(image, reg, "repo:tag", creds=...)`` pushes with
  skopeo, ``archive_of(image)`` gives an oci-archive ``strata load`` reads;
- ``strata``: the CLI on a fresh root, with ``DOCKER_CONFIG`` pointing at ``docker_config``
  (an empty directory: no credentials of the host's leak in, none written leak out).

Every server is stopped when its test ends (the proxy and token service are threads of this
process; docker-registry is a child process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from strata.testing import baseimages, tools
from strata.testing.registries import (
    SERVERS,
    TEST_USERS,
    Grant,
    Proxy,
    Registry,
    TestImage,
    TLSFiles,
    TokenService,
    derive_image,
    layout_image,
    make_tls,
    skopeo_push,
)

#: The users of the htpasswd and token registries: name → password (ALICE and BOB).
USERS = TEST_USERS

#: What the token service grants.
GRANTS = (
    Grant("alice", "*", ("pull", "push")),
    Grant("bob", "*", ("pull",)),
    Grant(None, "public/*", ("pull",)),
)

#: Files the derived image's extra layer adds (big enough to show in byte counts).
DERIVED_FILES = {
    "etc/derived-release": b"strata registry client test image\n",
    "opt/app/data.bin": bytes(range(256)) * 1024,
}


@pytest.fixture(scope="session")
def busybox_image(cache_dir: Path) -> TestImage:
    """``localhost/busybox:latest`` (one layer) in its cached OCI layout."""
    return layout_image(baseimages.busybox_oci(cache_dir), baseimages.BUSYBOX_REF)


@pytest.fixture(scope="session")
def derived_image(busybox_image: TestImage, tmp_path_factory: pytest.TempPathFactory) -> TestImage:
    """``localhost/derived:latest``: busybox's layer (shared, same blob) plus one more."""
    return derive_image(
        busybox_image,
        tmp_path_factory.mktemp("derived-image") / "layout",
        ref="localhost/derived:latest",
        files=DERIVED_FILES,
    )


@pytest.fixture(scope="session")
def archive_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[TestImage], Path]:
    """``archive_of(image)``: the image as an oci-archive (made once by skopeo, digests
    kept), for ``strata load -i``."""
    base = tmp_path_factory.mktemp("archives")
    made: dict[str, Path] = {}

    def get(image: TestImage) -> Path:
        if image.manifest_digest not in made:
            path = base / f"{image.manifest_digest.split(':')[1][:16]}.tar"
            tools.skopeo_copy(
                f"oci:{image.layout}:{image.ref}",
                f"oci-archive:{path}:{image.ref}",
                extra=["--preserve-digests"],
            )
            made[image.manifest_digest] = path
        return made[image.manifest_digest]

    return get


@pytest.fixture
def push_image() -> Callable[..., str]:
    """``push_image(image, registry, "repo:tag", creds=None, address=None)`` with skopeo;
    returns ``ADDRESS/repo:tag``."""
    return skopeo_push


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 / localhost."""
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=SERVERS)
def registry(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Registry]:
    """A registry on 127.0.0.1, plain HTTP, no auth: docker-registry, then strata's own."""
    with Registry(tmp_path / "registry", server=request.param) as reg:
        yield reg


@pytest.fixture(params=SERVERS)
def htpasswd_registry(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Registry]:
    """A registry (docker-registry, strata) with htpasswd (basic) auth for :data:`USERS`."""
    with Registry(tmp_path / "htpasswd-registry", htpasswd=USERS, server=request.param) as reg:
        yield reg


@pytest.fixture
def token_service(tmp_path: Path) -> Iterator[TokenService]:
    """The token service for :data:`USERS` and :data:`GRANTS`."""
    with TokenService(tmp_path / "token-service", users=USERS, grants=GRANTS) as service:
        yield service


@pytest.fixture(params=SERVERS)
def token_registry(
    tmp_path: Path, token_service: TokenService, request: pytest.FixtureRequest
) -> Iterator[Registry]:
    """A registry (docker-registry, strata) trusting tokens from ``token_service``."""
    with Registry(tmp_path / "token-registry", token=token_service, server=request.param) as reg:
        yield reg


@pytest.fixture(params=SERVERS)
def tls_registry(tmp_path: Path, tls: TLSFiles, request: pytest.FixtureRequest) -> Iterator[Registry]:
    """A registry (docker-registry, strata) over HTTPS (certificate from ``tls``) with htpasswd auth."""
    with Registry(tmp_path / "tls-registry", tls=tls, htpasswd=USERS, server=request.param) as reg:
        yield reg


@pytest.fixture
def proxy_for() -> Iterator[Callable[[Registry], Proxy]]:
    """``proxy_for(reg)``: a started :class:`Proxy` in front of ``reg`` (trusting its CA),
    stopped when the test ends."""
    with ExitStack() as stack:

        def make(reg: Registry) -> Proxy:
            ca = reg.tls.ca_cert if reg.tls is not None else None
            return stack.enter_context(Proxy(reg.url, ca_cert=ca))

        yield make


@pytest.fixture
def proxy(registry: Registry, proxy_for: Callable[[Registry], Proxy]) -> Proxy:
    """A counting, fault-injecting proxy in front of ``registry``."""
    return proxy_for(registry)


@pytest.fixture
def docker_config(tmp_path: Path) -> Path:
    """An empty directory used as ``DOCKER_CONFIG`` (``config.json`` goes there)."""
    path = tmp_path / "docker-config"
    path.mkdir()
    return path


@pytest.fixture
def strata(strata_root: Path, docker_config: Path) -> tools.StrataCLI:
    """The strata CLI on a fresh root, with its own ``DOCKER_CONFIG``."""
    return tools.StrataCLI(strata_root, env={"DOCKER_CONFIG": str(docker_config)})


@pytest.fixture
def trust_ca(strata_root: Path) -> Callable[[Registry], None]:
    """``trust_ca(reg)``: make strata trust ``reg``'s CA (an entry in
    ``STRATA_ROOT/registries.toml``)."""

    def trust(reg: Registry) -> None:
        assert reg.tls is not None, "trust_ca needs a TLS registry"
        config = strata_root / "registries.toml"
        with config.open("a") as f:
            f.write(f'[[registry]]\nlocation = "{reg.address}"\nca = "{reg.tls.ca_cert}"\n\n')

    return trust
