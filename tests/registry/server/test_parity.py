"""Debian's docker-registry (distribution 2.8) and strata's registry answer a recorded set of
requests the same way: status, the headers clients rely on, and bodies (error codes for
errors).  Both start empty; the same script runs against each, then the transcripts are
compared step by step.

Where 2.8 departs from distribution-spec v1.1 (unsorted tags, no ``n``/``last``, no
referrers API, malformed digests looked up as tags) the conformance suite covers strata
alone; the script here stays on the ground both implement.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from strata.testing import tools
from strata.testing.registry_server import HTTPAnswer, StrataRegistry, http_request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": []}}).encode()
LAYER = bytes(range(256)) * 400
CHUNK_A, CHUNK_B = LAYER[:60000], LAYER[60000:]
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: Headers compared by value (after normalising URLs and upload ids).
HEADERS = ("content-type", "content-length", "docker-content-digest", "location", "range",
           "content-range", "docker-distribution-api-version")


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(media_type: str, layers: list[bytes]) -> bytes:
    layer_type = ("application/vnd.docker.image.rootfs.diff.tar.gzip" if media_type == DOCKER_MANIFEST
                  else "application/vnd.oci.image.layer.v1.tar+gzip")
    config_type = ("application/vnd.docker.container.image.v1+json" if media_type == DOCKER_MANIFEST
                   else "application/vnd.oci.image.config.v1+json")
    return json.dumps({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": _d(CONFIG), "size": len(CONFIG)},
        "layers": [{"mediaType": layer_type, "digest": _d(b), "size": len(b)} for b in layers],
    }, indent=3).encode()


@dataclass(frozen=True)
class Step:
    name: str
    answer: HTTPAnswer
    location: str


def _normalise(value: str, base: str) -> str:
    value = value.replace(base, "")
    value = _UUID.sub("<uuid>", value)
    return value.split("?", 1)[0]


def _summary(step: Step, base: str) -> dict[str, object]:
    a = step.answer
    out: dict[str, object] = {"status": a.status}
    for h in HEADERS:
        if h in a.headers:
            value = a.headers[h]
            if h == "content-type":
                value = value.split(";")[0]
            if h == "content-length" and a.status >= 400:
                continue  # error messages differ in wording, not in code
            out[h] = _normalise(value, base)
    if a.status >= 400:
        out["errors"] = a.error_codes
    elif a.headers.get("content-type", "").startswith("application/json") and a.body:
        out["body"] = a.json()
    elif a.body:
        out["body-digest"] = _d(a.body)
    return out


def _script(url: str) -> list[Step]:
    steps: list[Step] = []

    def req(name: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> HTTPAnswer:
        answer = http_request(url, method, path, body=body, headers=headers)
        steps.append(Step(name, answer, answer.headers.get("location", "")))
        return answer

    def rel(location: str) -> str:
        return location.replace(url, "")

    oci = _manifest(OCI_MANIFEST, [LAYER])
    docker = _manifest(DOCKER_MANIFEST, [LAYER])
    req("version", "GET", "/v2/")
    req("blob-unknown", "GET", f"/v2/p/app/blobs/{_d(LAYER)}")
    req("blob-unknown-head", "HEAD", f"/v2/p/app/blobs/{_d(LAYER)}")
    start = req("upload-start", "POST", "/v2/p/app/blobs/uploads/")
    req("upload-status-empty", "GET", rel(start.headers["location"]))
    a = req("chunk-a", "PATCH", rel(start.headers["location"]), body=CHUNK_A,
            headers={"Content-Type": "application/octet-stream"})
    req("upload-status", "GET", rel(a.headers["location"]))
    b = req("chunk-b", "PATCH", rel(a.headers["location"]), body=CHUNK_B,
            headers={"Content-Type": "application/octet-stream"})
    sep = "&" if "?" in b.headers["location"] else "?"
    req("upload-finish", "PUT", rel(b.headers["location"]) + f"{sep}digest={_d(LAYER)}")
    # Monolithic: POST then PUT with the whole body (2.8 has no single-request POST?digest=).
    c = req("config-start", "POST", "/v2/p/app/blobs/uploads/")
    sep = "&" if "?" in c.headers["location"] else "?"
    req("config-put", "PUT", rel(c.headers["location"]) + f"{sep}digest={_d(CONFIG)}", body=CONFIG,
        headers={"Content-Type": "application/octet-stream"})
    liar = req("liar-start", "POST", "/v2/p/app/blobs/uploads/")
    sep = "&" if "?" in liar.headers["location"] else "?"
    req("liar-put", "PUT", rel(liar.headers["location"]) + f"{sep}digest={_d(b'x')}", body=b"y",
        headers={"Content-Type": "application/octet-stream"})
    req("liar-blob-absent", "HEAD", f"/v2/p/app/blobs/{_d(b'y')}")
    req("blob-get", "GET", f"/v2/p/app/blobs/{_d(LAYER)}")
    req("blob-head", "HEAD", f"/v2/p/app/blobs/{_d(LAYER)}")
    req("blob-range", "GET", f"/v2/p/app/blobs/{_d(LAYER)}", headers={"Range": "bytes=10-19"})
    req("manifest-missing-blob", "PUT", "/v2/p/app/manifests/bad",
        body=_manifest(OCI_MANIFEST, [b"absent", LAYER, b"gone"]), headers={"Content-Type": OCI_MANIFEST})
    req("manifest-oci", "PUT", "/v2/p/app/manifests/v1", body=oci, headers={"Content-Type": OCI_MANIFEST})
    req("manifest-docker", "PUT", f"/v2/p/app/manifests/{_d(docker)}", body=docker,
        headers={"Content-Type": DOCKER_MANIFEST})
    req("manifest-get-tag", "GET", "/v2/p/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    req("manifest-head-digest", "HEAD", f"/v2/p/app/manifests/{_d(docker)}",
        headers={"Accept": DOCKER_MANIFEST})
    req("manifest-get-digest", "GET", f"/v2/p/app/manifests/{_d(docker)}",
        headers={"Accept": DOCKER_MANIFEST})
    req("manifest-unknown", "GET", "/v2/p/app/manifests/nope", headers={"Accept": OCI_MANIFEST})
    req("manifest-unknown-digest", "GET", f"/v2/p/app/manifests/{_d(b'nope')}",
        headers={"Accept": OCI_MANIFEST})
    req("tags", "GET", "/v2/p/app/tags/list")
    req("tags-unknown-repo", "GET", "/v2/nobody/here/tags/list")
    req("mount", "POST", f"/v2/q/other/blobs/uploads/?mount={_d(LAYER)}&from=p/app")
    req("mounted-get", "GET", f"/v2/q/other/blobs/{_d(LAYER)}")
    req("catalog", "GET", "/v2/_catalog")
    cancel = req("upload-to-cancel", "POST", "/v2/p/app/blobs/uploads/")
    req("upload-cancel", "DELETE", rel(cancel.headers["location"]))
    req("manifest-delete", "DELETE", f"/v2/p/app/manifests/{_d(docker)}")
    req("manifest-deleted", "GET", f"/v2/p/app/manifests/{_d(docker)}", headers={"Accept": DOCKER_MANIFEST})
    req("blob-delete", "DELETE", f"/v2/q/other/blobs/{_d(LAYER)}")
    req("blob-deleted", "GET", f"/v2/q/other/blobs/{_d(LAYER)}")
    req("blob-still-in-source", "HEAD", f"/v2/p/app/blobs/{_d(LAYER)}")
    return steps


def test_docker_registry_and_strata_answer_a_recorded_session_the_same(tmp_path: Path) -> None:
    with tools.DockerRegistry(tmp_path / "docker-registry") as reference:
        expected = [(s.name, _summary(s, reference.url)) for s in _script(reference.url)]
    with StrataRegistry(tmp_path / "strata") as ours:
        actual = [(s.name, _summary(s, ours.url)) for s in _script(ours.url)]
    assert [name for name, _ in actual] == [name for name, _ in expected]
    mismatches = [
        f"{name}:\n  docker-registry: {want}\n  strata:          {got}"
        for (name, want), (_, got) in zip(expected, actual, strict=True)
        if want != got
    ]
    assert not mismatches, "\n".join(mismatches)
