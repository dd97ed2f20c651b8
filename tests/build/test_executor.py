"""The build executor against a real busybox image: every instruction, RUN in a container,
COPY/ADD semantics, layers and history, multi-stage graphs, failures that leave nothing."""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.build import BuildStepFailed
from strata.engine import Engine
from strata.errors import DockerfileError, NotFound
from strata.testing import tools
from strata.testing.builds import build, image_of, layer_members, mounts_under, write_context


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Iterator[Engine]:
    """A strata root holding localhost/busybox:latest, shared by this module."""
    root = tmp_path_factory.mktemp("build-exec") / "root"
    eng = Engine(root)
    eng.load(busybox_layout)
    yield eng
    assert mounts_under(root) == [], "a build left mounts behind"
    active = [s.name for s in eng.snapshotter.walk() if s.kind != "committed"]
    assert active == [], f"a build left active snapshots: {active}"


def _ctx(tmp_path: Path, dockerfile: str, files: dict[str, str | bytes] | None = None) -> Path:
    return write_context(tmp_path / "ctx", {"Dockerfile": dockerfile, **(files or {})})


def test_config_instructions_set_config_and_empty_history(engine: Engine, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, """\
FROM localhost/busybox:latest
ARG V=1.2
ENV A=1 B="two words" C=${V}
LABEL org.example.v=$V other="x y"
EXPOSE 80 53/udp 8000-8001
VOLUME ["/data", "/cache"]
USER nobody:nogroup
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --retries=2 CMD wget -q localhost || exit 1
ENTRYPOINT ["/bin/echo"]
CMD ["hi"]
MAINTAINER someone
ONBUILD RUN echo triggered
""")
    run = build(engine, ctx, tags=("cfg:1",))
    manifest, config = image_of(engine, run)
    c = config.config
    assert c is not None
    assert c.env is not None and "A=1" in c.env and "B=two words" in c.env and "C=1.2" in c.env
    assert c.labels == {"org.example.v": "1.2", "other": "x y"}
    assert set(c.exposed_ports or ()) == {"80/tcp", "53/udp", "8000/tcp", "8001/tcp"}
    assert set(c.volumes or ()) == {"/data", "/cache"}
    assert c.user == "nobody:nogroup"
    assert c.stop_signal == "SIGTERM"
    assert c.healthcheck is not None
    assert c.healthcheck.test == ("CMD-SHELL", "wget -q localhost || exit 1")
    assert c.healthcheck.interval == 5_000_000_000 and c.healthcheck.retries == 2
    assert c.entrypoint == ("/bin/echo",) and c.cmd == ("hi",)
    assert c.on_build == ("RUN echo triggered",)
    assert config.author == "someone"
    # config-only instructions make no layer, and say so in the history
    assert len(manifest.layers) == 1
    new = config.history[2:]
    assert new and all(h.empty_layer for h in new)
    assert any(h.created_by == "/bin/sh -c #(nop)  ENV A=1 B=two words C=1.2" for h in new)


def test_entrypoint_resets_inherited_cmd(engine: Engine, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "FROM localhost/busybox:latest\nENTRYPOINT [\"/bin/ls\"]\n")
    _, config = image_of(engine, build(engine, ctx))
    assert config.config is not None
    assert config.config.entrypoint == ("/bin/ls",)
    assert config.config.cmd is None  # busybox's CMD ["sh"] is dropped (docker)
    ctx2 = _ctx(tmp_path / "2", "FROM localhost/busybox:latest\nCMD [\"-l\"]\n"
                "ENTRYPOINT /bin/ls\n")
    _, config2 = image_of(engine, build(engine, ctx2))
    assert config2.config is not None
    assert config2.config.cmd == ("-l",)  # set in this stage: kept
    assert config2.config.entrypoint == ("/bin/sh", "-c", "/bin/ls")


def test_run_layer_holds_changes_whiteouts_and_no_mount_stubs(engine: Engine,
                                                              tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, """\
FROM localhost/busybox:latest
RUN mkdir -p /d/sub && echo x > /d/sub/f && echo keep > /d/k
RUN rm /d/k && rm -rf /d/sub && mkdir /d/sub && echo y > /d/sub/g && echo new > /n
""")
    run = build(engine, ctx)
    first = layer_members(engine, run, -2)
    assert set(first) == {"d", "d/sub", "d/sub/f", "d/k"}
    second = layer_members(engine, run, -1)
    assert "d/.wh.k" in second
    assert "d/sub/.wh..wh..opq" in second
    assert "d/sub/g" in second and "n" in second
    for stub in ("proc", "sys", "dev", "etc", "etc/hosts", "etc/resolv.conf"):
        assert stub not in first and stub not in second


