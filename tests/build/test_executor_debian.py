"""A real build: Debian with ``apt-get install`` in a build stage compiles a small C program,
which is copied into a slim final stage and run with ``strata run``."""

from __future__ import annotations

from pathlib import Path

from strata.engine import Engine
from strata.testing import tools
from strata.testing.builds import build, image_of, write_context

DOCKERFILE = """\
FROM localhost/debian:bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends tcc libc6-dev
COPY hello.c /src/hello.c
RUN tcc -o /src/hello /src/hello.c

FROM localhost/debian:bookworm
COPY --from=build /src/hello /usr/local/bin/hello
ENTRYPOINT ["/usr/local/bin/hello"]
CMD ["world"]
"""

HELLO_C = """\
#include <stdio.h>
int main(int argc, char **argv) {
    int total = 0;
    for (int i = 1; i < argc; i++) total += printf("hello, %s\\n", argv[i]);
    printf("%d bytes\\n", total);
    return 0;
}
"""


def test_debian_apt_build_then_run(tmp_path: Path, debian_layout: Path) -> None:
    engine = Engine(tmp_path / "root")
    engine.load(debian_layout)
    ctx = write_context(tmp_path / "ctx", {"Dockerfile": DOCKERFILE, "hello.c": HELLO_C})
    run = build(engine, ctx, tags=("hello:1",))
    assert any("Setting up tcc" in line for line in run.logs())
    manifest, config = image_of(engine, run)
    base_layers = len(engine.resolve("localhost/debian:bookworm").image.manifest().layers)
    assert len(manifest.layers) == base_layers + 1  # only the binary: no compiler inside
    assert config.config is not None and config.config.cmd == ("world",)
    cli = tools.StrataCLI(engine.root)
    assert cli("run", "--rm", "hello:1").stdout == "hello, world\n13 bytes\n"
    assert cli("run", "--rm", "hello:1", "a", "bb").stdout == "hello, a\nhello, bb\n19 bytes\n"
    assert cli("run", "--rm", "--entrypoint", "sh", "hello:1", "-c",
               "command -v tcc || echo absent").stdout == "absent\n"
