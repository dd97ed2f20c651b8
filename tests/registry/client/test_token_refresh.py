"""Bearer tokens that stop working: the client asks the token service again.

- a cached token past its ``expires_in`` is not sent; a fresh one is fetched for the next
  request (one :class:`~strata.engine.Engine`, so one token cache, across two pulls);
- a registry that refuses a token it accepted before (``401`` with its challenge, in the
  middle of a pull) gets a fresh token once, and the pull finishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from strata.engine import Engine
from strata.testing import tools
from strata.testing.registries import (
    ALICE,
    TEST_USERS,
    Fault,
    Grant,
    Proxy,
    Registry,
    TestImage,
    TokenService,
    skopeo_push,
)


def _asked_for(service: TokenService, repository: str) -> int:
    return sum(1 for r in service.requests if any(repository in s for s in r.scopes))


@pytest.fixture
def short_tokens(tmp_path: Path) -> Iterator[TokenService]:
    """A token service whose tokens say they expire after 2 seconds."""
    grants = (Grant("alice", "*", ("pull", "push")), Grant(None, "public/*", ("pull",)))
    with TokenService(tmp_path / "short-tokens", users=TEST_USERS, grants=grants, lifetime=2) as ts:
        yield ts


def test_an_expired_token_is_replaced_before_it_is_sent(
    tmp_path: Path, short_tokens: TokenService, busybox_image: TestImage, derived_image: TestImage
) -> None:
    with Registry(tmp_path / "registry", token=short_tokens) as reg:
        skopeo_push(busybox_image, reg, "public/busybox:1", creds=ALICE)
        skopeo_push(derived_image, reg, "public/busybox:2", creds=ALICE)
        engine = Engine(tmp_path / "root")
        short_tokens.requests.clear()
        first = engine.pull(f"{reg.address}/public/busybox:1")
        assert str(first.digest) == busybox_image.manifest_digest
        assert _asked_for(short_tokens, "public/busybox") == 1
        time.sleep(1.5)  # past the 2 s lifetime less the client's safety margin
        second = engine.pull(f"{reg.address}/public/busybox:2")
        assert str(second.digest) == derived_image.manifest_digest
        assert _asked_for(short_tokens, "public/busybox") == 2


def test_a_refused_token_is_fetched_again_once_and_the_pull_finishes(
    strata: tools.StrataCLI,
    token_registry: Registry,
    token_service: TokenService,
    proxy_for: Callable[[Registry], Proxy],
    busybox_image: TestImage,
) -> None:
    proxy = proxy_for(token_registry)
    skopeo_push(busybox_image, token_registry, "public/busybox:1", creds=ALICE)
    digest, _ = busybox_image.layers[0]
    challenge = (f'Bearer realm="{token_service.realm}",service="{token_service.service}",'
                 'scope="repository:public/busybox:pull"')
    fault = Fault.unauthorized(rf"/v2/public/busybox/blobs/{digest}", challenge)
    proxy.inject(fault)
    token_service.requests.clear()

    pulled = strata("pull", f"{proxy.address}/public/busybox:1")

    assert f"Digest: {busybox_image.manifest_digest}" in pulled.stdout
    assert proxy.fired(fault) == 1
    assert _asked_for(token_service, "public/busybox") == 2  # the first, and one fresh one
    blob_gets = [ex.status for ex in proxy.requests_for("GET", rf"/v2/public/busybox/blobs/{digest}")]
    assert blob_gets == [401, 200], blob_gets