def test_run_sees_env_args_workdir_user_and_shell(engine: Engine, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, """\
FROM localhost/busybox:latest
ARG WHO
ENV GREETING=hello
WORKDIR /w
RUN echo "$GREETING $WHO" > out && pwd >> out && id -u >> out
USER 65534
RUN id -u > /tmp/uid
SHELL ["/bin/sh", "-ec"]
RUN echo "$0" > /tmp/shell-check || true
""")
    run = build(engine, ctx, build_args={"WHO": "world"})
    out = layer_members(engine, run, -3)
    assert "w/out" in out
    manifest, config = image_of(engine, run)
    del manifest
    assert config.config is not None and config.config.working_dir == "/w"
    assert config.config.shell == ("/bin/sh", "-ec")
    assert run.result.unused_args == ()
    tree = engine.root / "check"
    engine.unpack(str(run.result.image.image_id), tree)
    assert (tree / "w" / "out").read_text() == "hello world\n/w\n0\n"
    assert (tree / "tmp" / "uid").read_text() == "65534\n"
    history = [h.created_by for h in config.history if not h.empty_layer]
    assert "RUN |1 WHO=world /bin/sh -c echo \"$GREETING $WHO\" > out && pwd >> out && id -u" \
        " >> out # buildkit" in history


def test_copy_semantics(engine: Engine, tmp_path: Path) -> None:
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:gz") as tar:
        info = tarfile.TarInfo("inner/t.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"tar"))
    ctx = _ctx(tmp_path, """\
FROM localhost/busybox:latest
COPY dir /copied
COPY dir/a.txt dir/b.txt /many/
COPY *.md /docs/
COPY --chown=65534:65534 --chmod=0600 one.txt /owned.txt
COPY one.txt /renamed
ADD arch.tar.gz /extracted/
COPY arch.tar.gz /not-extracted/
WORKDIR /rel
COPY one.txt ./
""", {"dir/a.txt": "a", "dir/b.txt": "b", "dir/deep/c.txt": "c", "x.md": "x", "y.md": "y",
      "one.txt": "1", "arch.tar.gz": tar_bytes.getvalue()})
    run = build(engine, ctx)
    tree = engine.root / "copy-check"
    engine.unpack(str(run.result.image.image_id), tree)
    assert sorted(p.name for p in (tree / "copied").iterdir()) == ["a.txt", "b.txt", "deep"]
    assert (tree / "copied" / "deep" / "c.txt").read_text() == "c"
    assert sorted(p.name for p in (tree / "many").iterdir()) == ["a.txt", "b.txt"]
    assert sorted(p.name for p in (tree / "docs").iterdir()) == ["x.md", "y.md"]
    st = (tree / "owned.txt").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o600)
    assert (tree / "renamed").read_text() == "1"
    assert (tree / "extracted" / "inner" / "t.txt").read_text() == "tar"
    assert (tree / "not-extracted" / "arch.tar.gz").is_file()
    assert (tree / "rel" / "one.txt").read_text() == "1"


def test_copy_of_a_missing_source_fails_clearly(engine: Engine, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "FROM localhost/busybox:latest\nCOPY nothere /x\n")
    with pytest.raises(NotFound, match="nothere"):
        build(engine, ctx, tags=("missing:1",))
    with pytest.raises(NotFound):
        engine.resolve("missing:1")


def test_failed_run_reports_step_exit_code_tail_and_leaves_nothing(engine: Engine,
                                                                   tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, """\
FROM localhost/busybox:latest
RUN echo fine > /fine
RUN echo first; echo second >&2; exit 7
RUN echo never
""")
    before = {b.digest for b in engine.content.walk()}
    with pytest.raises(BuildStepFailed) as info:
        build(engine, ctx, tags=("broken:1",))
    err = info.value
    assert err.exit_code_of_step == 7
    assert "exit code: 7" in str(err)
    assert "RUN echo first; echo second >&2; exit 7" in err.step
    assert err.tail == ("first", "second")
    with pytest.raises(NotFound):
        engine.resolve("broken:1")
    assert mounts_under(engine.root) == []
    assert [s.name for s in engine.snapshotter.walk() if s.kind != "committed"] == []
    del before


def test_multi_stage_copy_from_and_target_pruning(engine: Engine, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, """\
FROM localhost/busybox:latest AS builder
RUN echo built > /artifact && chown 1:2 /artifact

FROM localhost/busybox:latest AS broken
RUN exit 1

FROM scratch AS final
COPY --from=builder /artifact /artifact
COPY --from=0 /bin/busybox /bin/busybox

FROM final AS extended
COPY --from=broken /nothing /nothing
""")
    run = build(engine, ctx, target="final")
    manifest, config = image_of(engine, run)
    assert len(manifest.layers) == 2
    top = layer_members(engine, run, 0)
    assert top["artifact"].uid == 1 and top["artifact"].gid == 2  # --from keeps owners
    assert not any("broken" in e.name for e in run.events)
    with pytest.raises(DockerfileError):
        build(engine, ctx, target="nosuchstage")
    del config


