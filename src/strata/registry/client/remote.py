"""The distribution-spec API of one repository: manifests, blobs, uploads, tags, referrers.

:class:`RegistryClient` hands out a :class:`Repository` per ``registry/repository``, sharing
one :class:`Transport` (connection pool, tokens) per registry.  Every manifest fetched is
checked: its bytes must hash to the digest asked for (a digest reference) and to the
``Docker-Content-Digest`` the registry announced.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from strata.errors import DigestMismatch, InvalidArgument, InvalidContent, NotFound
from strata.oci import Descriptor, Digest, Index, Reference, mediatypes, sniff_media_type
from strata.oci._json import loads_object
from strata.registry.client.auth import repository_scope
from strata.registry.client.credentials import Credentials, CredentialStore
from strata.registry.client.errors import RegistryNotFound
from strata.registry.client.hosts import Endpoint, RegistryOptions
from strata.registry.client.transport import Response, Transport, read_chunks

__all__ = ["MANIFEST_ACCEPT", "FetchedManifest", "RegistryClient", "Repository"]

#: Every manifest and index media type strata reads, as docker sends them in ``Accept``.
MANIFEST_ACCEPT = ", ".join([
    mediatypes.OCI_INDEX, mediatypes.OCI_MANIFEST,
    mediatypes.DOCKER_MANIFEST_LIST, mediatypes.DOCKER_MANIFEST,
])

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FetchedManifest:
    """A manifest or index as the registry served it: exact bytes, media type, digest."""

    raw: bytes
    media_type: str
    digest: Digest

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.raw))


class RegistryClient:
    """Registry access under one set of options; transports are made once per registry."""

    def __init__(self, options: RegistryOptions | None = None, *,
                 credentials: dict[str, Credentials] | None = None) -> None:
        self.options = options or RegistryOptions()
        self._explicit = dict(credentials or {})
        self._transports: dict[str, Transport] = {}
        self._lock = threading.Lock()

    def credential_store(self) -> CredentialStore:
        return CredentialStore(self.options.docker_config)

    def endpoint(self, registry: str) -> Endpoint:
        return self.options.endpoint(registry)

    def transport(self, registry: str) -> Transport:
        """The shared transport of ``registry``, with its stored credentials."""
        with self._lock:
            transport = self._transports.get(registry)
            if transport is None:
                endpoint = self.endpoint(registry)
                creds = self._explicit.get(registry)
                if creds is None:
                    creds = self.credential_store().get(endpoint.auth_key)
                transport = Transport(endpoint, credentials=creds, retries=self.options.retries,
                                      timeout=self.options.timeout,
                                      pool_size=max(4, self.options.workers * 2))
                self._transports[registry] = transport
            return transport

    def repository(self, ref: Reference) -> Repository:
        return Repository(self.transport(ref.registry), ref.repository)

    def close(self) -> None:
        with self._lock:
            for transport in self._transports.values():
                transport.close()
            self._transports.clear()

    def ping(self, registry: str, credentials: Credentials) -> None:
        """Check credentials against ``/v2/`` (what ``login`` does), with a fresh transport.

        Raises:
            RegistryUnauthorized: the registry refused them.
        """
        endpoint = self.endpoint(registry)
        transport = Transport(endpoint, credentials=credentials, retries=self.options.retries,
                              timeout=self.options.timeout)
        try:
            # A token service only checks the password when asked for a token: ask for one
            # with no scope, as docker login does.
            transport.request("GET", "/v2/", what=f"login to {registry}")
        finally:
            transport.close()


class Repository:
    """One repository of a registry."""

    def __init__(self, transport: Transport, name: str) -> None:
        self.transport = transport
        self.name = name
        self.registry = transport.endpoint.registry

    def scopes(self, *actions: str) -> tuple[str, ...]:
        return (repository_scope(self.name, *(actions or ("pull",))),)

    def _path(self, kind: str, ident: str) -> str:
        return f"/v2/{self.name}/{kind}/{urllib.parse.quote(ident, safe=':')}"

    # -- manifests -----------------------------------------------------------------------
    def get_manifest(self, ident: str, *, accept: str = MANIFEST_ACCEPT) -> FetchedManifest:
        """Fetch a manifest or index by tag or digest, verified.

        Raises:
            RegistryNotFound: no such tag/digest (``MANIFEST_UNKNOWN``).
            DigestMismatch: the bytes do not hash to the digest asked for or announced.
        """
        what = f"manifest {self.registry}/{self.name}:{ident}"
        resp = self.transport.request("GET", self._path("manifests", ident), scopes=self.scopes(),
                                      headers={"Accept": accept}, what=what)
        raw = resp.data
        actual = Digest.of(raw)
        if ident.startswith("sha256:") and Digest.parse(ident) != actual:
            raise DigestMismatch(f"{what}: the registry sent a manifest with digest {actual}",
                                 expected=ident, actual=str(actual))
        announced = resp.headers.get("Docker-Content-Digest")
        if announced:
            try:
                announced_digest = Digest.parse(announced)
            except InvalidArgument as exc:
                raise InvalidContent(f"{what}: bad Docker-Content-Digest {announced!r}") from exc
            if announced_digest.algorithm == actual.algorithm and announced_digest != actual:
                raise DigestMismatch(f"{what}: Docker-Content-Digest says {announced}, the bytes"
                                     f" hash to {actual}", expected=announced, actual=str(actual))
        content_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        media_type = content_type if content_type in mediatypes.MANIFEST_TYPES else (
            sniff_media_type(raw, what))
        return FetchedManifest(raw, media_type, actual)

    def head_manifest(self, ident: str) -> Descriptor | None:
        """The descriptor of a manifest (None when absent), without its body."""
        try:
            resp = self.transport.request("HEAD", self._path("manifests", ident),
                                          scopes=self.scopes(), headers={"Accept": MANIFEST_ACCEPT},
                                          what=f"manifest {self.name}:{ident}")
        except RegistryNotFound:
            return None
        digest = resp.headers.get("Docker-Content-Digest")
        if not digest:
            return None
        return Descriptor((resp.headers.get("Content-Type") or "").split(";")[0],
                          Digest.parse(digest), int(resp.headers.get("Content-Length") or 0))

    def put_manifest(self, ident: str, raw: bytes, media_type: str) -> Digest:
        """Upload a manifest under a tag or its digest; returns its digest.

        Raises:
            DigestMismatch: the registry announced another digest for the bytes.
        """
        what = f"manifest {self.registry}/{self.name}:{ident}"
        resp = self.transport.request("PUT", self._path("manifests", ident),
                                      scopes=self.scopes("pull", "push"),
                                      headers={"Content-Type": media_type}, body=raw,
                                      ok=(200, 201, 202), what=what)
        digest = Digest.of(raw)
        announced = resp.headers.get("Docker-Content-Digest")
        if announced and Digest.parse(announced) != digest:
            raise DigestMismatch(f"{what}: the registry stored it as {announced}",
                                 expected=str(digest), actual=announced)
        return digest

    def delete_manifest(self, digest: Digest) -> None:
        self.transport.request("DELETE", self._path("manifests", str(digest)),
                               scopes=self.scopes("pull", "push", "delete"), ok=(200, 202),
                               what=f"manifest {self.name}@{digest}")

    def tags(self) -> list[str]:
        """The repository's tags (following ``Link`` pagination)."""
        out: list[str] = []
        path: str | None = f"/v2/{self.name}/tags/list"
        while path:
            resp = self.transport.request("GET", path, scopes=self.scopes(),
                                          what=f"tags of {self.name}")
            doc = loads_object(resp.data, f"tags of {self.name}")
            tags = doc.get("tags") or []
            if isinstance(tags, list):
                out.extend(t for t in tags if isinstance(t, str))
            link = resp.headers.get("Link", "")
            path = link.split(";")[0].strip().strip("<>") if 'rel="next"' in link else None
        return out

    # -- blobs -------------------------------------------------------------------------
    def head_blob(self, digest: Digest, *, push: bool = False) -> int | None:
        """The size of a blob the repository has, or None."""
        try:
            resp = self.transport.request("HEAD", self._path("blobs", str(digest)),
                                          scopes=self.scopes("pull", "push") if push else self.scopes(),
                                          what=f"blob {digest}")
        except RegistryNotFound:
            return None
        return int(resp.headers.get("Content-Length") or 0)

    def open_blob(self, digest: Digest, *, offset: int = 0) -> Response:
        """Start downloading a blob (from ``offset`` with ``Range``); the caller releases it.

        The status is 206 when the range was honoured, 200 when the whole blob comes.
        """
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        return self.transport.request("GET", self._path("blobs", str(digest)), scopes=self.scopes(),
                                      headers=headers, ok=(200, 206), stream=True,
                                      what=f"blob {self.registry}/{self.name}@{digest}")

    def read_blob(self, digest: Digest, *, limit: int = 64 << 20) -> bytes:
        """A small blob (a config), verified."""
        resp = self.open_blob(digest)
        try:
            data = b"".join(read_chunks(resp))
        finally:
            resp.release_conn()
        if len(data) > limit:
            raise InvalidContent(f"blob {digest} is larger than {limit} bytes")
        actual = Digest.of(data)
        if actual != digest:
            raise DigestMismatch(f"blob {self.registry}/{self.name}@{digest}: content has digest"
                                 f" {actual}", expected=str(digest), actual=str(actual))
        return data

    def mount_blob(self, digest: Digest, source: str) -> str | None:
        """Ask for a cross-repository mount from ``source``.

        Returns:
            None when the blob was mounted (201); otherwise the upload location the
            registry opened instead (202), to upload to.
        """
        scopes = (*self.scopes("pull", "push"), repository_scope(source, "pull"))
        query = urllib.parse.urlencode({"mount": str(digest), "from": source})
        resp = self.transport.request("POST", f"/v2/{self.name}/blobs/uploads/?{query}",
                                      scopes=scopes, ok=(201, 202), what=f"mount {digest}",
                                      body=b"")
        if resp.status == 201:
            return None
        return self._location(resp)

    def start_upload(self) -> str:
        resp = self.transport.request("POST", f"/v2/{self.name}/blobs/uploads/",
                                      scopes=self.scopes("pull", "push"), ok=(202,),
                                      what=f"upload to {self.name}", body=b"")
        return self._location(resp)

    def _location(self, resp: Response) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise InvalidContent(f"{self.registry}: upload answer without Location")
        return self.transport.url(location)

    def upload_blob(self, desc: Descriptor, open_stream: Callable[[], BinaryIO], *,
                    location: str | None = None, chunk_size: int | None = None,
                    on_progress: Callable[[int], None] | None = None) -> None:
        """Upload a blob: one monolithic PUT, or PATCH chunks with ``Content-Range`` and a
        final ``PUT ?digest=``.

        Args:
            desc: the blob's descriptor (digest and size).
            open_stream: opens the blob's bytes (again, for a retry).
            location: an upload already opened (by a refused mount).
            chunk_size: send PATCH chunks of this many bytes (None: monolithic).
            on_progress: called with the number of bytes sent so far.
        """
        location = location or self.start_upload()
        scopes = self.scopes("pull", "push")
        what = f"blob {desc.digest} to {self.registry}/{self.name}"
        if chunk_size is None or desc.size <= chunk_size:
            def body() -> Iterator[bytes]:
                yield from _stream_range(open_stream, 0, desc.size, on_progress)
            self.transport.request(
                "PUT", _with_query(location, digest=str(desc.digest)), scopes=scopes,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(desc.size)},
                body=body, ok=(201, 204), what=what)
            return
        offset = 0
        while offset < desc.size:
            end = min(offset + chunk_size, desc.size)
            start = offset

            def chunk_body(start: int = start, end: int = end) -> Iterator[bytes]:
                yield from _stream_range(open_stream, start, end, on_progress)

            resp = self.transport.request(
                "PATCH", location, scopes=scopes,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{start}-{end - 1}", "Content-Length": str(end - start)},
                body=chunk_body, ok=(202,), what=what)
            location = self._location(resp)
            offset = end
        self.transport.request("PUT", _with_query(location, digest=str(desc.digest)),
                               scopes=scopes, headers={"Content-Length": "0"}, body=b"",
                               ok=(201, 204), what=what)

    # -- referrers -----------------------------------------------------------------------
    def referrers(self, digest: Digest, *, artifact_type: str | None = None) -> Index:
        """The manifests whose ``subject`` is ``digest`` (OCI 1.1 referrers API), falling
        back to the tag schema (the index tagged ``sha256-<hex>``) when the registry has no
        referrers endpoint.

        Returns:
            An index (empty when nothing refers to ``digest``).
        """
        path = f"/v2/{self.name}/referrers/{digest}"
        if artifact_type:
            path += "?" + urllib.parse.urlencode({"artifactType": artifact_type})
        try:
            resp = self.transport.request("GET", path, scopes=self.scopes(),
                                          headers={"Accept": mediatypes.OCI_INDEX},
                                          what=f"referrers of {digest}")
            content_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
            if content_type == mediatypes.OCI_INDEX or resp.data.lstrip().startswith(b"{"):
                index = Index.parse(resp.data, f"referrers of {digest}")
                return _filter(index, artifact_type)
        except RegistryNotFound:
            pass
        tag = f"{digest.algorithm}-{digest.hex}"
        try:
            fetched = self.get_manifest(tag, accept=mediatypes.OCI_INDEX)
        except RegistryNotFound:
            return Index(mediatypes.OCI_INDEX, ())
        return _filter(Index.parse(fetched.raw, f"referrers tag {tag}"), artifact_type)


def _filter(index: Index, artifact_type: str | None) -> Index:
    if artifact_type is None:
        return index
    return Index(index.media_type, tuple(d for d in index.manifests
                                         if d.artifact_type == artifact_type))


def _with_query(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + urllib.parse.urlencode(params)


def _stream_range(open_stream: Callable[[], BinaryIO], start: int, end: int,
                  on_progress: Callable[[int], None] | None) -> Iterable[bytes]:
    with open_stream() as f:
        f.seek(start)
        pos = start
        while pos < end:
            chunk = f.read(min(_CHUNK, end - pos))
            if not chunk:
                raise NotFound(f"blob ended at {pos} bytes, expected {end}")
            pos += len(chunk)
            yield chunk
            if on_progress is not None:
                on_progress(pos)
