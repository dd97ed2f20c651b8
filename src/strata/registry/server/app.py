"""The distribution-spec v1.1 HTTP API over a :class:`StorageDriver` (aiohttp).

Owns routing (``/v2/...`` URLs carry repository names with slashes, so one dispatcher
matches them with the spec's regular expressions), request validation, manifest
validation, the referrers index, and the spec's answers (statuses, headers, error bodies).
Bodies are streamed: uploads go to the driver chunk by chunk while hashed, blobs are sent
with ``sendfile`` when the driver has a local file, and nothing reads a blob whole.
Permissions are asked of an :class:`strata.registry.server.auth.Authorizer`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web

from strata.errors import (
    DigestMismatch,
    InvalidArgument,
    InvalidContent,
    NotFound,
    NotSupported,
    StrataError,
    Unavailable,
)
from strata.oci import Descriptor, Digest, Index, Manifest, mediatypes, parse_any
from strata.registry.server.auth import Authorizer, OpenAuthorizer
from strata.registry.server.config import ServerConfig
from strata.registry.server.errors import RegistryHTTPError, error_body
from strata.registry.server.metrics import Metrics
from strata.registry.server.names import check_name, check_tag, is_digest_reference
from strata.registry.server.storage.base import StorageDriver, UploadOffsetError, UploadStatus

__all__ = ["DRIVER_KEY", "RegistryApp", "build_app"]

_log = logging.getLogger(__name__)

DRIVER_KEY = web.AppKey("driver", StorageDriver)

_API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
_CHUNK = 1 << 20
_ROUTES: list[tuple[str, re.Pattern[str]]] = [
    ("base", re.compile(r"^/v2/?$")),
    ("catalog", re.compile(r"^/v2/_catalog$")),
    ("tags", re.compile(r"^/v2/(?P<name>.+)/tags/list$")),
    ("manifest", re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")),
    ("upload", re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<upload>[^/]*)$")),
    ("blob", re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)$")),
    ("referrers", re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)$")),
]
_MANIFEST_MEDIA_TYPES = mediatypes.MANIFEST_TYPES
_SCHEMA1 = frozenset({mediatypes.DOCKER_SCHEMA1_MANIFEST, mediatypes.DOCKER_SCHEMA1_SIGNED})
_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


_Handler = Callable[[web.Request, "_Route"], Awaitable[web.StreamResponse]]


def _action_of(method: str) -> str:
    if method in ("GET", "HEAD"):
        return "pull"
    if method == "DELETE":
        return "delete"
    return "push"


@dataclass(frozen=True, slots=True)
class _Route:
    kind: str
    name: str | None
    params: dict[str, str]


def _digest_or(code: str, text: str) -> Digest:
    try:
        return Digest.parse(text)
    except InvalidArgument as exc:
        raise RegistryHTTPError(code, {"digest": text[:200]}, message=str(exc)) from None


def _upload_headers(name: str, status: UploadStatus) -> dict[str, str]:
    end = status.size - 1 if status.size > 0 else 0
    return {
        "Location": f"/v2/{name}/blobs/uploads/{status.id}",
        "Range": f"0-{end}",
        "Docker-Upload-UUID": status.id,
    }


def _head(status: int, headers: dict[str, str], content_type: str, length: int) -> web.StreamResponse:
    """A HEAD answer announcing the length of the body a GET would send."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = content_type
    response.content_length = length
    return response


def _json(body: object, *, status: int = 200, content_type: str = "application/json") -> web.Response:
    """A JSON answer encoded compactly with a final newline, as distribution writes them."""
    data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
    response = web.Response(status=status, body=data)
    response.content_type = content_type
    return response


