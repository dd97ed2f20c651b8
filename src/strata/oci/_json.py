"""Typed access to parsed JSON objects, raising InvalidContent with the field's path.

Private to ``strata.oci``: JSON enters as bytes, is checked here field by field, and leaves
as dataclasses.  Also the canonical encoder (compact separators, UTF-8, no HTML escaping).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import cast

from strata.errors import InvalidContent

JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]
JSONObject = dict[str, JSONValue]


def loads_object(raw: bytes | str, what: str) -> JSONObject:
    """Parse ``raw`` as a JSON object.

    Raises:
        InvalidContent: not JSON, or not an object.
    """
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidContent(f"malformed {what}: {exc}", path=what) from exc
    if not isinstance(value, dict):
        raise InvalidContent(f"malformed {what}: expected a JSON object", path=what)
    return cast(JSONObject, value)


def dumps(value: object) -> bytes:
    """Canonical JSON bytes: compact, key order as given, UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _fail(what: str, key: str, expected: str) -> InvalidContent:
    return InvalidContent(f"malformed {what}: field {key!r} must be {expected}", path=what)


def get_str(obj: Mapping[str, JSONValue], key: str, what: str, default: str | None = None) -> str:
    value = obj.get(key)
    if value is None:
        if default is None:
            raise InvalidContent(f"malformed {what}: missing field {key!r}", path=what)
        return default
    if not isinstance(value, str):
        raise _fail(what, key, "a string")
    return value


def opt_str(obj: Mapping[str, JSONValue], key: str, what: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(what, key, "a string")
    return value


def get_int(obj: Mapping[str, JSONValue], key: str, what: str, default: int | None = None) -> int:
    value = obj.get(key)
    if value is None:
        if default is None:
            raise InvalidContent(f"malformed {what}: missing field {key!r}", path=what)
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(what, key, "an integer")
    return value


def opt_int(obj: Mapping[str, JSONValue], key: str, what: str) -> int | None:
    if obj.get(key) is None:
        return None
    return get_int(obj, key, what)


def opt_bool(obj: Mapping[str, JSONValue], key: str, what: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _fail(what, key, "a boolean")
    return value


def get_list(obj: Mapping[str, JSONValue], key: str, what: str) -> list[JSONValue]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(what, key, "an array")
    return value


def get_object(obj: Mapping[str, JSONValue], key: str, what: str) -> JSONObject | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(what, key, "an object")
    return value


def as_object(value: JSONValue, what: str) -> JSONObject:
    if not isinstance(value, dict):
        raise InvalidContent(f"malformed {what}: expected an object", path=what)
    return value


def str_list(obj: Mapping[str, JSONValue], key: str, what: str) -> tuple[str, ...] | None:
    """A list of strings; None when the field is absent or null."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        # Docker accepts a bare string for Cmd/Entrypoint/Shell in some configs.
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(what, key, "an array of strings")
    return tuple(cast(Sequence[str], value))


def str_map(obj: Mapping[str, JSONValue], key: str, what: str) -> dict[str, str] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _fail(what, key, "an object of strings")
    return cast(dict[str, str], dict(value))


def key_set(obj: Mapping[str, JSONValue], key: str, what: str) -> tuple[str, ...] | None:
    """A JSON ``{"k": {}, ...}`` set (ExposedPorts, Volumes) as its sorted keys."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(what, key, "an object")
    return tuple(sorted(value))
