"""The interop infrastructure itself: tree snapshots, docker-output parsing, and the base
and test images and peer tools the strata interop tests rely on. These need no strata CLI,
so they show whether a failure elsewhere is strata's or the fixtures'."""

from __future__ import annotations

import json
import os
import stat
import tarfile
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from strata.testing import baseimages, tools, trees
from strata.testing.trees import NodeType

# --------------------------------------------------------------------------- trees


def _sample_tree(root: Path) -> None:
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "f").write_text("hello")
    os.link(root / "d" / "f", root / "d" / "g")
    (root / "l").symlink_to("d/f")
    (root / "dangling").symlink_to("/nowhere")
    os.mkfifo(root / "p")
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "x").write_bytes(b"\x00\x01")
    os.setxattr(root / "x", "user.k", b"v")
    os.chown(root / "x", 1234, 5678)
    os.chmod(root / "x", 0o4755)  # after chown, which clears setuid


def test_snapshot_records_every_kind_of_entry(tmp_path: Path) -> None:
    _sample_tree(tmp_path)
    snap = trees.snapshot(tmp_path)
    assert snap["."].type is NodeType.DIR
    assert snap["d/sub"].type is NodeType.DIR
    assert snap["d/f"].size == 5
    assert snap["d/f"].sha256 == (
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )
    assert snap["d/f"].link_group == snap["d/g"].link_group == "d/f"
    assert snap["x"].link_group is None
    assert snap["l"].target == "d/f"
    assert snap["dangling"].type is NodeType.SYMLINK
    assert snap["p"].type is NodeType.FIFO
    assert snap["null"].rdev == (1, 3)
    assert snap["x"].mode == 0o4755
    assert (snap["x"].uid, snap["x"].gid) == (1234, 5678)
    assert ("user.k", b"v") in snap["x"].xattrs


def test_snapshot_ignores_mtime_and_root_can_be_left_out(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        _sample_tree(root)
    os.utime(b / "d" / "f", (0, 0))
    os.chmod(a, 0o755)
    os.chmod(b, 0o700)
    assert trees.diff(trees.snapshot(a), trees.snapshot(b)) == [".: mode 0755 in a != 0700 in b"]
    trees.assert_same_tree(a, b, include_root=False)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: (r / "d" / "f").write_text("HELLO"), "d/f: sha256"),
        (lambda r: os.chmod(r / "x", 0o755), "x: mode 4755 in a != 0755 in b"),
        (lambda r: os.chown(r / "x", 0, 5678), "x: uid 1234 in a != 0 in b"),
        (lambda r: os.removexattr(r / "x", "user.k"), "x: xattrs"),
        (lambda r: (r / "d" / "g").unlink(), "d/g: only in a"),
        (lambda r: (r / "new").mkdir(), "new: only in b"),
        (lambda r: ((r / "l").unlink(), (r / "l").symlink_to("d/g")), "l: target"),
        (lambda r: ((r / "p").unlink(), (r / "p").mkdir()), "p: type fifo in a != dir in b"),
        (
            lambda r: ((r / "d" / "g").unlink(), (r / "d" / "g").write_text("hello")),
            "d/f: link_group 'd/f' in a != None in b",
        ),
    ],
    ids=["content", "mode", "owner", "xattr", "removed", "added", "symlink", "retyped", "unlinked"],
)
def test_diff_reports_each_kind_of_difference(
    tmp_path: Path, change: Callable[[Path], object], expected: str
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        root.mkdir()
        _sample_tree(root)
    change(b)
    found = trees.diff(trees.snapshot(a), trees.snapshot(b))
    assert any(line.startswith(expected) for line in found), found
    with pytest.raises(AssertionError, match="trees differ"):
        trees.assert_same_tree(a, b)


def test_snapshot_excludes_overlay_and_selinux_xattrs(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    os.setxattr(tmp_path / "f", "trusted.overlay.opaque", b"y")
    os.setxattr(tmp_path / "f", "trusted.other", b"z")
    assert trees.snapshot(tmp_path)["f"].xattrs == (("trusted.other", b"z"),)


# --------------------------------------------------------------------------- docker output


def test_parse_table_cuts_at_header_columns() -> None:
    text = (
        "IMAGE          CREATED         CREATED BY                      SIZE      COMMENT\n"
        "08207be24cdd   2 minutes ago   /bin/sh -c echo  two > x        4B        FROM a\n"
        '<missing>      3 days ago      /bin/sh -c #(nop)  CMD ["sh"]   0B        \n'
    )
    rows = tools.parse_table(text)
    assert rows[0] == {
        "IMAGE": "08207be24cdd",
        "CREATED": "2 minutes ago",
        "CREATED BY": "/bin/sh -c echo  two > x",
        "SIZE": "4B",
        "COMMENT": "FROM a",
    }
    assert rows[1]["CREATED BY"] == '/bin/sh -c #(nop)  CMD ["sh"]'
    assert rows[1]["COMMENT"] == ""


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (120, "2 minutes"),
        (3599, "59 minutes"),
        (3600, "About an hour"),
        (5400, "2 hours"),
        (47 * 3600, "47 hours"),
        (48 * 3600, "2 days"),
        (14 * 86400, "2 weeks"),
        (60 * 86400, "2 months"),
        (730 * 86400, "2 years"),
    ],
)
def test_human_duration_matches_go_units(seconds: float, text: str) -> None:
    assert tools.human_duration(seconds) == text


