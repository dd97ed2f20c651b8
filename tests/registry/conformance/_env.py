"""The suite's knobs: the same ``OCI_*`` environment variables as the upstream Go suite
(``conformance/setup.go``), read once, plus strata's ``STRATA_CONFORMANCE_TARGET``.

Differences from upstream, on purpose:

- Upstream runs a workflow only when its ``OCI_TEST_*`` variable is true, so a run with
  none set runs nothing. Here, when *none* of the four ``OCI_TEST_*`` variables is set, all
  four workflows run (the default run is the full suite); as soon as one is set, upstream's
  rule applies exactly (a workflow runs iff its variable parses as true).
- ``OCI_ROOT_URL`` unset means "start the registries to test here" (see ``conftest.py``)
  instead of an error; ``OCI_NAMESPACE`` then defaults to :data:`DEFAULT_NAMESPACE`.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from enum import IntFlag

__all__ = [
    "DEFAULT_NAMESPACE",
    "TARGET_ENV",
    "Settings",
    "Workflow",
    "parse_bool",
    "settings",
]

#: Repository used when the suite starts its own registries.
DEFAULT_NAMESPACE = "oci-conformance/test"

#: Which registries to start when ``OCI_ROOT_URL`` is unset (see conftest.py).
TARGET_ENV = "STRATA_CONFORMANCE_TARGET"


class Workflow(IntFlag):
    """The four workflow categories, with upstream's bit values."""

    PULL = 1
    PUSH = 2
    CONTENT_DISCOVERY = 4
    CONTENT_MANAGEMENT = 8


#: Upstream's ``testMap``: variable -> workflow.
WORKFLOW_ENV: dict[str, Workflow] = {
    "OCI_TEST_PULL": Workflow.PULL,
    "OCI_TEST_PUSH": Workflow.PUSH,
    "OCI_TEST_CONTENT_DISCOVERY": Workflow.CONTENT_DISCOVERY,
    "OCI_TEST_CONTENT_MANAGEMENT": Workflow.CONTENT_MANAGEMENT,
}

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_bool(text: str | None) -> tuple[bool, bool]:
    """Go's ``strconv.ParseBool``: ``(value, ok)``; anything unparsable is ``(False, False)``."""
    if text in _TRUE:
        return True, True
    if text in _FALSE:
        return False, True
    return False, False


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the environment says about this run."""

    root_url: str | None
    namespace: str
    crossmount_namespace: str
    username: str
    password: str
    auth_scope: str
    debug: bool
    tests_to_run: Workflow
    blob_digest: str
    manifest_digest: str
    tag_name: str
    tag_list: str
    hide_skipped_workflows: bool
    delete_manifest_before_blobs: bool
    run_automatic_crossmount_test: bool
    automatic_crossmount_enabled: bool
    run_pull_setup: bool
    run_push_setup: bool
    run_content_discovery_setup: bool
    run_content_management_setup: bool

    def disabled(self, workflow: Workflow) -> bool:
        """Upstream's ``userDisabled``."""
        return not (workflow & self.tests_to_run)

    def skip_report(self) -> str:
        """Upstream's ``generateSkipReport`` text."""
        lines = ["you have skipped this test; if this is an error, check your environment variable settings:"]
        lines += [f"\t{name}={os.environ.get(name, '')}" for name in WORKFLOW_ENV]
        return "\n".join(lines)


def settings() -> Settings:
    """Read the environment (as upstream's ``init`` does)."""
    env = os.environ
    if any(name in env for name in WORKFLOW_ENV):
        tests_to_run = Workflow(0)
        for name, workflow in WORKFLOW_ENV.items():
            if parse_bool(env.get(name))[0]:
                tests_to_run |= workflow
    else:
        tests_to_run = (
            Workflow.PULL | Workflow.PUSH | Workflow.CONTENT_DISCOVERY | Workflow.CONTENT_MANAGEMENT
        )

    crossmount = env.get("OCI_CROSSMOUNT_NAMESPACE", "") or f"conformance-{uuid.uuid4()}"
    delete_first = True
    if "OCI_DELETE_MANIFEST_BEFORE_BLOBS" in env:
        delete_first = parse_bool(env["OCI_DELETE_MANIFEST_BEFORE_BLOBS"])[0]
    automatic_val = env.get("OCI_AUTOMATIC_CROSSMOUNT")
    run_pull_setup = not (
        env.get("OCI_TAG_NAME", "") and env.get("OCI_MANIFEST_DIGEST", "") and env.get("OCI_BLOB_DIGEST", "")
    )
    return Settings(
        root_url=env.get("OCI_ROOT_URL") or None,
        namespace=env.get("OCI_NAMESPACE", "") or DEFAULT_NAMESPACE,
        crossmount_namespace=crossmount,
        username=env.get("OCI_USERNAME", ""),
        password=env.get("OCI_PASSWORD", ""),
        auth_scope=env.get("OCI_AUTH_SCOPE", ""),
        debug=parse_bool(env.get("OCI_DEBUG"))[0],
        tests_to_run=tests_to_run,
        blob_digest=env.get("OCI_BLOB_DIGEST", ""),
        manifest_digest=env.get("OCI_MANIFEST_DIGEST", ""),
        tag_name=env.get("OCI_TAG_NAME", ""),
        tag_list=env.get("OCI_TAG_LIST", ""),
        hide_skipped_workflows=parse_bool(env.get("OCI_HIDE_SKIPPED_WORKFLOWS"))[0],
        delete_manifest_before_blobs=delete_first,
        run_automatic_crossmount_test=automatic_val is not None,
        automatic_crossmount_enabled=parse_bool(automatic_val)[0],
        run_pull_setup=run_pull_setup,
        run_push_setup=True,
        run_content_discovery_setup=not env.get("OCI_TAG_LIST", ""),
        run_content_management_setup=True,
    )
