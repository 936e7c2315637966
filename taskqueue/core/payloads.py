"""What JSON taskqueue can store, checked before any SQL so a bad value fails in the caller.

Payloads and metadata are checked at enqueue, results in the worker before they are
written. A value that PostgreSQL or SQLite could not store, or could not give back exactly,
is refused with ``InvalidPayload`` naming its key path and the problem:

- a NUL character (``"\\x00"``) in a string or a key: PostgreSQL's ``jsonb`` and ``text``
  reject it;
- a lone surrogate (``"\\ud800"``): not valid Unicode, so it cannot be encoded as UTF-8;
- an integer outside the signed 64-bit range: SQLite's JSON functions and most JSON readers
  turn it into an inexact float (and Python refuses to print one of over 4,300 digits);
- a float that is NaN or infinite: JSON has no spelling for it;
- nesting deeper than ``MAX_DEPTH`` lists and objects;
- anything that is not a string, number, boolean, None, list or dict.

Error messages and tracebacks are text the worker must store whatever a handler raised:
``storable_text`` escapes what the database would refuse instead of refusing it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from taskqueue.exceptions import InvalidPayload, PayloadTooLarge

# Lists and objects inside each other, counting the outermost as 1. Deep enough for any
# real document, shallow enough that no reader (json, psycopg, the admin) runs out of stack.
MAX_DEPTH = 100
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
# What the database cannot store in a string: NUL, and lone surrogates (U+D800..U+DFFF).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _string_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored, or None when it can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    position = found.start()
    if char == "\x00":
        return (
            f"contains a NUL character (\\x00) at position {position}, "
            "which the database cannot store"
        )
    return (
        f"contains a lone surrogate (\\u{ord(char):04x}) at position {position}, "
        "which is not valid Unicode text"
    )


class _Unstorable(Exception):
    """Internal: what is wrong, and the keys and indexes leading to it (innermost first)."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.steps: list[str | int] = []


def check_json(value: Any, path: str = "payload", _depth: int = 0) -> None:
    """Raise ``InvalidPayload`` naming the first key path whose value cannot be stored."""
    try:
        _check(value, _depth)
    except _Unstorable as exc:
        steps = "".join(
            f"[{step}]" if isinstance(step, int) else f"[{short_repr(step)}]"
            for step in reversed(exc.steps)
        )
        raise InvalidPayload(f"{path}{steps} {exc.problem}") from None


def _check(value: Any, depth: int) -> None:
    # The key path is assembled only on failure: valid payloads (nearly all) pay nothing.
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        problem = _string_problem(value)
        if problem is not None:
            raise _Unstorable(problem)
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            # Never format the number itself: Python refuses to print one of 4,300+ digits.
            raise _Unstorable(
                f"is an integer of {value.bit_length()} bits, outside the 64-bit range "
                f"{INT_MIN}..{INT_MAX} that the database keeps exactly: pass it as a string"
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Unstorable(f"is {value!r}, which JSON cannot represent")
        return
    # Only dict, not any Mapping: json.dumps (and so the database adapter) encodes no other.
    if isinstance(value, dict | list | tuple):
        if depth >= MAX_DEPTH:
            raise _Unstorable(
                f"is nested more than {MAX_DEPTH} lists and objects deep "
                "(the most taskqueue stores)"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _Unstorable(
                        f"has a key {short_repr(key)} of type {type(key).__name__}: "
                        "JSON object keys must be strings"
                    )
                problem = _string_problem(key)
                if problem is not None:
                    raise _Unstorable(f"has a key {short_repr(key)} that {problem}")
                try:
                    _check(item, depth + 1)
                except _Unstorable as exc:
                    exc.steps.append(key)
                    raise
            return
        for index, item in enumerate(value):
            try:
                _check(item, depth + 1)
            except _Unstorable as exc:
                exc.steps.append(index)
                raise
        return
    raise _Unstorable(
        f"is a {type(value).__module__}.{type(value).__qualname__}, which is not "
        "JSON serialisable: pass strings, numbers, booleans, None, lists and dicts "
        "(for example an ISO date string or a primary key instead of an object)"
    )


def short_repr(value: Any, limit: int = 60) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters, for error messages; never fails."""
    if isinstance(value, int) and value.bit_length() > 200:
        # Printing it would be long and slow, and past 4,300 digits Python refuses.
        return f"<{type(value).__name__} of {value.bit_length()} bits>"
    try:
        text = repr(value)
    except Exception:  # a repr that raises must not hide the problem being reported
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


_short_repr = short_repr


def encoded_size(payload: Mapping[str, Any]) -> int:
    return len(json.dumps(payload, separators=(",", ":")).encode())


def check_payload(payload: Any, max_bytes: int, what: str = "payload") -> dict[str, Any]:
    """Return ``payload`` as a dict after checking its shape, storability and size."""
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise InvalidPayload(
            f"{what} must be a dict of keyword arguments, got {type(payload).__name__}"
            if what == "payload"
            else f"{what} must be a dict, got {type(payload).__name__}"
        )
    # A copy, so a Mapping that is not a dict is encodable and later changes by the caller
    # cannot slip past the checks.
    payload = dict(payload)
    check_json(payload, what)
    size = encoded_size(payload)
    if size > max_bytes:
        raise PayloadTooLarge(
            f"{what} is {size} bytes once encoded, over the {max_bytes}-byte cap "
            "(TASKQUEUE['MAX_PAYLOAD_BYTES']): store large data elsewhere and pass a reference"
        )
    return payload


def storable_text(text: str) -> str:
    """Return ``text`` with what the database cannot store escaped (NUL, lone surrogates).

    For error messages and tracebacks: whatever a handler raised must be recordable.
    """
    if _UNSTORABLE.search(text) is None:
        return text
    text = text.replace("\x00", "\\x00")
    # Lone surrogates become \udXXX escapes; everything else is unchanged.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
