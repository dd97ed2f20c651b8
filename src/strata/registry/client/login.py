"""``login`` / ``logout``: check credentials against a registry, then keep or forget them in
docker's ``config.json`` (or its credential helper), as ``docker login`` does."""

from __future__ import annotations

from strata.registry.client.credentials import Credentials
from strata.registry.client.remote import RegistryClient

__all__ = ["login", "logout"]


def login(client: RegistryClient, registry: str, username: str, password: str) -> str:
    """Verify ``username``/``password`` with the registry, then store them.

    Returns:
        The key the credentials were stored under (``https://index.docker.io/v1/`` for
        Docker Hub, else ``host[:port]``).

    Raises:
        Unauthorized: the registry refused the credentials (nothing is stored).
        Unavailable: the registry could not be reached.
    """
    creds = Credentials(username, password)
    client.ping(registry, creds)
    key = client.endpoint(registry).auth_key
    client.credential_store().store(key, creds)
    return key


def logout(client: RegistryClient, registry: str) -> str:
    """Forget the stored credentials of ``registry``.

    Raises:
        NotFound: none were stored.
    """
    key = client.endpoint(registry).auth_key
    client.credential_store().erase(key)
    return key