def test_onbuild_triggers_run_in_the_child(engine: Engine, tmp_path: Path) -> None:
    parent = _ctx(tmp_path / "p", "FROM localhost/busybox:latest\n"
                  "ONBUILD RUN echo triggered > /trig\n")
    build(engine, parent, tags=("onbuild-parent:1",))
    child = _ctx(tmp_path / "c", "FROM onbuild-parent:1\nRUN cat /trig > /copy\n")
    run = build(engine, child)
    _, config = image_of(engine, run)
    assert config.config is not None and not config.config.on_build
    assert "copy" in layer_members(engine, run, -1)
    assert "trig" in layer_members(engine, run, -2)


def test_heredocs_and_mounts(engine: Engine, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, """\
FROM localhost/busybox:latest
ARG NAME=there
RUN <<EOF
echo one > /hd1
echo two >> /hd1
EOF
RUN <<EOF
#!/bin/sh
echo shebang > /hd2
EOF
COPY <<EOF /greeting
hello ${NAME}
EOF
RUN --mount=type=bind,source=data.txt,target=/mnt/data.txt cp /mnt/data.txt /from-bind
RUN --mount=type=cache,target=/var/cache/x echo c >> /var/cache/x/log && wc -l < \
    /var/cache/x/log > /cache-count
RUN --mount=type=tmpfs,target=/scratch touch /scratch/t && ls /scratch > /tmpfs-list
RUN --network=none tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' > /net-none
""", {"data.txt": "bound"})
    run = build(engine, ctx)
    tree = engine.root / "hd-check"
    engine.unpack(str(run.result.image.image_id), tree)
    assert (tree / "hd1").read_text() == "one\ntwo\n"
    assert (tree / "hd2").read_text() == "shebang\n"
    assert (tree / "greeting").read_text() == "hello there\n"
    assert (tree / "from-bind").read_text() == "bound"
    assert (tree / "cache-count").read_text().strip() == "1"
    assert (tree / "tmpfs-list").read_text() == "t\n"
    assert not (tree / "mnt" / "data.txt").exists()
    assert not (tree / "var" / "cache" / "x" / "log").exists()
    assert not (tree / "scratch" / "t").exists()
    assert (tree / "net-none").read_text() == "lo\n"  # --network=none: loopback only


def test_cli_build_then_run(engine: Engine, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "FROM localhost/busybox:latest\nCOPY msg /msg\n"
               "CMD [\"cat\", \"/msg\"]\n", {"msg": "from the build\n"})
    cli = tools.StrataCLI(engine.root)
    iid = tmp_path / "iid"
    out = cli("build", "-q", "--iidfile", str(iid), "-t", "cli-built:1", str(ctx))
    assert out.stdout.strip() == iid.read_text().strip()
    assert iid.read_text().startswith("sha256:")
    ran = cli("run", "--rm", "cli-built:1")
    assert ran.stdout == "from the build\n"
    bad = _ctx(tmp_path / "bad", "FROM localhost/busybox:latest\nRUN echo oops; exit 3\n")
    proc = cli("build", str(bad), check=False)
    assert proc.returncode == 1
    assert "exit code: 3" in proc.stderr and "oops" in proc.stderr


def test_secret_mount_is_readable_and_never_stored(engine: Engine, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t")
    ctx = _ctx(tmp_path, "FROM localhost/busybox:latest\n"
               "RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /secret-size\n")
    run = build(engine, ctx, secrets=(f"id=tok,src={secret}",))
    members = layer_members(engine, run, -1)
    assert set(members) == {"secret-size"}
    manifest, _ = image_of(engine, run)
    for layer in manifest.layers:
        assert b"s3cr3t" not in engine.content.read(layer.digest)


def test_context_tar_on_stdin(engine: Engine, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM localhost/busybox:latest\nCOPY in.txt /in.txt\n"),
                           ("in.txt", b"from stdin\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    cli = tools.StrataCLI(engine.root)
    proc = subprocess.run([*cli.command, "--root", str(engine.root), "build", "-q", "-t",
                           "stdin:1", "-"], input=buf.getvalue(), capture_output=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert cli("run", "--rm", "stdin:1", "cat", "/in.txt").stdout == "from stdin\n"


def test_copy_exclude(engine: Engine, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "# syntax=docker/dockerfile:1.7-labs\nFROM localhost/busybox:latest\n"
               "COPY --exclude=*.log --exclude=cache src/ /app/\n",
               {"src/keep.txt": "k", "src/drop.log": "d", "src/cache/x": "x",
                "src/sub/also.log": "d", "src/sub/kept": "k"})
    run = build(engine, ctx)
    members = set(layer_members(engine, run, -1))
    assert "app/keep.txt" in members and "app/sub/kept" in members
    assert not {"app/drop.log", "app/cache", "app/cache/x"} & members
