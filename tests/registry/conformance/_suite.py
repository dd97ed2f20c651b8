"""How the Ginkgo tree of the upstream suite maps onto pytest.

Upstream is one ordered, stateful tree: ``Describe(suite) > Context(workflow) >
Context(group) > Specify(name)``; specs run in order, later ones use what earlier ones
did (an upload session, a tag), and a failing spec does not stop the next. Here each
workflow module registers its specs, in upstream order, in a :class:`SpecList`; one test
function per module is parametrized over that list (ids are ``Workflow :: Group ::
Spec name``), and pytest keeps that order. State that upstream keeps in closure variables
lives in a per-registry :class:`Session`.

``SkipIfDisabled`` / ``RunOnlyIf`` / ``RunOnlyIfNot`` / ``Warn`` behave as upstream's:
skips carry upstream's messages.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from ._client import Client, Response
from ._data import TestData
from ._env import Settings, Workflow

__all__ = [
    "ConformanceWarning",
    "Session",
    "Spec",
    "SpecList",
    "expect_2xx",
    "expect_status_in",
    "get_tag_list",
]

#: Upstream's ``errorCodes``: every code the spec defines.
ERROR_CODES = [
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "MANIFEST_UNVERIFIED",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "TAG_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
]

#: The same title as upstream's suite.
SUITE_DESCRIPTION = "OCI Distribution Conformance Tests"

StateT = TypeVar("StateT")


class ConformanceWarning(UserWarning):
    """Upstream's ``Warn``: something optional the registry does not do."""


@dataclass
class Session:
    """One registry under test: the client, the data, and the specs' shared state."""

    settings: Settings
    client: Client
    data: TestData
    target: str
    _state: dict[type[Any], Any] = field(default_factory=dict)

    def state(self, cls: type[StateT]) -> StateT:
        """The workflow state object of type ``cls`` for this registry (made on first use)."""
        if cls not in self._state:
            self._state[cls] = cls()
        result: StateT = self._state[cls]
        return result

    def skip_if_disabled(self, workflow: Workflow) -> None:
        """Upstream's ``SkipIfDisabled``."""
        if self.settings.disabled(workflow):
            pytest.skip(self.settings.skip_report())

    @staticmethod
    def run_only_if(condition: bool, why: str = "") -> None:
        """Upstream's ``RunOnlyIf``; ``why`` (appended to upstream's message) says which
        condition did not hold."""
        if not condition:
            pytest.skip("you have skipped this test." + (f" ({why})" if why else ""))

    @staticmethod
    def run_only_if_not(condition: bool, why: str = "") -> None:
        """Upstream's ``RunOnlyIfNot``; ``why`` as for :meth:`run_only_if`."""
        if condition:
            pytest.skip("you have skipped this test." + (f" ({why})" if why else ""))

    @staticmethod
    def warn(message: str) -> None:
        """Upstream's ``Warn``: reported in pytest's warnings summary."""
        warnings.warn(f"WARNING: {message}", ConformanceWarning, stacklevel=2)


@dataclass(frozen=True)
class Spec:
    """One upstream ``Specify``: where it sits in the tree and what it does."""

    workflow: Workflow
    title: str
    context: str
    name: str
    func: Callable[[Session], None]

    @property
    def id(self) -> str:
        """``Workflow :: Group :: Spec name`` (the test id)."""
        return f"{self.title} :: {self.context} :: {self.name}"

    def run(self, session: Session) -> None:
        """Run the spec against ``session``'s registry."""
        self.func(session)


class SpecList:
    """The ordered specs of one workflow: ``@specs("Group", "name") def f(s): ...``."""

    def __init__(self, workflow: Workflow, title: str) -> None:
        self.workflow = workflow
        self.title = title
        self.items: list[Spec] = []

    def __call__(
        self, context: str, name: str
    ) -> Callable[[Callable[[Session], None]], Callable[[Session], None]]:
        """Register the decorated function as the next spec."""

        def register(func: Callable[[Session], None]) -> Callable[[Session], None]:
            self.items.append(Spec(self.workflow, self.title, context, name, func))
            return func

        return register

    @property
    def ids(self) -> list[str]:
        """The test ids, in order; a name upstream repeats in the same group (its setup has
        two "Populate registry with test blob") gets `` #2``, `` #3``... after the first."""
        seen: dict[str, int] = {}
        ids = []
        for spec in self.items:
            seen[spec.id] = seen.get(spec.id, 0) + 1
            ids.append(spec.id if seen[spec.id] == 1 else f"{spec.id} #{seen[spec.id]}")
        return ids


def expect_2xx(resp: Response, note: str = "") -> None:
    """``SatisfyAll(BeNumerically(">=", 200), BeNumerically("<", 300))``."""
    if not 200 <= resp.status_code < 300:
        raise AssertionError(f"expected a 2xx status{': ' + note if note else ''}; got {resp.describe()}")


def expect_status_in(resp: Response, *allowed: int, allow_2xx: bool = False) -> None:
    """``SatisfyAny(Equal(a), Equal(b), ...)``, optionally with any 2xx."""
    if resp.status_code in allowed or (allow_2xx and 200 <= resp.status_code < 300):
        return
    wanted = (["2xx"] if allow_2xx else []) + [str(code) for code in allowed]
    raise AssertionError(f"expected status in {{{', '.join(wanted)}}}; got {resp.describe()}")


def get_tag_list(resp: Response) -> list[str]:
    """Upstream's ``getTagList``: the ``tags`` of a tags/list body, ``[]`` if unparsable."""
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    tags = doc.get("tags")
    if not isinstance(tags, list):
        return []
    return [str(tag) for tag in tags]


def get_index_manifests(resp: Response) -> list[dict[str, Any]]:
    """``json.Unmarshal(resp.Body(), &index)`` then ``index.Manifests``.

    Raises:
        AssertionError: the body is not JSON of an index shape (upstream asserts the
            unmarshal error is nil).
    """
    try:
        doc = json.loads(resp.body)
    except ValueError as exc:
        raise AssertionError(f"response is not JSON: {resp.describe()}") from exc
    if not isinstance(doc, dict):
        raise AssertionError(f"response is not a JSON object: {resp.describe()}")
    manifests = doc.get("manifests") or []
    if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
        raise AssertionError(f"index 'manifests' is not a list of descriptors: {resp.describe()}")
    return manifests