def test_acceptable_ages_allow_a_minute_of_drift() -> None:
    created = datetime(2024, 1, 1, tzinfo=UTC)
    now = created.timestamp() + 30
    ok = tools.acceptable_ages(created, now, now + 1)
    assert {"30 seconds ago", "About a minute ago", "Less than a second ago"} <= ok
    assert "2 minutes ago" not in ok


# --------------------------------------------------------------------------- images


def test_busybox_layout_holds_the_busybox_image(busybox_layout: Path) -> None:
    listed = tools.run(["umoci", "ls", "--layout", str(busybox_layout)]).stdout.split()
    assert listed == [baseimages.BUSYBOX_REF]


def test_debian_layout_holds_the_debian_image(debian_layout: Path) -> None:
    listed = tools.run(["umoci", "ls", "--layout", str(debian_layout)]).stdout.split()
    assert listed == [baseimages.DEBIAN_REF]


def _index_and_config(layout: Path) -> tuple[dict[str, object], str]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / digest.split(":")[1]).read_text())
    return index, manifest["config"]["digest"]


def test_exports_name_the_image(
    image_name: str, test_images: dict[str, baseimages.BuildahImage]
) -> None:
    image = test_images[image_name]
    assert image.ref == f"localhost/{image_name}:latest"
    index, config_digest = _index_and_config(image.oci_layout)
    manifests = index["manifests"]
    assert isinstance(manifests, list) and len(manifests) == 1
    assert manifests[0]["annotations"]["org.opencontainers.image.ref.name"] == image.ref
    assert config_digest == image.image_id
    with tarfile.open(image.docker_archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        entries = json.load(member)
    assert [e["RepoTags"] for e in entries] == [[image.ref]]
    assert "sha256:" + entries[0]["Config"].removesuffix(".json") == image.image_id


def test_layers_image_records_xattrs_in_its_layers(
    test_images: dict[str, baseimages.BuildahImage],
) -> None:
    layout = test_images["busybox-layers"].oci_layout
    index = json.loads((layout / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / manifest_digest).read_text())
    found: dict[str, set[str]] = {}
    for layer in manifest["layers"]:
        with tarfile.open(layout / "blobs" / "sha256" / layer["digest"].split(":")[1]) as tar:
            for member in tar:
                names = {
                    k.removeprefix("SCHILY.xattr.")
                    for k in member.pax_headers
                    if k.startswith("SCHILY.xattr.")
                }
                if names:
                    found.setdefault(member.name, set()).update(names)
    assert found["data/xattr-file"] == {"user.color", "user.empty", "user.binary"}
    assert found["data/capbin"] == {"security.capability"}
    assert found["data/xattr-dir"] == {"user.dir"}


def _expect(snap: dict[str, trees.Node], path: str) -> trees.Node:
    assert path in snap, f"{path} missing from the unpacked image"
    return snap[path]


def test_layers_image_unpacks_with_every_feature(umoci_rootfs: Callable[[str], Path]) -> None:
    snap = trees.snapshot(umoci_rootfs("busybox-layers"))
    for gone in ("data/gone", "data/deleted-file", "data/opaque/old", "data/opaque/sub/x",
                 "data/with space.txt", "opt/hosttools", "data/dir2file/inner"):  # fmt: skip
        assert gone not in snap, f"{gone} should have been whited out"
    assert _expect(snap, "data/opaque/new").type is NodeType.FILE
    assert _expect(snap, "data/dir2file").type is NodeType.FILE
    assert _expect(snap, "data/file2dir").type is NodeType.DIR
    assert _expect(snap, "data/file2dir/inside").type is NodeType.FILE
    assert _expect(snap, "data/empty-tree/a/b").type is NodeType.DIR
    assert _expect(snap, "data/dir with space/héllo wörld 日本.txt").size == 2
    assert _expect(snap, "data/tab\there").type is NodeType.FILE
    assert _expect(snap, "data/big.bin").size == 4 << 20
    groups = {_expect(snap, p).link_group for p in ("data/h1", "data/h2", "data/h 3")}
    assert groups == {"data/h 3"}
    assert _expect(snap, "data/symlink-rel").target == "keep/file"
    assert _expect(snap, "data/symlink-abs").target == "/data/keep/file"
    assert _expect(snap, "data/dirlink").target == "keep"
    assert _expect(snap, "data/dangling").target == "/nonexistent/target"
    assert _expect(snap, "data/fifo").type is NodeType.FIFO
    assert _expect(snap, "data/null-dev").rdev == (1, 3)
    assert _expect(snap, "data/loop-dev").type is NodeType.BLOCK
    assert _expect(snap, "data/suid").mode == 0o4755
    assert _expect(snap, "data/sgid").mode == 0o2711
    assert _expect(snap, "data/sticky").mode == 0o1777
    assert _expect(snap, "data/sgid-dir").mode == 0o2775
    readonly = _expect(snap, "data/readonly")
    assert (readonly.mode, readonly.uid, readonly.gid) == (0o400, 1234, 5678)
    assert _expect(snap, "data/big-ids").uid == 100000
    xattrs = dict(_expect(snap, "data/xattr-file").xattrs)
    assert xattrs["user.color"] == b"blue"
    assert xattrs["user.binary"] == b"\x00\xff\x10"
    assert "security.capability" in dict(_expect(snap, "data/capbin").xattrs)
    keep = _expect(snap, "data/keep/file")
    assert keep.mode == 0o600 and dict(keep.xattrs) == {"user.added": b"later"}
    # chown of a file hard-linked from a lower layer copies it up: the link is broken.
    assert _expect(snap, "data/lower-linked").uid == 1
    assert _expect(snap, "data/linked-from-upper").uid == 0
    assert _expect(snap, "tmp").mode == 0o1777


def test_debian_image_unpacks_with_users_caps_and_devices(
    umoci_rootfs: Callable[[str], Path],
) -> None:
    snap = trees.snapshot(umoci_rootfs("debian-users"))
    assert _expect(snap, "dev/null").rdev == (1, 3)
    assert _expect(snap, "dev/console").type is NodeType.CHAR
    data = _expect(snap, "srv/app/data")
    assert (data.mode, data.uid, data.gid) == (0o2770, 3001, 3000)
    assert _expect(snap, "srv/app/shared").mode == 0o3775
    assert _expect(snap, "home/app").uid == 2001
    assert "security.capability" in dict(_expect(snap, "usr/local/bin/netbind").xattrs)
    assert dict(_expect(snap, "usr/lib/os-release").xattrs) == {"user.origin": b"debian"}
    assert "usr/share/doc" not in snap
    assert "usr/sbin/mke2fs" not in snap
    assert "usr/bin/which.debianutils.distrib" in snap
    assert len(snap) > 3000


def test_history_image_has_many_layers_and_empty_layer_history(
    test_images: dict[str, baseimages.BuildahImage], umoci_rootfs: Callable[[str], Path]
) -> None:
    layout = test_images["busybox-history"].oci_layout
    _, config_digest = _index_and_config(layout)
    config = json.loads((layout / "blobs" / "sha256" / config_digest.split(":")[1]).read_text())
    history = config["history"]
    assert len(config["rootfs"]["diff_ids"]) >= 6
    assert sum(1 for h in history if not h.get("empty_layer")) == len(config["rootfs"]["diff_ids"])
    assert sum(1 for h in history if h.get("empty_layer")) >= 8
    assert config["config"]["User"] == "appuser"
    snap = trees.snapshot(umoci_rootfs("busybox-history"))
    assert "app/one.txt" not in snap
    assert _expect(snap, "app/extra/nested/b.txt").uid == 4242


# --------------------------------------------------------------------------- peer tools


def test_dockerd_loads_a_docker_archive(
    dockerd: tools.Dockerd, test_images: dict[str, baseimages.BuildahImage]
) -> None:
    image = test_images["busybox-history"]
    out = dockerd.docker("load", "-i", image.docker_archive).stdout
    assert f"Loaded image: {image.ref}" in out
    try:
        ids = dockerd.docker("image", "inspect", "--format", "{{.Id}}", image.ref).stdout
        assert ids.strip() == image.image_id
    finally:
        dockerd.docker("rmi", image.ref)


def test_podman_loads_a_docker_archive_into_a_private_store(
    podman_store: tools.ContainersStore,
    test_images: dict[str, baseimages.BuildahImage],
    umoci_rootfs: Callable[[str], Path],
) -> None:
    image = test_images["busybox-layers"]
    tools.podman(["load", "-i", image.docker_archive], store=podman_store)
    ids = tools.podman(
        ["images", "--no-trunc", "--format", "{{.ID}}", image.ref], store=podman_store
    ).stdout.split()
    assert ids == [image.image_id]
    mounted = tools.podman(["image", "mount", image.ref], store=podman_store).stdout.strip()
    # c/storage mounts the merged tree with a 0555 root; everything below must match.
    trees.assert_same_tree(umoci_rootfs("busybox-layers"), Path(mounted), include_root=False)


def test_docker_registry_accepts_a_push(
    tmp_path: Path, test_images: dict[str, baseimages.BuildahImage]
) -> None:
    image = test_images["busybox-history"]
    with tools.DockerRegistry(tmp_path / "registry") as registry:
        tools.skopeo_copy(
            f"oci:{image.oci_layout}:{image.ref}",
            f"docker://{registry.address}/test/history:v1",
            extra=["--dest-tls-verify=false"],
        )
        with urllib.request.urlopen(f"{registry.url}/v2/test/history/tags/list") as resp:
            assert json.load(resp) == {"name": "test/history", "tags": ["v1"]}
