"""strata.build: build images from Dockerfiles (parser, expansion, context, stages, executor, cache)."""

from __future__ import annotations

from .builder import BuildOptions as BuildOptions
from .builder import BuildRequest as BuildRequest
from .builder import BuildResult as BuildResult
from .builder import build as build
from .builder import parse_secret as parse_secret
from .cache import BuildCache as BuildCache
from .context import Context as Context
from .dockerfile import Dockerfile as Dockerfile
from .dockerfile import Heredoc as Heredoc
from .dockerfile import Instruction as Instruction
from .dockerfile import Stage as Stage
from .dockerfile import parse as parse_dockerfile
from .executor import BaseImage as BaseImage
from .executor import BuildEvent as BuildEvent
from .executor import BuildProgress as BuildProgress
from .executor import BuildSettings as BuildSettings
from .executor import BuildStepFailed as BuildStepFailed
from .expand import EXPANDING_INSTRUCTIONS as EXPANDING_INSTRUCTIONS
from .expand import expand as expand
from .expand import expand_words as expand_words
from .ignore import IgnoreRules as IgnoreRules
from .output import OutputSpec as OutputSpec

__all__: list[str] = [
    "EXPANDING_INSTRUCTIONS",
    "BaseImage",
    "BuildCache",
    "BuildEvent",
    "BuildOptions",
    "BuildProgress",
    "BuildRequest",
    "BuildResult",
    "BuildSettings",
    "BuildStepFailed",
    "Context",
    "OutputSpec",
    "build",
    "parse_secret",
    "Dockerfile",
    "Heredoc",
    "IgnoreRules",
    "Instruction",
    "Stage",
    "expand",
    "expand_words",
    "parse_dockerfile",
]
