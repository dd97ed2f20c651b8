"""The distribution-spec client: references to endpoints, auth, pull, push, copy, referrers.

Synchronous and thread-safe; parallel blob transfers use the caller's (or an internal,
bounded) thread pool.  HTTP is urllib3 (connection pooling, TLS with custom CAs, streaming).
"""

from __future__ import annotations

from strata.registry.client.auth import Challenge as Challenge
from strata.registry.client.auth import parse_challenges as parse_challenges
from strata.registry.client.copy import CopyResult as CopyResult
from strata.registry.client.copy import ImageLocation as ImageLocation
from strata.registry.client.copy import copy_image as copy_image
from strata.registry.client.credentials import Credentials as Credentials
from strata.registry.client.credentials import CredentialStore as CredentialStore
from strata.registry.client.errors import ErrorInfo as ErrorInfo
from strata.registry.client.errors import RegistryError as RegistryError
from strata.registry.client.errors import RegistryInvalid as RegistryInvalid
from strata.registry.client.errors import RegistryNotFound as RegistryNotFound
from strata.registry.client.errors import RegistryUnauthorized as RegistryUnauthorized
from strata.registry.client.errors import RegistryUnavailable as RegistryUnavailable
from strata.registry.client.hosts import Endpoint as Endpoint
from strata.registry.client.hosts import RegistryOptions as RegistryOptions
from strata.registry.client.hosts import is_loopback as is_loopback
from strata.registry.client.hosts import load_registries_toml as load_registries_toml
from strata.registry.client.inspect import RemoteInspect as RemoteInspect
from strata.registry.client.inspect import inspect_remote as inspect_remote
from strata.registry.client.inspect import manifest_inspect as manifest_inspect
from strata.registry.client.login import login as login
from strata.registry.client.login import logout as logout
from strata.registry.client.pull import FetchedImage as FetchedImage
from strata.registry.client.pull import PullOptions as PullOptions
from strata.registry.client.pull import PullResult as PullResult
from strata.registry.client.pull import fetch_image as fetch_image
from strata.registry.client.pull import pull as pull
from strata.registry.client.push import PushOptions as PushOptions
from strata.registry.client.push import PushResult as PushResult
from strata.registry.client.push import push as push
from strata.registry.client.remote import MANIFEST_ACCEPT as MANIFEST_ACCEPT
from strata.registry.client.remote import FetchedManifest as FetchedManifest
from strata.registry.client.remote import RegistryClient as RegistryClient
from strata.registry.client.remote import Repository as Repository
from strata.registry.client.sources import BlobSources as BlobSources

__all__ = [
    "MANIFEST_ACCEPT",
    "BlobSources",
    "Challenge",
    "CopyResult",
    "CredentialStore",
    "Credentials",
    "Endpoint",
    "ErrorInfo",
    "FetchedImage",
    "FetchedManifest",
    "ImageLocation",
    "PullOptions",
    "PullResult",
    "PushOptions",
    "PushResult",
    "RegistryClient",
    "RegistryError",
    "RegistryInvalid",
    "RegistryNotFound",
    "RegistryOptions",
    "RegistryUnauthorized",
    "RegistryUnavailable",
    "RemoteInspect",
    "Repository",
    "copy_image",
    "fetch_image",
    "inspect_remote",
    "is_loopback",
    "load_registries_toml",
    "login",
    "logout",
    "manifest_inspect",
    "parse_challenges",
    "pull",
    "push",
]
