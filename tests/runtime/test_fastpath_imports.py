"""What ``strata run`` loads: only the code it needs (its start-up is most of its latency).

The CLI imports a command's module when the command is used; ``strata.images``,
``strata.layers`` and ``strata.content`` load a submodule when one of its names is first used;
the engine imports the registry client on first use.  These tests keep it so: the tables
that make it work must match the code, and a real ``strata run`` must not load the registry
client, rich, the image loader or the layer extractor, nor start a process while importing.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from strata.cli.main import COMMAND_MODULES
from strata.testing import tools
from strata.testing.baseimages import BUSYBOX_REF

#: Packages whose ``__init__`` defers its submodules (strata._deferred.lazy_exports).
LAZY_PACKAGES = ("strata.images", "strata.layers", "strata.content")

#: Never loaded by ``strata run --rm IMAGE CMD``.
FORBIDDEN_ON_RUN = ("strata.registry", "aiohttp", "rich", "strata.images.load",
                    "strata.images.save", "strata.images.importer", "strata.images.rootfs",
                    "strata.layers.apply", "strata.layers.compression", "zstandard", "isal",
                    "strata.content.gc", "strata.cli.images", "strata.cli.remote",
                    "strata.cli.registry", "strata.build")

_NO_SPAWN_HOOK = """
import sys
spawned = []
def _audit(event, args):
    if event == "subprocess.Popen":
        spawned.append(["Popen", str(args[0] or list(args[1])[0])])
    elif event in ("os.posix_spawn", "os.exec"):
        spawned.append([event, str(args[0]).rsplit("/", 1)[-1]])
    elif event in ("os.fork", "os.system"):
        spawned.append([event, ""])
sys.addaudithook(_audit)
"""

_PROBE = _NO_SPAWN_HOOK + """
import json
sys.argv = ["strata", *json.loads(sys.argv[1])]
from strata.cli.main import _main
try:
    _main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
with open({out!r}, "w") as f:
    json.dump({{"code": code, "modules": sorted(sys.modules), "spawned": spawned}}, f)
"""


def _cli_modules(args: list[str], out: Path) -> dict[str, object]:
    """Run the CLI with ``args`` in a fresh interpreter; what it imported and spawned."""
    code = _PROBE.format(out=str(out))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, check=False)
    assert out.exists(), proc.stderr
    result: dict[str, object] = json.loads(out.read_text())
    result["stderr"] = proc.stderr
    return result


def test_command_table_lists_what_each_module_registers() -> None:
    for module, names in COMMAND_MODULES.items():
        group = click.Group("probe")
        importlib.import_module(module).register(group)
        assert sorted(group.commands) == sorted(names), module


def test_every_command_module_is_listed() -> None:
    cli_dir = Path(importlib.import_module("strata.cli").__file__ or "").parent
    registering = {f"strata.cli.{p.stem}" for p in cli_dir.glob("*.py")
                   if "\ndef register(" in p.read_text()}
    assert registering == set(COMMAND_MODULES)


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_exports_match_the_type_checking_imports(package: str) -> None:
    module = importlib.import_module(package)
    source = Path(module.__file__ or "").read_text()
    declared: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith(f"{package}."):
            for alias in node.names:
                declared[alias.asname or alias.name] = node.module.rsplit(".", 1)[1]
    table = module.__dict__["_lazy_exports"]
    assert declared == table
    assert sorted(module.__all__) == sorted(table)
    for name in module.__all__:  # every export resolves to its submodule's object
        value = getattr(module, name)
        source_module = importlib.import_module(f"{package}.{table[name]}")
        assert value is getattr(source_module, name)


def test_an_export_named_like_its_submodule_stays_the_export() -> None:
    # Binds the submodules on their packages, as any import of them does.
    importlib.import_module("strata.images.load")
    importlib.import_module("strata.layers.apply")
    from strata import images, layers

    assert callable(images.load) and images.load.__module__ == "strata.images.load"
    assert callable(layers.apply) and layers.apply.__module__ == "strata.layers.apply"


def test_run_loads_only_what_it_needs(tmp_path: Path, busybox_layout: Path) -> None:
    root = tmp_path / "root"
    strata = tools.StrataCLI(root)
    strata("load", "-i", busybox_layout)
    # The first container of an image unpacks its layers (and loads that code); later ones
    # find them committed.
    strata("run", "--rm", "--network", "none", BUSYBOX_REF, "true")
    result = _cli_modules(["--root", str(root), "run", "--rm", "--network", "none",
                           BUSYBOX_REF, "true"], tmp_path / "probe.json")
    assert result["code"] == 0, result["stderr"]
    modules = set(result["modules"])  # type: ignore[call-overload]
    assert "strata.runtime.builtin" in modules  # it did run a container
    loaded = sorted(m for m in modules
                    if any(m == f or m.startswith(f"{f}.") for f in FORBIDDEN_ON_RUN))
    assert loaded == []
    # The only processes started: the container's (forks) and the background ``rm`` of its
    # directories (no ldconfig from ctypes.util.find_library, no ``ip``...).
    spawned = {tuple(e) for e in result["spawned"]}  # type: ignore[attr-defined]
    assert spawned - {("os.fork", ""), ("os.posix_spawn", "rm")} == set()


def test_help_still_lists_every_command(tmp_path: Path) -> None:
    result = _cli_modules(["--help"], tmp_path / "probe.json")
    assert result["code"] == 0, result["stderr"]
    modules = set(result["modules"])  # type: ignore[call-overload]
    assert set(COMMAND_MODULES) <= modules


def test_importing_the_cli_starts_no_process(tmp_path: Path) -> None:
    code = _NO_SPAWN_HOOK + (
        "import strata.cli.main, strata.cli.run, strata.engine, strata.runtime.builtin\n"
        "import strata.snapshots, strata.runtime.network, strata.runtime.pty\n"
        f"import json; json.dump(spawned, open({str(tmp_path / 'spawned.json')!r}, 'w'))\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert json.loads((tmp_path / "spawned.json").read_text()) == []
