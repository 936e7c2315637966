"""Payload checks done at enqueue time, so a bad payload fails in the caller, not the worker."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from taskqueue.exceptions import InvalidPayload, PayloadTooLarge


def check_json(value: Any, path: str = "payload") -> None:
    """Raise ``InvalidPayload`` naming the first key path whose value is not plain JSON."""
    if value is None or isinstance(value, str | bool):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidPayload(f"{path} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidPayload(
                    f"{path} has a key {key!r} of type {type(key).__name__}: "
                    "JSON object keys must be strings"
                )
            check_json(item, f"{path}[{key!r}]")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json(item, f"{path}[{index}]")
        return
    raise InvalidPayload(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which is not "
        "JSON serialisable: pass strings, numbers, booleans, None, lists and dicts "
        "(for example an ISO date string or a primary key instead of an object)"
    )


def encoded_size(payload: Mapping[str, Any]) -> int:
    return len(json.dumps(payload, separators=(",", ":")).encode())


def check_payload(payload: Any, max_bytes: int) -> dict[str, Any]:
    """Return ``payload`` as a dict after checking its shape, JSON-ness and size."""
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise InvalidPayload(
            f"payload must be a dict of keyword arguments, got {type(payload).__name__}"
        )
    check_json(payload)
    size = encoded_size(payload)
    if size > max_bytes:
        raise PayloadTooLarge(
            f"payload is {size} bytes once encoded, over the {max_bytes}-byte cap "
            "(TASKQUEUE['MAX_PAYLOAD_BYTES']): store large data elsewhere and pass a reference"
        )
    return dict(payload)
