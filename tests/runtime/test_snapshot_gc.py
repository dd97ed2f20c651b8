"""Removing images removes their layer snapshots, as docker deletes an image's layers.

A derived image (a container of busybox committed) shares busybox's layer snapshot and adds
its own; its containers stand on the image's shared init layer. ``rmi`` of the derived image
removes its own layer snapshot and keeps busybox's; ``rmi`` of busybox then removes busybox's
layer and init layer. A snapshot a container stands on is never removed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.engine import Engine
from strata.errors import FailedPrecondition
from strata.oci import chain_ids
from strata.runtime import RunOptions
from strata.snapshots import Kind
from strata.testing import tools
from strata.testing.baseimages import BUSYBOX_REF


def _chains(engine: Engine, name: str) -> set[str]:
    config = engine.resolve(name).image.config()
    return {str(c) for c in chain_ids(config.rootfs.diff_ids)}


def _committed(engine: Engine) -> set[str]:
    return {i.name for i in engine.snapshotter.walk() if i.kind is Kind.COMMITTED}


def test_rmi_removes_the_snapshots_only_its_image_used(tmp_path: Path, busybox_layout: Path) -> None:
    tools.require("runc")
    root = tmp_path / "root"
    tools.StrataCLI(root)("load", "-i", busybox_layout)
    engine = Engine(root)
    writer = engine.container_create(BUSYBOX_REF, RunOptions(
        command=("sh", "-c", "echo derived > /derived"), network="none"))
    assert engine.container_start(writer.id) == 0
    engine.container_commit(writer.id, "localhost/derived:1")
    engine.container_remove([writer.id])
    base_chains = _chains(engine, BUSYBOX_REF)
    derived_chains = _chains(engine, "localhost/derived:1")
    own = derived_chains - base_chains
    assert len(own) == 1 and base_chains < derived_chains

    user = engine.container_create("localhost/derived:1", RunOptions(command=("true",),
                                                                     network="none"))
    with pytest.raises(FailedPrecondition):  # docker: the image is in use
        engine.remove(["localhost/derived:1"])
    engine.container_remove([user.id])
    init_layers = {n for n in _committed(engine) if n.startswith("init-")}
    assert init_layers, "the containers made init layers"
    assert own <= _committed(engine), "the derived image was unpacked for its container"

    engine.remove(["localhost/derived:1"])
    left = _committed(engine)
    assert not own & left, "the derived image's own layer went with it"
    assert base_chains <= left, "busybox's layer stays for busybox"

    engine.remove([BUSYBOX_REF])
    assert _committed(engine) == set(), _committed(engine)
