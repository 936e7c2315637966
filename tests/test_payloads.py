"""Payload checks at enqueue time: JSON-only values named by key path, size cap, shape."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections import OrderedDict
from typing import Any

import pytest

from taskqueue.exceptions import InvalidPayload, PayloadTooLarge
from taskqueue.payloads import check_json, check_payload, encoded_size

CAP = 1_000_000


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"s": "text", "i": 1, "f": 1.5, "t": True, "n": None},
        {"nested": {"list": [1, "two", [3.0, {"four": None}]]}},
        {"tuple": (1, 2)},
        {"big": 2**70, "neg": -0.0},
        {"unicode": "héllo ✓"},
    ],
)
def test_plain_json_passes_and_is_returned_as_a_dict(payload: dict[str, Any]) -> None:
    result = check_payload(payload, CAP)
    assert result == payload
    assert type(result) is dict


def test_none_payload_is_an_empty_dict() -> None:
    assert check_payload(None, CAP) == {}


def test_mapping_subclass_is_accepted_and_copied() -> None:
    payload = OrderedDict(a=1)
    result = check_payload(payload, CAP)
    assert result == {"a": 1}
    assert type(result) is dict
    result["b"] = 2
    assert "b" not in payload


@pytest.mark.parametrize(
    ("payload", "type_name"),
    [([1, 2], "list"), ("a=1", "str"), (42, "int"), ((("a", 1),), "tuple")],
)
def test_non_dict_payload_is_rejected(payload: Any, type_name: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        check_payload(payload, CAP)
    assert str(info.value) == f"payload must be a dict of keyword arguments, got {type_name}"


@pytest.mark.parametrize(
    ("payload", "path", "type_name"),
    [
        ({"when": dt.date(2024, 1, 1)}, "payload['when']", "datetime.date"),
        ({"a": {"b": [1, {"c": object()}]}}, "payload['a']['b'][1]['c']", "builtins.object"),
        ({"ids": [1, 2, {3}]}, "payload['ids'][2]", "builtins.set"),
        ({"id": uuid.UUID(int=1)}, "payload['id']", "uuid.UUID"),
        ({"amount": decimal.Decimal("1.10")}, "payload['amount']", "decimal.Decimal"),
        ({"raw": b"bytes"}, "payload['raw']", "builtins.bytes"),
        ({"rows": [[1, 2], [3, dt.datetime(2024, 1, 1)]]}, "payload['rows'][1][1]", "datetime"),
    ],
)
def test_value_that_is_not_json_names_its_key_path(payload: Any, path: str, type_name: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        check_payload(payload, CAP)
    message = str(info.value)
    assert message.startswith(f"{path} is a {type_name}")
    assert "not JSON serialisable" in message


def test_first_offending_key_is_reported() -> None:
    payload = {"ok": 1, "first": object(), "second": object()}
    with pytest.raises(InvalidPayload, match=r"^payload\['first'\] is a builtins\.object"):
        check_payload(payload, CAP)


@pytest.mark.parametrize(
    ("value", "shown"),
    [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")],
)
def test_nan_and_infinity_are_rejected(value: float, shown: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        check_payload({"stats": {"mean": [1.0, value]}}, CAP)
    assert str(info.value) == f"payload['stats']['mean'][1] is {shown}, which JSON cannot represent"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({1: "x"}, "payload has a key 1 of type int: JSON object keys must be strings"),
        (
            {"outer": {("a", "b"): 1}},
            "payload['outer'] has a key ('a', 'b') of type tuple: JSON object keys must be strings",
        ),
        (
            {"list": [{None: 1}]},
            "payload['list'][0] has a key None of type NoneType: JSON object keys must be strings",
        ),
    ],
)
def test_non_string_keys_are_rejected(payload: Any, message: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        check_payload(payload, CAP)
    assert str(info.value) == message


def test_check_json_uses_the_given_path_prefix() -> None:
    check_json({"a": [1, "b"]}, "metadata")
    with pytest.raises(InvalidPayload, match=r"^metadata\['a'\]\[0\] is a builtins.object"):
        check_json({"a": [object()]}, "metadata")


def test_encoded_size_is_compact_utf8_json() -> None:
    payload = {"a": [1, 2], "b": "x"}
    assert encoded_size(payload) == len('{"a":[1,2],"b":"x"}')
    assert encoded_size(payload) == len(json.dumps(payload, separators=(",", ":")))


def test_payload_exactly_at_the_cap_passes_and_one_byte_more_fails() -> None:
    payload = {"data": "x" * 90}
    size = encoded_size(payload)
    assert size == 101  # {"data":"xxx..."}: 11 bytes of framing
    assert check_payload(payload, size) == payload
    with pytest.raises(PayloadTooLarge) as info:
        check_payload(payload, size - 1)
    assert str(info.value).startswith(
        "payload is 101 bytes once encoded, over the 100-byte cap (TASKQUEUE['MAX_PAYLOAD_BYTES'])"
    )


def test_payload_too_large_is_an_invalid_payload() -> None:
    with pytest.raises(InvalidPayload):
        check_payload({"data": "x" * 200}, 100)


def test_shape_is_checked_before_size() -> None:
    # A value that is not JSON cannot be sized: the caller hears about the value.
    with pytest.raises(InvalidPayload) as info:
        check_payload({"data": "x" * 200, "when": dt.date(2024, 1, 1)}, 10)
    assert not isinstance(info.value, PayloadTooLarge)
    assert "payload['when']" in str(info.value)
