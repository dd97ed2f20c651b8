"""strata prints what docker prints, for the same images.

The test images' docker-archives are loaded into a private dockerd (Debian docker.io 20.10)
and into one strata root; then ``images``, ``history``, ``system df [-v]`` and ``inspect``
are compared column by column (or field by field). Relative CREATED cells may differ by a
minute when the two commands straddle a boundary; every other cell must be identical.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import pytest

from strata.testing import baseimages, tools

INSPECT_FIELDS = [
    "Id",
    "RepoTags",
    "RepoDigests",
    "Parent",
    "Comment",
    "Created",
    "Author",
    "Config",
    "Architecture",
    "Os",
    "Size",
    "RootFS",
]


@pytest.fixture(scope="module")
def docker_loaded(
    dockerd: tools.Dockerd, test_images: dict[str, baseimages.BuildahImage]
) -> Iterator[tools.Dockerd]:
    """The session dockerd holding exactly the test images (loaded from docker-archives)."""
    leftover = dockerd.docker("images", "-q", "--no-trunc").stdout.split()
    if leftover:
        dockerd.docker("rmi", "-f", *sorted(set(leftover)))
    for image in test_images.values():
        dockerd.docker("load", "-i", image.docker_archive)
    yield dockerd
    dockerd.docker("rmi", "-f", *(i.ref for i in test_images.values()), check=False)


@pytest.fixture(scope="module")
def strata_loaded(
    tmp_path_factory: pytest.TempPathFactory, test_images: dict[str, baseimages.BuildahImage]
) -> tools.StrataCLI:
    """A strata root holding exactly the test images (loaded from the same archives)."""
    cli = tools.StrataCLI(tmp_path_factory.mktemp("strata-parity") / "root")
    for image in test_images.values():
        cli("load", "-i", image.docker_archive)
    return cli


def _config(image: baseimages.BuildahImage) -> dict[str, Any]:
    layout = image.oci_layout
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    config: dict[str, Any] = json.loads(
        (blobs / manifest["config"]["digest"].split(":")[1]).read_text()
    )
    return config


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _compare_tables(
    what: str,
    docker_out: str,
    strata_out: str,
    *,
    created: Sequence[datetime] | None,
    window: tuple[float, float],
) -> None:
    """Assert two docker-style tables are equal, CREATED cells within ``window`` ± 60 s."""
    problems: list[str] = []
    d_columns = [name for _, name in tools.table_columns(docker_out)]
    s_columns = [name for _, name in tools.table_columns(strata_out)]
    if d_columns != s_columns:
        problems.append(f"columns {d_columns} from docker != {s_columns} from strata")
    d_rows, s_rows = tools.parse_table(docker_out), tools.parse_table(strata_out)
    if len(d_rows) != len(s_rows):
        problems.append(f"{len(d_rows)} rows from docker, {len(s_rows)} from strata")
    for i, (d, s) in enumerate(zip(d_rows, s_rows, strict=False)):
        for column, d_cell in d.items():
            s_cell = s.get(column)
            if column == "CREATED" and created is not None and d_cell.endswith(" ago"):
                ok = tools.acceptable_ages(created[i], *window)
                assert d_cell in ok, f"test bug: docker's {d_cell!r} not in {sorted(ok)}"
                if s_cell not in ok:
                    problems.append(f"row {i} CREATED {s_cell!r}, expected one of {sorted(ok)}")
            elif s_cell != d_cell:
                problems.append(f"row {i} {column}: docker {d_cell!r} != strata {s_cell!r}")
    assert not problems, (
        f"`{what}` differs from docker:\n  "
        + "\n  ".join(problems)
        + f"\n--- docker\n{docker_out}--- strata\n{strata_out}"
    )


def _run_both(
    docker: tools.Dockerd, strata: tools.StrataCLI, *args: str
) -> tuple[str, str, tuple[float, float]]:
    start = time.time()
    d = docker.docker(*args).stdout
    s = strata(*args).stdout
    return d, s, (start, time.time())


def _created_by_image_row(
    table: str, test_images: dict[str, baseimages.BuildahImage]
) -> list[datetime]:
    by_ref = {i.ref: _time(_config(i)["created"]) for i in test_images.values()}
    return [by_ref[f"{r['REPOSITORY']}:{r['TAG']}"] for r in tools.parse_table(table)]


@pytest.mark.parametrize("args", [[], ["--no-trunc"]], ids=["default", "no-trunc"])
def test_images_matches_docker(
    args: list[str],
    docker_loaded: tools.Dockerd,
    strata_loaded: tools.StrataCLI,
    test_images: dict[str, baseimages.BuildahImage],
) -> None:
    d, s, window = _run_both(docker_loaded, strata_loaded, "images", *args)
    _compare_tables("images", d, s, created=_created_by_image_row(d, test_images), window=window)


def test_images_quiet_matches_docker(
    docker_loaded: tools.Dockerd, strata_loaded: tools.StrataCLI
) -> None:
    d, s, _ = _run_both(docker_loaded, strata_loaded, "images", "-q")
    assert s == d


@pytest.mark.parametrize(
    "args", [[], ["--no-trunc"], ["--human=false"]], ids=["default", "no-trunc", "not-human"]
)
def test_history_matches_docker(
    image_name: str,
    args: list[str],
    docker_loaded: tools.Dockerd,
    strata_loaded: tools.StrataCLI,
    test_images: dict[str, baseimages.BuildahImage],
) -> None:
    image = test_images[image_name]
    created = [_time(h["created"]) for h in reversed(_config(image)["history"])]
    d, s, window = _run_both(docker_loaded, strata_loaded, "history", *args, image.ref)
    _compare_tables(f"history {' '.join(args)}", d, s, created=created, window=window)


def _images_section(system_df_v: str) -> str:
    """The table under "Images space usage:" in ``system df -v`` output."""
    lines = system_df_v.splitlines()
    start = lines.index("Images space usage:") + 1
    out: list[str] = []
    for line in lines[start:]:
        if line.endswith("space usage:") or line.startswith("Build cache usage"):
            break
        out.append(line)
    return "\n".join(line for line in out if line.strip()) + "\n"


def test_system_df_verbose_images_match_docker(
    docker_loaded: tools.Dockerd,
    strata_loaded: tools.StrataCLI,
    test_images: dict[str, baseimages.BuildahImage],
) -> None:
    d, s, window = _run_both(docker_loaded, strata_loaded, "system", "df", "-v")
    d_images, s_images = _images_section(d), _images_section(s)
    _compare_tables(
        "system df -v (images)",
        d_images,
        s_images,
        created=_created_by_image_row(d_images, test_images),
        window=window,
    )
    shared = {
        f"{r['REPOSITORY']}:{r['TAG']}": r["SHARED SIZE"] for r in tools.parse_table(s_images)
    }
    for name in ("busybox-layers", "busybox-history"):
        assert shared[f"localhost/{name}:latest"] not in ("0B", ""), shared


def test_system_df_images_summary_matches_docker(
    docker_loaded: tools.Dockerd, strata_loaded: tools.StrataCLI
) -> None:
    d, s, _ = _run_both(docker_loaded, strata_loaded, "system", "df")
    d_row = next(r for r in tools.parse_table(d) if r["TYPE"] == "Images")
    s_row = next(r for r in tools.parse_table(s) if r["TYPE"] == "Images")
    assert s_row == d_row, f"--- docker\n{d}--- strata\n{s}"


def test_inspect_matches_docker(
    image_name: str,
    docker_loaded: tools.Dockerd,
    strata_loaded: tools.StrataCLI,
    test_images: dict[str, baseimages.BuildahImage],
) -> None:
    ref = test_images[image_name].ref
    d = json.loads(docker_loaded.docker("image", "inspect", ref).stdout)
    s = json.loads(strata_loaded("inspect", ref).stdout)
    assert isinstance(s, list) and len(s) == 1
    problems = [
        f"{field}: docker {d[0].get(field)!r}\n      != strata {s[0].get(field, '<absent>')!r}"
        for field in INSPECT_FIELDS
        if d[0].get(field) != s[0].get(field, "<absent>")
    ]
    assert not problems, "inspect differs from docker:\n  " + "\n  ".join(problems)


def test_history_lists_docker_ids_for_the_top_layer(
    docker_loaded: tools.Dockerd,
    strata_loaded: tools.StrataCLI,
    test_images: dict[str, baseimages.BuildahImage],
) -> None:
    """Loaded images have no parent chain: only the top row has an ID, the rest
    ``<missing>``, in both tools."""
    image = test_images["busybox-history"]
    rows = tools.parse_table(strata_loaded("history", image.ref).stdout)
    assert rows[0]["IMAGE"] == image.image_id.removeprefix("sha256:")[:12]
    assert {r["IMAGE"] for r in rows[1:]} == {"<missing>"}
