"""Hostile images through the CLI: every case ends with a non-zero exit and a message naming
the member (or blob) and the reason; nothing outside the target changes; a failed ``load``
leaves the store exactly as it was.

Layers are built in code (:mod:`strata.testing.tars`), wrapped into OCI layouts or
docker-archives (:mod:`strata.testing.images`), then fed to ``strata load`` and, when the
load has nothing to refuse, ``strata unpack``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from strata.testing import images as testimages
from strata.testing import trees
from strata.testing.tars import Entry, build
from strata.testing.tools import StrataCLI

OUTSIDE = f"/tmp/strata-hostile-{uuid.uuid4().hex[:8]}"


def _tar(*entries: Entry) -> bytes:
    return build(list(entries))


def _base() -> Entry:
    return Entry.dir("etc")


@dataclass(frozen=True)
class Case:
    """A hostile image and what strata must say about it."""

    layers: list[bytes]
    expect: tuple[str, ...]  # substrings of stderr (member and reason)
    source: str = "oci-dir"  # oci-dir | oci-archive | docker-archive
    mutate: Callable[[testimages.BuiltImage, Path], None] | None = None
    stage: str = "load"  # where it must fail: load | unpack
    unpack_prefix: tuple[str, ...] = field(default_factory=tuple)


def _truncate_member_data() -> bytes:
    data = _tar(_base(), Entry.file("etc/big", b"x" * 20000))
    # Cut inside the data of etc/big: the header declares more bytes than follow.
    return data[: 512 * 4 + 5000]


def _truncated_gzip_layer(image: testimages.BuiltImage, layout: Path) -> None:
    # Replace the layer blob with a gzip stream cut in half, renamed to its own digest so the
    # digest checks pass and only the decompression can notice.
    layer = image.layers[0]
    cut = layer.data[: len(layer.data) // 2]
    _replace_blob(image, layout, layer.digest, cut)


def _replace_blob(image: testimages.BuiltImage, layout: Path, old: str, new_data: bytes) -> None:
    blobs = layout / "blobs" / "sha256"
    (blobs / old.split(":")[1]).unlink()
    new = "sha256:" + hashlib.sha256(new_data).hexdigest()
    (blobs / new.split(":")[1]).write_bytes(new_data)
    manifest = json.loads(image.manifest)
    for layer in manifest["layers"]:
        if layer["digest"] == old:
            layer["digest"], layer["size"] = new, len(new_data)
    raw = json.dumps(manifest).encode()
    (blobs / image.manifest_digest.split(":")[1]).unlink()
    digest = hashlib.sha256(raw).hexdigest()
    (blobs / digest).write_bytes(raw)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))


def _wrong_digest(image: testimages.BuiltImage, layout: Path) -> None:
    blob = layout / "blobs" / "sha256" / image.layers[0].digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


def _missing_blob(image: testimages.BuiltImage, layout: Path) -> None:
    (layout / "blobs" / "sha256" / image.layers[0].digest.split(":")[1]).unlink()


def _malformed_manifest(image: testimages.BuiltImage, layout: Path) -> None:
    raw = b'{"schemaVersion": 2, "config": {"digest": "sha256:zz"}'
    _swap_manifest(image, layout, raw)


def _manifest_names_missing_config(image: testimages.BuiltImage, layout: Path) -> None:
    manifest = json.loads(image.manifest)
    manifest["config"]["digest"] = "sha256:" + "0" * 64
    _swap_manifest(image, layout, json.dumps(manifest).encode())


def _swap_manifest(image: testimages.BuiltImage, layout: Path, raw: bytes) -> None:
    blobs = layout / "blobs" / "sha256"
    (blobs / image.manifest_digest.split(":")[1]).unlink()
    digest = hashlib.sha256(raw).hexdigest()
    (blobs / digest).write_bytes(raw)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))


CASES: dict[str, Case] = {
    "dotdot-path": Case([_tar(_base(), Entry.file("../escaped", b"x"))],
                        ("../escaped", "escapes")),
    "dotdot-nested": Case([_tar(_base(), Entry.file("etc/../../escaped", b"x"))],
                          ("etc/../../escaped", "escapes")),
    "absolute-path": Case([_tar(_base(), Entry.file(f"{OUTSIDE}/abs", b"x"))],
                          (f"{OUTSIDE}/abs", "absolute path")),
    "symlink-escape-then-write": Case(
        [_tar(_base(), Entry.symlink("link", "../../../../../../../../tmp"),
              Entry.file("link/evil", b"x"))],
        ("link", "escapes root")),
    "write-through-symlink-same-layer": Case(
        [_tar(_base(), Entry.symlink("etc/link", "/etc"), Entry.file("etc/link/evil", b"x"))],
        ("etc/link/evil", "write through symlink")),
    "hardlink-to-lower-layer": Case(
        [_tar(_base(), Entry.file("etc/real", b"r")), _tar(Entry.hardlink("etc/h", "etc/real"))],
        ("etc/h", "not in this layer")),
    "hardlink-outside-root": Case(
        [_tar(_base(), Entry.hardlink("etc/shadow-link", "../../../../etc/shadow"))],
        ("etc/shadow-link", "escapes")),
    "hardlink-absolute-missing": Case(
        [_tar(_base(), Entry.hardlink("etc/passwd-link", "/etc/passwd"))],
        ("etc/passwd-link", "hardlink")),
    "whiteout-dotdot": Case([_tar(_base(), Entry.file("etc/.wh...", b""))],
                            (".wh..", "whiteout")),
    "whiteout-escape": Case([_tar(_base(), Entry.file("../.wh.etc", b""))],
                            ("../.wh.etc", "escapes")),
    "opaque-escape": Case([_tar(_base(), Entry.file("../.wh..wh..opq", b""))],
                          ("../.wh..wh..opq", "escapes")),
    "root-retyped-to-symlink": Case([_tar(Entry.symlink(".", "/"))],
                                    (".", "root")),
    "root-retyped-to-file": Case([_tar(Entry.file("./", b"x"))], (".", "root")),
    "declared-size-beyond-data": Case([_truncate_member_data()], ("etc/big",)),
    "truncated-gzip": Case([_tar(_base(), Entry.file("etc/a", os.urandom(50000)))],
                           ("gzip",), mutate=_truncated_gzip_layer),
    "wrong-digest": Case([_tar(_base(), Entry.file("etc/a", b"a" * 1000))],
                         ("digest",), mutate=_wrong_digest),
    "missing-blob": Case([_tar(_base(), Entry.file("etc/a", b"a"))],
                         ("sha256:",), mutate=_missing_blob),
    "malformed-manifest": Case([_tar(_base())], ("malformed manifest",),
                               mutate=_malformed_manifest),
    "manifest-names-missing-config": Case([_tar(_base())], ("0000000000",),
                                          mutate=_manifest_names_missing_config),
    "diff-id-lies": Case([_tar(_base(), Entry.file("etc/a", b"a"))], ("diff_id",)),
    "dotdot-in-oci-archive": Case([_tar(_base(), Entry.file("../escaped", b"x"))],
                                  ("../escaped", "escapes"), source="oci-archive"),
    "dotdot-in-docker-archive": Case([_tar(_base(), Entry.file("../escaped", b"x"))],
                                     ("../escaped", "escapes"), source="docker-archive"),
    "device-without-privilege": Case(
        [_tar(Entry.dir("dev"), Entry.char("dev/null", 1, 3))], ("dev/null", "device"),
        stage="unpack", unpack_prefix=("unshare", "--user", "--map-root-user")),
}


def _store_state(root: Path) -> tuple[list[str], str, list[str]]:
    blobs = sorted(p.name for p in (root / "content" / "blobs" / "sha256").iterdir())
    ingests = sorted(p.name for p in (root / "content" / "ingest").iterdir())
    listing = StrataCLI(root)("images", "-q", "--no-trunc").stdout
    return blobs, listing, ingests


def _make_source(name: str, case: Case, where: Path) -> tuple[Path, testimages.BuiltImage]:
    diff_ids = ["sha256:" + "1" * 64] if name == "diff-id-lies" else None
    image = testimages.build_image(case.layers, name=f"localhost/{name}:latest",
                                   diff_ids=diff_ids)
    if case.source == "oci-archive":
        return testimages.write_layout_tar(where / "image.tar", [image]), image
    if case.source == "docker-archive":
        return testimages.write_docker_archive(where / "image.tar", [image]), image
    layout = testimages.write_layout(where / "layout", [image])
    if case.mutate is not None:
        case.mutate(image, layout)
    return layout, image


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_hostile_image_is_refused_and_changes_nothing(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    root = tmp_path / "root"
    cli = StrataCLI(root)
    # A store that already holds an image, so "unchanged" is not trivially "empty".
    seed = testimages.build_image([_tar(Entry.file("seed", b"seed"))], name="localhost/seed:1")
    cli("load", "-i", testimages.write_layout(tmp_path / "seed", [seed]))
    source, _ = _make_source(name, case, tmp_path)
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep").write_text("keep")
    outside_before = trees.snapshot(tmp_path / "sentinel")
    before = _store_state(root)

    result = cli("load", "-i", source, check=False)
    if case.stage == "load":
        assert result.returncode != 0, f"load of {name} succeeded:\n{result.stdout}"
        message = result.stderr
        assert _store_state(root) == before, "a failed load changed the store"
    else:
        assert result.returncode == 0, result.stderr
        dest = tmp_path / "dest"
        env = {k: v for k, v in os.environ.items() if k != "STRATA_ROOT"}
        proc = subprocess.run(
            [*case.unpack_prefix, sys.executable, "-m", "strata", "--root", str(root),
             "unpack", f"localhost/{name}:latest", str(dest)],
            capture_output=True, text=True, env=env, check=False)
        assert proc.returncode != 0, f"unpack of {name} succeeded"
        message = proc.stderr
        assert not dest.exists(), "a failed unpack left its target behind"
    assert "Traceback" not in message, message
    assert message.startswith("Error: "), message
    for needle in case.expect:
        assert needle in message, f"{needle!r} not in {message!r}"
    # Nothing outside the target changed.
    assert trees.snapshot(tmp_path / "sentinel") == outside_before
    assert not (tmp_path / "escaped").exists()
    assert not Path(OUTSIDE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) in (
        sorted(["root", "sentinel", "seed", source.name]),
        sorted(["root", "sentinel", "seed", source.name, "dest"]),
    )
    fsck = cli("system", "fsck")
    assert "0 problems" in fsck.stdout


def test_symlinked_parent_from_a_lower_layer_stays_inside_root(tmp_path: Path) -> None:
    """A write through a symlink a lower layer made lands inside the root (umoci, containerd)."""
    target = Path(OUTSIDE + "-parent")
    layers = [_tar(Entry.dir("etc"), Entry.symlink("escape", str(target))),
              _tar(Entry.file("escape/planted", b"x"))]
    image = testimages.build_image(layers, name="localhost/parent:latest")
    cli = StrataCLI(tmp_path / "root")
    cli("load", "-i", testimages.write_layout(tmp_path / "layout", [image]))
    dest = tmp_path / "dest"
    cli("unpack", "localhost/parent:latest", dest)
    assert not target.exists()
    assert (dest / target.relative_to("/") / "planted").read_bytes() == b"x"


