"""The image commands end to end through the CLI, on images built in code."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from strata.cli.main import cli
from strata.testing import images as testimages
from strata.testing.tars import Entry, build
from strata.testing.tools import StrataCLI


def _image(name: str, *extra: bytes) -> testimages.BuiltImage:
    base = build([Entry.dir("bin"), Entry.file("bin/sh", b"#!" + b"x" * 5000, mode=0o755)])
    return testimages.build_image([base, *extra], name=name)


@pytest.fixture
def loaded(tmp_path: Path) -> StrataCLI:
    cli_ = StrataCLI(tmp_path / "root")
    a = _image("localhost/a:1", build([Entry.file("a", b"a" * 3000)]))
    b = _image("localhost/b:1", build([Entry.file("b", b"b" * 7000)]))
    cli_("load", "-i", testimages.write_layout(tmp_path / "la", [a]))
    cli_("load", "-i", testimages.write_layout(tmp_path / "lb", [b]))
    return cli_


def test_images_lists_each_tag_with_docker_columns(loaded: StrataCLI) -> None:
    loaded("tag", "localhost/a:1", "localhost/a:2")
    out = loaded("images").stdout.splitlines()
    assert out[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    rows = sorted(line.split()[:2] for line in out[1:])
    assert rows == [["localhost/a", "1"], ["localhost/a", "2"], ["localhost/b", "1"]]
    ids = loaded("images", "-q").stdout.split()
    assert len(ids) == 3 and len(set(ids)) == 2 and all(len(i) == 12 for i in ids)


def test_system_df_shares_the_common_base(loaded: StrataCLI) -> None:
    out = loaded("system", "df", "-v").stdout
    rows = [line.split() for line in out.splitlines()[3:5]]
    # Both images share the 5002-byte bin/sh layer (plus nothing else).
    assert [r[-3] for r in rows] == ["5.002kB", "5.002kB"]


def test_history_rows_newest_first_with_missing_ids(loaded: StrataCLI) -> None:
    out = loaded("history", "--no-trunc", "localhost/a:1").stdout.splitlines()
    assert out[0].split()[:2] == ["IMAGE", "CREATED"]
    assert out[1].startswith("sha256:")
    assert out[2].startswith("<missing>")
    assert "layer 1" in out[1] and "layer 0" in out[2]


def test_rmi_untags_then_deletes_and_gc_frees_blobs(loaded: StrataCLI) -> None:
    loaded("tag", "localhost/a:1", "localhost/a:2")
    first = loaded("rmi", "localhost/a:1").stdout
    assert first.strip() == "Untagged: localhost/a:1"
    second = loaded("rmi", "localhost/a:2").stdout.splitlines()
    assert second[0] == "Untagged: localhost/a:2"
    assert second[1].startswith("Deleted: sha256:")
    blobs = list((loaded.root / "content" / "blobs" / "sha256").iterdir())
    # b's manifest, config and two layers remain; a's own layer, config, manifest are gone.
    assert len(blobs) == 4
    missing = loaded("rmi", "localhost/a:2", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error: No such image: localhost/a:2"


def test_rmi_by_id_with_several_names_needs_force(loaded: StrataCLI) -> None:
    loaded("tag", "localhost/a:1", "localhost/other:x")
    image_id = loaded("inspect", "-f", "{{.Id}}", "localhost/a:1").stdout.strip()
    refused = loaded("rmi", image_id[7:19], check=False)
    assert refused.returncode == 1 and "must be forced" in refused.stderr
    forced = loaded("rmi", "-f", image_id[7:19]).stdout
    assert "Untagged: localhost/a:1" in forced and f"Deleted: {image_id}" in forced


def test_save_load_round_trip_every_format(loaded: StrataCLI, tmp_path: Path) -> None:
    want = loaded("inspect", "-f", "{{.Id}}", "localhost/a:1").stdout.strip()
    for fmt, out in (("docker-archive", tmp_path / "d.tar"), ("oci-archive", tmp_path / "o.tar"),
                     ("oci", tmp_path / "odir")):
        loaded("save", "--format", fmt, "-o", out, "localhost/a:1")
        other = StrataCLI(tmp_path / f"root-{fmt}")
        printed = other("load", "-i", out).stdout
        assert printed.strip() == "Loaded image: localhost/a:1"
        assert other("inspect", "-f", "{{.Id}}", "localhost/a:1").stdout.strip() == want


def test_docker_archive_layers_are_uncompressed_tars(loaded: StrataCLI, tmp_path: Path) -> None:
    loaded("save", "-o", tmp_path / "d.tar", "localhost/b:1")
    with tarfile.open(tmp_path / "d.tar") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["localhost/b:1"]
        for name in manifest[0]["Layers"]:
            member = tar.extractfile(name)
            assert member is not None
            with tarfile.open(fileobj=io.BytesIO(member.read())) as layer:
                assert layer.getnames()


def test_import_makes_one_layer_image_with_changes(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(build([Entry.dir("bin"), Entry.file("bin/app", b"app", mode=0o755)]))
    cli_ = StrataCLI(tmp_path / "root")
    image_id = cli_("import", "-c", 'CMD ["/bin/app"]', "-c", "ENV A=1", rootfs,
                    "localhost/imported:1").stdout.strip()
    data = json.loads(cli_("inspect", "localhost/imported:1").stdout)[0]
    assert data["Id"] == image_id
    assert data["Config"]["Cmd"] == ["/bin/app"]
    assert data["Config"]["Env"] == ["A=1"]
    assert data["Comment"] == "Imported from -"
    assert len(data["RootFS"]["Layers"]) == 1
    dest = tmp_path / "out"
    cli_("unpack", "localhost/imported:1", dest)
    assert (dest / "bin" / "app").read_bytes() == b"app"


def test_image_prune_removes_dangling_only(loaded: StrataCLI, tmp_path: Path) -> None:
    untagged = _image("latest", build([Entry.file("c", b"c")]))  # bare tag: loads untagged
    printed = loaded("load", "-i", testimages.write_layout(tmp_path / "lc", [untagged])).stdout
    assert printed.startswith("Loaded image ID: sha256:")
    assert "<none>" in loaded("images").stdout
    out = loaded("image", "prune", "-f").stdout
    assert "deleted: sha256:" in out and "Total reclaimed space:" in out
    assert "<none>" not in loaded("images").stdout
    assert len(loaded("images", "-q").stdout.split()) == 2


def test_load_from_stdin(loaded: StrataCLI, tmp_path: Path) -> None:
    loaded("save", "-o", tmp_path / "a.tar", "localhost/a:1")
    with open(tmp_path / "a.tar", "rb") as stdin:
        proc = subprocess.run(
            [sys.executable, "-m", "strata", "--root", str(tmp_path / "other"), "load"],
            stdin=stdin, capture_output=True, text=True, check=True)
    assert "Loaded image: localhost/a:1" in proc.stdout


def test_usage_errors_exit_2_and_strata_errors_exit_1(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--root", str(tmp_path), "unpack"])
    assert result.exit_code == 2
    cli_ = StrataCLI(tmp_path / "root")
    bad = cli_("inspect", "Not/A/Valid:Ref:", check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("Error: ")
    missing = cli_("history", "nope", check=False)
    assert missing.returncode == 1 and "No such image: nope" in missing.stderr
