"""``python -m strata`` runs the CLI."""

from __future__ import annotations

from strata.cli.main import main

main()
