"""The case-corpus harness itself (strata.testing.buildcases): it must notice differences."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from strata.testing import buildcases, trees


def _case(tmp_path: Path, toml: str, dockerfile: str = "FROM localhost/busybox:latest\n") -> buildcases.Case:
    d = tmp_path / "some-case"
    d.mkdir(exist_ok=True)
    (d / "Dockerfile").write_text(dockerfile)
    (d / "case.toml").write_text(toml)
    return buildcases.load_case(d)


def _file(content: str, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> trees.Node:
    import hashlib

    data = content.encode()
    return trees.Node(
        type=trees.NodeType.FILE,
        mode=mode,
        uid=owner[0],
        gid=owner[1],
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


_DIR = trees.Node(type=trees.NodeType.DIR, mode=0o755, uid=0, gid=0)


def _outcome(tree: dict[str, trees.Node], **config: object) -> buildcases.Outcome:
    return buildcases.Outcome(ok=True, config=config, layers=2, tree=tree)


def test_load_case_defaults(tmp_path: Path) -> None:
    case = _case(tmp_path, 'description = "d"\n')
    assert case.name == "some-case"
    assert case.references == ("buildah", "docker")
    assert case.bases() == ["localhost/busybox:latest"]
    assert not case.expect_failure
    assert case.dockerfile == tmp_path / "some-case" / "Dockerfile"


@pytest.mark.parametrize(
    "toml",
    [
        "bogus = 1\n",
        'references = ["kaniko"]\n',
        "references = []\n",
        'references = ["docker"]\n[tools.buildah]\nnotes = "x"\n',
    ],
    ids=["unknown-key", "unknown-tool", "nothing-to-check", "tools-for-unused-reference"],
)
def test_load_case_rejects_mistakes(tmp_path: Path, toml: str) -> None:
    with pytest.raises(ValueError):
        _case(tmp_path, toml)


def test_prepare_makes_what_git_cannot_hold(tmp_path: Path) -> None:
    case = _case(
        tmp_path,
        '[prepare]\nmodes = { "f" = 0o600 }\nowners = { "f" = "12:34" }\nmkdirs = ["empty/dir"]\n'
        '[prepare.archives."t.tar.gz"]\nsource = "tarsrc"\ncompression = "gzip"\n',
    )
    (case.context / "tarsrc").mkdir(parents=True)
    (case.context / "tarsrc" / "x").write_text("x\n")
    (case.context / "f").write_text("f\n")
    prepared = buildcases.prepare(case, tmp_path / "work")
    st = os.lstat(prepared.context / "f")
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 12, 34)
    assert (prepared.context / "empty" / "dir").is_dir()
    assert not (prepared.context / "tarsrc").exists()
    raw = gzip.decompress((prepared.context / "t.tar.gz").read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert sorted(tar.getnames()) == [".", "./x"]
    assert prepared.dockerfile == case.dockerfile
    # the case's own directory is untouched
    assert (case.context / "tarsrc" / "x").exists()


def test_compare_identical_results(tmp_path: Path) -> None:
    case = _case(tmp_path, 'description = "d"\n')
    tree = {".": _DIR, "a": _file("a\n")}
    assert buildcases.compare(case, "docker", _outcome(tree, Cmd=["sh"]), _outcome(tree, Cmd=["sh"])) == []


def test_compare_reports_tree_config_and_layer_differences(tmp_path: Path) -> None:
    case = _case(tmp_path, 'description = "d"\n')
    ref = buildcases.Outcome(
        ok=True, config={"Cmd": ["sh"], "User": "1"}, layers=3, tree={"a": _file("a\n"), "b": _DIR}
    )
    got = buildcases.Outcome(ok=True, config={"Cmd": ["sh"]}, layers=2, tree={"a": _file("A\n", 0o600)})
    problems = buildcases.compare(case, "docker", ref, got)
    assert any(p.startswith("a: ") and "mode" in p for p in problems)
    assert any(p.startswith("b: only in docker") for p in problems)
    assert "config User: '1' in docker != None in strata" in problems
    assert "layers: 3 in docker != 2 in strata" in problems


def test_compare_treats_empty_and_missing_config_alike(tmp_path: Path) -> None:
    case = _case(tmp_path, 'description = "d"\n')
    ref = _outcome({}, Entrypoint=[], Labels={}, WorkingDir="")
    got = _outcome({}, Entrypoint=None)
    assert buildcases.compare(case, "buildah", ref, got) == []


def test_compare_per_tool_divergences(tmp_path: Path) -> None:
    case = _case(
        tmp_path,
        '[tools.buildah]\nignore_paths = ["vol"]\nignore_config = ["WorkingDir"]\ncompare_layers = false\n',
    )
    ref = buildcases.Outcome(ok=True, config={"WorkingDir": ""}, layers=5, tree={"vol": _DIR, "vol/x": _DIR})
    got = buildcases.Outcome(ok=True, config={"WorkingDir": "/"}, layers=2, tree={})
    assert buildcases.compare(case, "buildah", ref, got) == []
    assert len(buildcases.compare(case, "docker", ref, got)) == 4


def test_compare_drops_buildah_mount_placeholders_only(tmp_path: Path) -> None:
    case = _case(tmp_path, 'description = "d"\n')
    ref = _outcome({"etc/hostname": _file(""), "run": _DIR, "etc/resolv.conf": _file("nameserver x\n")})
    got = _outcome({})
    problems = buildcases.compare(case, "buildah", ref, got)
    assert problems == ["etc/resolv.conf: only in buildah (file mode=0644 owner=0:0 size=13)"]
    assert len(buildcases.compare(case, "docker", ref, got)) == 3


def test_compare_failures(tmp_path: Path) -> None:
    case = _case(tmp_path, 'expect_failure = true\nmessage = "unknown instruction"\n')
    failed = buildcases.Outcome(ok=False, output="Dockerfile:3: unknown instruction: FOO")
    assert buildcases.compare(case, "docker", buildcases.Outcome(ok=False, output="x"), failed) == []
    assert buildcases.compare(case, "docker", _outcome({}), failed) == [
        "docker's build succeeded but the case expects a failure"
    ]
    other = buildcases.Outcome(ok=False, output="something else")
    assert len(buildcases.compare(case, "docker", buildcases.Outcome(ok=False), other)) == 1
    assert len(buildcases.compare(case, "docker", buildcases.Outcome(ok=False), _outcome({}))) == 1


def test_check_expected(tmp_path: Path) -> None:
    case = _case(
        tmp_path,
        "references = []\n[expect]\nlayers = 2\nabsent = [\"tmp/x\"]\n"
        '[expect.files."etc/motd"]\ncontent = "hi\\n"\nmode = 0o644\nowner = "0:0"\ntype = "file"\n'
        '[expect.config]\nCmd = ["sh"]\n',
    )
    good = _outcome({"etc/motd": _file("hi\n")}, Cmd=["sh"])
    assert buildcases.check_expected(case, good) == []
    bad = buildcases.Outcome(
        ok=True,
        config={"Cmd": ["bash"]},
        layers=3,
        tree={"etc/motd": _file("ho\n", 0o600, (1, 1)), "tmp/x": _DIR},
    )
    problems = buildcases.check_expected(case, bad)
    assert len(problems) == 6, problems  # layers, absent, mode, owner, content, Cmd
    assert buildcases.check_expected(case, buildcases.Outcome(ok=False, output="boom")) == [
        "strata's build failed: boom"
    ]


def test_outcome_json_round_trip() -> None:
    node = trees.Node(
        type=trees.NodeType.CHAR, mode=0o600, uid=1, gid=2, rdev=(1, 3), xattrs=(("user.k", b"\x00v"),)
    )
    outcome = buildcases.Outcome(ok=True, output="", config={"Cmd": ["a"]}, layers=4, tree={"dev/null": node})
    again = buildcases.Outcome.from_json(outcome.to_json())
    assert again == outcome


def test_corpus_case_files_parse() -> None:
    cases = buildcases.load_cases(Path(__file__).parent / "cases")
    assert len({c.name for c in cases}) == len(cases) >= 40


def test_compare_xattrs_can_be_left_out_for_one_tool(tmp_path: Path) -> None:
    case = _case(tmp_path, "[tools.docker]\ncompare_xattrs = false\n")
    plain = _file("x\n")
    tagged = trees.Node(
        type=plain.type, mode=plain.mode, uid=0, gid=0, size=plain.size, sha256=plain.sha256,
        xattrs=(("user.k", b"v"),),
    )  # fmt: skip
    ref = _outcome({"f": plain})
    got = _outcome({"f": tagged})
    assert buildcases.compare(case, "docker", ref, got) == []
    assert buildcases.compare(case, "buildah", ref, got) == [
        "f: xattrs {} in buildah != {user.k=b'v'} in strata"
    ]
