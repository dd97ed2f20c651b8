"""Build outputs: the image store (several tags), ``--output type=oci`` and ``type=docker``
archives that load back to the same image, ``type=registry`` pushing to a real registry,
and ``ADD`` of a URL served on the loopback."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.engine import Engine
from strata.errors import InvalidArgument
from strata.testing import tools
from strata.testing.builds import build, write_context


@pytest.fixture
def engine(tmp_path: Path, busybox_layout: Path) -> Engine:
    eng = Engine(tmp_path / "root")
    eng.load(busybox_layout)
    return eng


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    return write_context(tmp_path / "ctx", {
        "Dockerfile": "FROM localhost/busybox:latest\nCOPY f /f\nRUN echo ran > /ran\n",
        "f": "file\n"})


def test_several_tags_and_archives_load_back(engine: Engine, ctx: Path, tmp_path: Path,
                                             busybox_layout: Path) -> None:
    oci = tmp_path / "out" / "image-oci.tar"
    docker = tmp_path / "out" / "image-docker.tar"
    run = build(engine, ctx, tags=("one:1", "two:2"),
                outputs=(f"type=oci,dest={oci}", f"type=docker,dest={docker}"))
    image_id = run.result.image.image_id
    assert engine.resolve("one:1").image.id == image_id
    assert engine.resolve("two:2").image.id == image_id
    for archive in (oci, docker):
        other = Engine(tmp_path / f"load-{archive.stem}")
        loaded = other.load(archive)
        assert {item.image_id for item in loaded} == {image_id}
        assert {str(item.name) for item in loaded} == {"docker.io/library/one:1",
                                                       "docker.io/library/two:2"}
    cli = tools.StrataCLI(tmp_path / "load-image-docker")
    assert cli("run", "--rm", "one:1", "cat", "/f", "/ran").stdout == "file\nran\n"


def test_bad_output_specs_are_refused(engine: Engine, ctx: Path) -> None:
    for spec in ("type=local,dest=x", "type=oci", "dest=x", "nonsense"):
        with pytest.raises(InvalidArgument):
            build(engine, ctx, outputs=(spec,))


def test_output_registry_pushes(engine: Engine, ctx: Path, tmp_path: Path) -> None:
    with tools.DockerRegistry(tmp_path / "registry") as registry:
        ref = f"{registry.address}/built/app:v1"
        run = build(engine, ctx, tags=(ref,), outputs=("type=registry",))
        pulled = Engine(tmp_path / "pulled").pull(ref)
        assert pulled.image_id == run.result.image.image_id


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        del format, args


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    served = tmp_path / "www"
    served.mkdir()
    (served / "remote.txt").write_text("from the web\n")

    def handler(*args: object) -> _Handler:
        return _Handler(*args, directory=str(served))  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_add_url(engine: Engine, tmp_path: Path, web: str) -> None:
    ctx = write_context(tmp_path / "url", {"Dockerfile": (
        f"FROM localhost/busybox:latest\nADD {web}/remote.txt /downloads/\n"
        f"ADD {web}/remote.txt /named.txt\n")})
    run = build(engine, ctx)
    tree = tmp_path / "tree"
    engine.unpack(str(run.result.image.image_id), tree)
    assert (tree / "downloads" / "remote.txt").read_text() == "from the web\n"
    assert (tree / "named.txt").stat().st_mode & 0o777 == 0o600


def test_add_url_checksum_is_verified(engine: Engine, tmp_path: Path, web: str) -> None:
    import hashlib

    good = "sha256:" + hashlib.sha256(b"from the web\n").hexdigest()
    ctx = write_context(tmp_path / "sum", {"Dockerfile": (
        f"FROM localhost/busybox:latest\nADD --checksum={good} {web}/remote.txt /ok.txt\n")})
    build(engine, ctx)
    bad = write_context(tmp_path / "bad", {"Dockerfile": (
        f"FROM localhost/busybox:latest\nADD --checksum=sha256:{'0' * 64} {web}/remote.txt"
        " /bad.txt\n")})
    with pytest.raises(InvalidArgument, match="digest mismatch"):
        build(engine, bad)
