"""Network options of ``run`` / ``create`` (``--network``, ``-p``) and ``port`` (docker's).

:data:`OPTIONS` are added to the container commands by :mod:`strata.cli.run`; :func:`fields`
turns what was parsed into :class:`~strata.runtime.RunOptions` fields; :func:`ports_text`
is the ``ps`` PORTS column.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from strata.cli.context import engine_of
from strata.errors import StrataError
from strata.runtime.network import PortMapping

__all__ = ["OPTIONS", "fields", "ports_text", "register"]

OPTIONS: tuple[Callable[[Any], Any], ...] = (
    click.option("--network", "--net", "network", default="bridge", show_default=True,
                 metavar="bridge|host|none", help="Connect a container to a network."),
    click.option("-p", "--publish", "publish", multiple=True,
                 metavar="[IP:][HOST:]CONTAINER[/PROTO]",
                 help="Publish a container's port(s) to the host."),
    click.option("-P", "--publish-all", "publish_all", is_flag=True,
                 help="Publish all exposed ports to random ports."),
)


def fields(opts: dict[str, Any]) -> dict[str, Any]:
    """RunOptions fields from the parsed options."""
    return {"network": opts["network"], "publish": tuple(opts["publish"]),
            "publish_all": bool(opts["publish_all"])}


def ports_text(ports: Sequence[PortMapping]) -> str:
    """docker's ``ps`` PORTS text: ``0.0.0.0:8080->80/tcp, 0.0.0.0:5353->53/udp``."""
    return ", ".join(str(p) for p in ports)


@click.command("port")
@click.argument("container")
@click.argument("private_port", required=False, metavar="[PRIVATE_PORT[/PROTO]]")
@click.pass_context
def port_cmd(ctx: click.Context, container: str, private_port: str | None) -> None:
    """List port mappings or a specific mapping for the container."""
    try:
        ports = engine_of(ctx).container_ports(container)
    except StrataError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    if private_port is None:
        for p in ports:
            click.echo(f"{p.container_port}/{p.protocol} -> {p.host_address}")
        return
    number, _, proto = private_port.partition("/")
    proto = proto or "tcp"
    found = [p for p in ports if str(p.container_port) == number and p.protocol == proto]
    if not found:
        click.echo(f"Error: No public port '{number}/{proto}' published for {container}",
                   err=True)
        sys.exit(1)
    for p in found:
        click.echo(p.host_address)


def register(group: click.Group) -> None:
    """Attach ``port`` at top level."""
    group.add_command(port_cmd)