class RegistryApp:
    """The request handlers, bound to one driver, configuration and authorizer."""

    def __init__(
        self,
        config: ServerConfig,
        driver: StorageDriver,
        *,
        authorizer: Authorizer | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.driver = driver
        self.authorizer = authorizer or OpenAuthorizer()
        self.metrics = metrics or Metrics()
        self._table: dict[tuple[str, str], _Handler] = {
            ("base", "GET"): self.base,
            ("base", "HEAD"): self.base,
            ("catalog", "GET"): self.catalog,
            ("tags", "GET"): self.tags,
            ("manifest", "GET"): self.get_manifest,
            ("manifest", "HEAD"): self.get_manifest,
            ("manifest", "PUT"): self.put_manifest,
            ("manifest", "DELETE"): self.delete_manifest,
            ("blob", "GET"): self.get_blob,
            ("blob", "HEAD"): self.get_blob,
            ("blob", "DELETE"): self.delete_blob,
            ("upload", "POST"): self.start_upload,
            ("upload", "GET"): self.upload_status,
            ("upload", "PATCH"): self.patch_upload,
            ("upload", "PUT"): self.put_upload,
            ("upload", "DELETE"): self.cancel_upload,
            ("referrers", "GET"): self.referrers,
        }

    # ---------------------------------------------------------------- dispatch

    def _route(self, request: web.Request) -> _Route:
        path = request.rel_url.raw_path
        for kind, pattern in _ROUTES:
            m = pattern.match(path)
            if m is None:
                continue
            params = {k: v for k, v in m.groupdict().items() if v is not None}
            name = params.pop("name", None)
            if name is not None:
                try:
                    check_name(name)
                except InvalidArgument:
                    raise RegistryHTTPError("NAME_INVALID", {"name": name[:300]}) from None
            return _Route(kind, name, params)
        raise web.HTTPNotFound(
            body=json.dumps({"errors": [{"code": "UNSUPPORTED", "message": "unknown route"}]}),
            content_type="application/json",
        )

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Route a ``/v2/`` request, check permissions, run its handler, map errors."""
        self.metrics.in_flight += 1
        try:
            return await self._dispatch(request)
        finally:
            self.metrics.in_flight -= 1

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            route = self._route(request)
            request["route"] = route.kind
            request["repository"] = route.name or ""
            handler = self._handler(route.kind, request.method)
            if handler is None:
                raise RegistryHTTPError("UNSUPPORTED", {"method": request.method}, status=405)
            if route.kind == "base":
                scope_actions: frozenset[str] = frozenset()
            elif route.kind == "catalog":
                scope_actions = frozenset({"*"})
            else:
                actions = {_action_of(request.method)}
                if "push" in actions:
                    actions.add("pull")
                scope_actions = frozenset(actions)
            request["user"] = await self.authorizer.authorize(request, route.name, scope_actions)
            if route.kind != "base" and request.method == "DELETE" and not self.config.delete_enabled:
                raise RegistryHTTPError("UNSUPPORTED", {"reason": "deletes are disabled"}, status=405)
            response = await handler(request, route)
        except RegistryHTTPError as exc:
            response = self._error(exc, request)
        except UploadOffsetError as exc:
            response = self._error(
                RegistryHTTPError("RANGE_INVALID", {"expected": exc.expected, "actual": exc.actual}),
                request,
            )
        except web.HTTPException:
            raise
        except Unavailable as exc:
            # the storage failed (an S3 outage): retryable, say so
            response = self._error(RegistryHTTPError("UNKNOWN", message=str(exc), status=503), request)
        except StrataError as exc:
            _log.error("request %s %s failed: %s", request.method, request.rel_url.raw_path, exc)
            response = self._error(RegistryHTTPError("UNKNOWN", message=str(exc)), request)
        for key, value in _API_VERSION.items():
            response.headers.setdefault(key, value)
        return response

    @staticmethod
    def _error(exc: RegistryHTTPError, request: web.Request) -> web.StreamResponse:
        request["error_code"] = exc.code
        body = error_body(exc)
        if request.method == "HEAD":
            return _head(exc.status, exc.headers, "application/json", len(body))
        response = web.Response(status=exc.status, body=body, headers=exc.headers)
        response.content_type = "application/json"
        return response

    def _handler(self, kind: str, method: str) -> _Handler | None:
        return self._table.get((kind, method))

    # ---------------------------------------------------------------- base, catalog, tags

    async def base(self, request: web.Request, route: _Route) -> web.StreamResponse:
        response = web.Response(status=200, body=b"{}")
        response.content_type = "application/json"
        return response

    @staticmethod
    def _page(request: web.Request, items: list[str], path: str) -> tuple[list[str], str | None]:
        """Apply ``n`` / ``last`` to sorted ``items``; the ``Link`` header value if more remain."""
        items = sorted(items)
        last = request.query.get("last")
        if last:
            items = [i for i in items if i > last]
        n_text = request.query.get("n")
        if n_text is None or n_text == "":
            return items, None
        try:
            n = int(n_text)
        except ValueError:
            n = -1
        if n < 0:
            raise RegistryHTTPError("PAGINATION_NUMBER_INVALID", {"n": n_text[:50]})
        page = items[:n]
        if len(items) > n and page:
            query = urlencode({"last": page[-1], "n": n})
            return page, f'<{path}?{query}>; rel="next"'
        return page, None

    async def catalog(self, request: web.Request, route: _Route) -> web.StreamResponse:
        names = [name async for name in self.driver.list_repositories()]
        page, link = self._page(request, names, "/v2/_catalog")
        response = _json({"repositories": page})
        if link:
            response.headers["Link"] = link
        return response

    async def tags(self, request: web.Request, route: _Route) -> web.StreamResponse:
        assert route.name is not None
        try:
            tags = await self.driver.list_tags(route.name)
        except NotFound:
            raise RegistryHTTPError("NAME_UNKNOWN", {"name": route.name}) from None
        page, link = self._page(request, tags, f"/v2/{route.name}/tags/list")
        response = _json({"name": route.name, "tags": page})
        if link:
            response.headers["Link"] = link
        return response

    # ---------------------------------------------------------------- manifests

    async def _resolve(self, name: str, reference: str) -> Digest:
        if is_digest_reference(reference):
            digest = _digest_or("DIGEST_INVALID", reference)
        else:
            try:
                check_tag(reference)
                digest = await self.driver.get_tag(name, reference)
            except (InvalidArgument, NotFound):
                raise RegistryHTTPError("MANIFEST_UNKNOWN", {"tag": reference[:200]}) from None
        return digest

    async def _manifest_bytes(self, name: str, digest: Digest) -> tuple[bytes, str]:
        try:
            media_type = await self.driver.get_manifest(name, digest)
            data = b"".join([chunk async for chunk in self.driver.read_blob(digest)])
        except NotFound:
            raise RegistryHTTPError("MANIFEST_UNKNOWN", {"digest": str(digest)}) from None
        return data, media_type

    async def get_manifest(self, request: web.Request, route: _Route) -> web.StreamResponse:
        assert route.name is not None
        digest = await self._resolve(route.name, route.params["reference"])
        data, media_type = await self._manifest_bytes(route.name, digest)
        headers = {"Docker-Content-Digest": str(digest), "ETag": f'"{digest}"'}
        if request.method == "HEAD":
            return _head(200, headers, media_type, len(data))
        response = web.Response(status=200, body=data, headers=headers)
        response.content_type = media_type
        return response

    async def _read_limited(self, request: web.Request, limit: int) -> bytes:
        if request.content_length is not None and request.content_length > limit:
            raise RegistryHTTPError(
                "SIZE_INVALID", {"limit": limit}, message=f"manifest exceeds {limit} bytes", status=413
            )
        parts: list[bytes] = []
        total = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise RegistryHTTPError(
                    "SIZE_INVALID", {"limit": limit}, message=f"manifest exceeds {limit} bytes", status=413
                )
            parts.append(chunk)
        return b"".join(parts)

    async def put_manifest(self, request: web.Request, route: _Route) -> web.StreamResponse:
        name = route.name
        assert name is not None
        reference = route.params["reference"]
        if is_digest_reference(reference):
            expected: Digest | None = _digest_or("DIGEST_INVALID", reference)
            tag = None
        else:
            expected = None
            try:
                tag = check_tag(reference)
            except InvalidArgument:
                raise RegistryHTTPError("TAG_INVALID", {"tag": reference[:200]}) from None
        raw = await self._read_limited(request, self.config.manifest_size_limit)
        digest = Digest.of(raw)
        if expected is not None and expected != digest:
            raise RegistryHTTPError(
                "DIGEST_INVALID", {"expected": str(expected), "actual": str(digest)}
            )
        media_type, parsed = self._parse_manifest(request.headers.get("Content-Type", ""), raw)
        await self._verify_references(name, parsed)
        await self.driver.put_blob(raw)
        await self.driver.put_manifest(name, digest, media_type)
        headers = {
            "Location": f"/v2/{name}/manifests/{digest}",
            "Docker-Content-Digest": str(digest),
        }
        if parsed.subject is not None:
            await self.driver.add_referrer(
                name, parsed.subject.digest, digest, self._referrer_descriptor(parsed, media_type, raw)
            )
            headers["OCI-Subject"] = str(parsed.subject.digest)
        if tag is not None:
            await self.driver.put_tag(name, tag, digest)
        return web.Response(status=201, headers=headers)

    @staticmethod
    def _parse_manifest(content_type: str, raw: bytes) -> tuple[str, Manifest | Index]:
        content_type = content_type.split(";", maxsplit=1)[0].strip()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RegistryHTTPError("MANIFEST_INVALID", {"reason": f"not JSON: {exc}"}) from None
        if not isinstance(body, dict):
            raise RegistryHTTPError("MANIFEST_INVALID", {"reason": "not a JSON object"})
        declared = body.get("mediaType")
        if declared is not None and not isinstance(declared, str):
            raise RegistryHTTPError("MANIFEST_INVALID", {"reason": "mediaType is not a string"})
        if content_type in _MANIFEST_MEDIA_TYPES:
            if declared and declared != content_type:
                raise RegistryHTTPError(
                    "MANIFEST_INVALID",
                    {"reason": f"mediaType {declared!r} does not match Content-Type {content_type!r}"},
                )
            media_type = content_type
        elif content_type in _SCHEMA1 or declared in _SCHEMA1 or body.get("schemaVersion") == 1:
            raise RegistryHTTPError("MANIFEST_INVALID", {"reason": "Docker schema 1 is not supported"})
        elif declared in _MANIFEST_MEDIA_TYPES:
            media_type = declared
        elif declared:
            raise RegistryHTTPError("MANIFEST_INVALID", {"reason": f"unknown mediaType {declared!r}"})
        elif "manifests" in body:
            media_type = mediatypes.OCI_INDEX
        else:
            media_type = mediatypes.OCI_MANIFEST
        try:
            parsed = parse_any(raw, media_type)
        except (InvalidContent, NotSupported) as exc:
            raise RegistryHTTPError("MANIFEST_INVALID", {"reason": str(exc)}) from None
        return media_type, parsed

    async def _verify_references(self, name: str, parsed: Manifest | Index) -> None:
        if isinstance(parsed, Index):
            for desc in parsed.manifests:
                try:
                    await self.driver.get_manifest(name, desc.digest)
                except NotFound:
                    raise RegistryHTTPError(
                        "MANIFEST_BLOB_UNKNOWN", {"digest": str(desc.digest)},
                        message="manifest unknown to registry",
                    ) from None
            return
        missing: list[tuple[str, object]] = []
        for desc in (parsed.config, *parsed.layers):
            if desc.urls and mediatypes.is_non_distributable(desc.media_type):
                continue
            if not await self._check_blob(name, desc):
                missing.append(("MANIFEST_BLOB_UNKNOWN", str(desc.digest)))
        if missing:
            raise RegistryHTTPError(missing[0][0], missing[0][1], more=tuple(missing[1:]))

    async def _check_blob(self, name: str, desc: Descriptor) -> bool:
        """False if the blob is unknown to the repository; refuses a size mismatch."""
        try:
            if not await self.driver.has_blob_link(name, desc.digest):
                return False
            stat = await self.driver.stat_blob(desc.digest)
        except NotFound:
            return False
        if stat.size != desc.size:
            raise RegistryHTTPError(
                "MANIFEST_INVALID",
                {"digest": str(desc.digest),
                 "reason": f"size {desc.size} but the blob has {stat.size} bytes"},
            )
        return True

    @staticmethod
    def _referrer_descriptor(parsed: Manifest | Index, media_type: str, raw: bytes) -> bytes:
        obj: dict[str, object] = {"mediaType": media_type, "digest": str(Digest.of(raw)), "size": len(raw)}
        artifact_type = parsed.artifact_type
        if artifact_type is None and isinstance(parsed, Manifest):
            artifact_type = parsed.config.media_type
        if artifact_type:
            obj["artifactType"] = artifact_type
        if parsed.annotations:
            obj["annotations"] = dict(parsed.annotations)
        return json.dumps(obj, separators=(",", ":")).encode()

    async def delete_manifest(self, request: web.Request, route: _Route) -> web.StreamResponse:
        name = route.name
        assert name is not None
        reference = route.params["reference"]
        if not is_digest_reference(reference):
            try:
                check_tag(reference)
                await self.driver.delete_tag(name, reference)
            except (InvalidArgument, NotFound):
                raise RegistryHTTPError("MANIFEST_UNKNOWN", {"tag": reference[:200]}) from None
            return web.Response(status=202)
        digest = _digest_or("DIGEST_INVALID", reference)
        data, media_type = await self._manifest_bytes(name, digest)
        try:
            await self.driver.delete_manifest(name, digest)
        except NotFound:
            raise RegistryHTTPError("MANIFEST_UNKNOWN", {"digest": str(digest)}) from None
        try:
            subject = parse_any(data, media_type).subject
        except StrataError:
            subject = None
        if subject is not None:
            await self.driver.remove_referrer(name, subject.digest, digest)
        try:
            tags = await self.driver.list_tags(name)
        except NotFound:
            # On an object store a repository is only its keys: deleting its last manifest
            # after its blobs leaves nothing, hence no tags to untag.
            tags = []
        for tag in tags:
            try:
                if await self.driver.get_tag(name, tag) == digest:
                    await self.driver.delete_tag(name, tag)
            except NotFound:
                continue
        return web.Response(status=202)

    # ---------------------------------------------------------------- referrers

    async def referrers(self, request: web.Request, route: _Route) -> web.StreamResponse:
        assert route.name is not None
        subject = _digest_or("DIGEST_INVALID", route.params["digest"])
        descriptors = [json.loads(d) for d in await self.driver.list_referrers(route.name, subject)]
        headers = {}
        wanted = request.query.get("artifactType")
        if wanted:
            descriptors = [d for d in descriptors if d.get("artifactType") == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        body = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": descriptors}
        response = _json(body, content_type=mediatypes.OCI_INDEX)
        response.headers.update(headers)
        return response

    # ---------------------------------------------------------------- blobs

    async def get_blob(self, request: web.Request, route: _Route) -> web.StreamResponse:
        name = route.name
        assert name is not None
        digest = _digest_or("DIGEST_INVALID", route.params["digest"])
        try:
            if not await self.driver.has_blob_link(name, digest):
                raise NotFound(str(digest))
            stat = await self.driver.stat_blob(digest)
        except NotFound:
            raise RegistryHTTPError("BLOB_UNKNOWN", {"digest": str(digest)}) from None
        headers = {
            "Docker-Content-Digest": str(digest),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Cache-Control": "max-age=31536000",
        }
        if request.method == "HEAD":
            return _head(200, headers, "application/octet-stream", stat.size)
        path = self.driver.local_path(digest)
        if path is not None:
            file_response = web.FileResponse(path, chunk_size=_CHUNK, headers=headers)
            return file_response
        return await self._stream_blob(request, digest, stat.size, headers)

    async def _stream_blob(
        self, request: web.Request, digest: Digest, size: int, headers: dict[str, str]
    ) -> web.StreamResponse:
        start, end, status = 0, size, 200
        range_header = request.headers.get("Range")
        if range_header:
            m = _RANGE.match(range_header.strip())
            if m is None or (not m.group(1) and not m.group(2)):
                raise RegistryHTTPError("RANGE_INVALID", {"range": range_header[:100]},
                                        headers={"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)) + 1, size) if m.group(2) else size
            else:
                start = max(size - int(m.group(2)), 0)
            if start >= size or start >= end:
                raise RegistryHTTPError("RANGE_INVALID", {"range": range_header[:100]},
                                        headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = end - start
        await response.prepare(request)
        async for chunk in self.driver.read_blob(digest, start, end):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def delete_blob(self, request: web.Request, route: _Route) -> web.StreamResponse:
        assert route.name is not None
        digest = _digest_or("DIGEST_INVALID", route.params["digest"])
        try:
            await self.driver.unlink_blob(route.name, digest)
        except NotFound:
            raise RegistryHTTPError("BLOB_UNKNOWN", {"digest": str(digest)}) from None
        return web.Response(status=202)

    # ---------------------------------------------------------------- uploads

    async def _body(self, request: web.Request, limit: int | None = None) -> AsyncIterator[bytes]:
        received = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            received += len(chunk)
            if limit is not None and received > limit:
                raise RegistryHTTPError("RANGE_INVALID", {"reason": "body longer than Content-Range"})
            yield chunk

    def _chunk_range(self, request: web.Request, status: UploadStatus, name: str) -> int | None:
        """Check ``Content-Range`` of a chunk against the upload; the chunk's length if given."""
        header = request.headers.get("Content-Range")
        if header is None:
            return None
        m = _CONTENT_RANGE.match(header.strip())
        if m is None:
            raise RegistryHTTPError("RANGE_INVALID", {"range": header[:100]}, status=416,
                                    headers=_upload_headers(name, status))
        start, end = int(m.group(1)), int(m.group(2))
        if start != status.size or end < start:
            raise RegistryHTTPError(
                "RANGE_INVALID",
                {"range": header[:100], "expected_start": status.size},
                headers=_upload_headers(name, status),
            )
        length = end - start + 1
        if request.content_length is not None and request.content_length != length:
            raise RegistryHTTPError(
                "RANGE_INVALID",
                {"range": header[:100], "content_length": request.content_length},
                headers=_upload_headers(name, status),
            )
        return length

    async def _upload_of(self, name: str, upload_id: str) -> UploadStatus:
        try:
            status = await self.driver.upload_status(upload_id)
        except NotFound:
            raise RegistryHTTPError("BLOB_UPLOAD_UNKNOWN", {"upload": upload_id[:100]}) from None
        if status.repository != name:
            raise RegistryHTTPError("BLOB_UPLOAD_UNKNOWN", {"upload": upload_id[:100]})
        return status

    async def start_upload(self, request: web.Request, route: _Route) -> web.StreamResponse:
        name = route.name
        assert name is not None
        if route.params.get("upload"):
            raise RegistryHTTPError("UNSUPPORTED", {"method": "POST"}, status=405)
        mount = request.query.get("mount")
        if mount:
            digest = _digest_or("DIGEST_INVALID", mount)
            source = request.query.get("from")
            if source and await self._mountable(request, source, digest):
                await self.driver.link_blob(name, digest)
                return web.Response(
                    status=201,
                    headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": str(digest)},
                )
        digest_text = request.query.get("digest")
        if digest_text is None:
            status = await self.driver.create_upload(name)
            return web.Response(status=202, headers=_upload_headers(name, status))
        _digest_or("DIGEST_INVALID", digest_text)
        status = await self.driver.create_upload(name)
        try:
            return await self._finish(request, name, status, digest_text)
        except BaseException:
            # a failed single-request upload leaves nothing behind
            with contextlib.suppress(NotFound):
                await self.driver.cancel_upload(status.id)
            raise

    async def _mountable(self, request: web.Request, source: str, digest: Digest) -> bool:
        try:
            check_name(source)
        except InvalidArgument:
            return False
        if not await self.authorizer.can(request, source, "pull"):
            return False
        try:
            if not await self.driver.has_blob_link(source, digest):
                return False
            await self.driver.stat_blob(digest)
        except NotFound:
            return False
        return True

    async def upload_status(self, request: web.Request, route: _Route) -> web.StreamResponse:
        assert route.name is not None
        status = await self._upload_of(route.name, route.params["upload"])
        return web.Response(status=204, headers=_upload_headers(route.name, status))

    async def patch_upload(self, request: web.Request, route: _Route) -> web.StreamResponse:
        name = route.name
        assert name is not None
        status = await self._upload_of(name, route.params["upload"])
        length = self._chunk_range(request, status, name)
        try:
            status = await self.driver.append_upload(status.id, status.size, self._body(request, length))
        except UploadOffsetError:
            current = await self._upload_of(name, status.id)
            raise RegistryHTTPError("RANGE_INVALID", headers=_upload_headers(name, current)) from None
        except NotFound:
            raise RegistryHTTPError("BLOB_UPLOAD_UNKNOWN", {"upload": status.id}) from None
        return web.Response(status=202, headers=_upload_headers(name, status))

    async def put_upload(self, request: web.Request, route: _Route) -> web.StreamResponse:
        name = route.name
        assert name is not None
        status = await self._upload_of(name, route.params["upload"])
        digest_text = request.query.get("digest")
        if not digest_text:
            raise RegistryHTTPError("DIGEST_INVALID", {"reason": "digest parameter missing"})
        return await self._finish(request, name, status, digest_text)

    async def _finish(
        self, request: web.Request, name: str, status: UploadStatus, digest_text: str
    ) -> web.StreamResponse:
        """Append the request body (if any) to an upload and commit it as ``digest_text``."""
        try:
            digest = Digest.parse(digest_text)
        except InvalidArgument as exc:
            raise RegistryHTTPError(
                "DIGEST_INVALID", {"digest": digest_text[:200]}, message=str(exc)
            ) from None
        length = self._chunk_range(request, status, name)
        if request.body_exists:
            try:
                status = await self.driver.append_upload(status.id, status.size, self._body(request, length))
            except NotFound:
                raise RegistryHTTPError("BLOB_UPLOAD_UNKNOWN", {"upload": status.id}) from None
        try:
            stat = await self.driver.commit_upload(status.id, digest)
        except DigestMismatch as exc:
            # A lying client: drop what it sent so nothing of it stays on disk.
            try:
                await self.driver.cancel_upload(status.id)
            except NotFound:
                pass
            raise RegistryHTTPError(
                "DIGEST_INVALID", {"expected": exc.expected, "actual": exc.actual}
            ) from None
        except NotFound:
            raise RegistryHTTPError("BLOB_UPLOAD_UNKNOWN", {"upload": status.id}) from None
        await self.driver.link_blob(name, stat.digest)
        return web.Response(
            status=201,
            headers={
                "Location": f"/v2/{name}/blobs/{stat.digest}",
                "Docker-Content-Digest": str(stat.digest),
            },
        )

    async def cancel_upload(self, request: web.Request, route: _Route) -> web.StreamResponse:
        assert route.name is not None
        status = await self._upload_of(route.name, route.params["upload"])
        try:
            await self.driver.cancel_upload(status.id)
        except NotFound:
            raise RegistryHTTPError("BLOB_UPLOAD_UNKNOWN", {"upload": status.id}) from None
        return web.Response(status=204)


def build_app(
    config: ServerConfig,
    driver: StorageDriver,
    *,
    authorizer: Authorizer | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    """The aiohttp application serving the registry API, ``/metrics`` and ``/auth/token``.

    The driver is opened on startup and closed on cleanup.
    """
    registry = RegistryApp(config, driver, authorizer=authorizer, metrics=metrics)
    app = web.Application(client_max_size=1 << 40)
    app[DRIVER_KEY] = driver

    async def on_startup(_app: web.Application) -> None:
        await driver.open()

    async def on_cleanup(_app: web.Application) -> None:
        await driver.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)

    async def metrics_handler(request: web.Request) -> web.StreamResponse:
        request["route"] = "metrics"
        return web.Response(body=registry.metrics.render().encode(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    app.router.add_route("GET", "/metrics", metrics_handler)
    token_handler = registry.authorizer.token_handler()
    if token_handler is not None:
        app.router.add_route("GET", "/auth/token", token_handler)
        app.router.add_route("POST", "/auth/token", token_handler)
    app.router.add_route("*", "/v2", registry.dispatch)
    app.router.add_route("*", "/v2/{tail:.*}", registry.dispatch)
    return app
