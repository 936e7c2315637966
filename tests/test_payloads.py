"""Payload checks at enqueue time: JSON-only values named by key path, size cap, shape."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import types
import uuid
from collections import OrderedDict
from typing import Any

import pytest

from taskqueue.core.payloads import (
    MAX_DEPTH,
    check_json,
    check_payload,
    encoded_size,
    short_repr,
    storable_text,
)
from taskqueue.exceptions import InvalidPayload, PayloadTooLarge

CAP = 1_000_000


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"s": "text", "i": 1, "f": 1.5, "t": True, "n": None},
        {"nested": {"list": [1, "two", [3.0, {"four": None}]]}},
        {"tuple": (1, 2)},
        {"big": 2**63 - 1, "small": -(2**63), "neg": -0.0},
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


# --- what the database cannot store or give back --------------------------------------------


def nested(levels: int) -> Any:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"note": "a\x00b"},
            "payload['note'] contains a NUL character (\\x00) at position 1, "
            "which the database cannot store",
        ),
        (
            {"tags": ["ok", {"k\x00": 1}]},
            "payload['tags'][1] has a key 'k\\x00' that contains a NUL character (\\x00) at "
            "position 1, which the database cannot store",
        ),
        (
            {"text": "x\ud800"},
            "payload['text'] contains a lone surrogate (\\ud800) at position 1, "
            "which is not valid Unicode text",
        ),
        (
            {"\udfff": 1},
            "payload has a key '\\udfff' that contains a lone surrogate (\\udfff) at position 0, "
            "which is not valid Unicode text",
        ),
        (
            {"n": 2**63},
            "payload['n'] is an integer of 64 bits, outside the 64-bit range "
            "-9223372036854775808..9223372036854775807 that the database keeps exactly: "
            "pass it as a string",
        ),
        ({"n": [-(2**63) - 1]}, "payload['n'][0] is an integer of 64 bits, outside"),
        ({"n": 10**5000}, "payload['n'] is an integer of 16610 bits, outside"),
        (
            {"m": types.MappingProxyType({})},
            "payload['m'] is a builtins.mappingproxy, which is not JSON serialisable",
        ),
    ],
)
def test_values_the_database_cannot_store_are_named(payload: Any, message: str) -> None:
    with pytest.raises(InvalidPayload) as info:
        check_payload(payload, CAP)
    assert str(info.value).startswith(message)


def test_valid_unicode_passes() -> None:
    # Astral characters are single code points in Python: only lone halves are refused.
    payload = {"emoji": "\U0001f600", "edges": "\ud7ff\ue000\uffff", "clé": "é"}
    assert check_payload(payload, CAP) == payload


def test_nesting_is_counted_from_the_outermost_container() -> None:
    check_json(nested(MAX_DEPTH))
    with pytest.raises(InvalidPayload) as info:
        check_json(nested(MAX_DEPTH + 1))
    assert str(info.value) == (
        "payload" + "[0]" * MAX_DEPTH + " is nested more than 100 lists and objects deep "
        "(the most taskqueue stores)"
    )


def test_very_deep_and_self_containing_values_are_refused_without_recursion_errors() -> None:
    loop: list[Any] = []
    loop.append(loop)
    for value in (nested(100_000), loop, {"a": {"b": loop}}):
        with pytest.raises(InvalidPayload, match="is nested more than 100"):
            check_payload({"value": value}, CAP)


def test_a_mapping_that_is_not_a_dict_is_copied_at_the_top() -> None:
    payload = types.MappingProxyType({"a": 1})
    assert check_payload(payload, CAP) == {"a": 1}
    assert check_payload(payload, CAP, what="metadata") == {"a": 1}


def test_messages_stay_short_whatever_the_value() -> None:
    long_key = "k" * 10_000 + "\x00"
    with pytest.raises(InvalidPayload) as info:
        check_payload({"outer": {long_key: 1}}, CAP)
    assert len(str(info.value)) < 300
    with pytest.raises(InvalidPayload) as info:
        check_payload({"k" * 10_000: {"x": 2**64}}, CAP)
    assert str(info.value).startswith("payload['kkkk")
    assert len(str(info.value)) < 300


def test_short_repr_never_fails() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    assert short_repr(10**5000) == "<int of 16610 bits>"
    assert short_repr(Broken()) == "<Broken>"
    assert short_repr("x" * 100) == "'" + "x" * 58 + "…"
    assert short_repr("a\x00") == "'a\\x00'"


def test_metadata_uses_its_name_in_messages() -> None:
    with pytest.raises(InvalidPayload, match=r"^metadata\['a'\] contains a NUL"):
        check_payload({"a": "\x00"}, CAP, what="metadata")
    with pytest.raises(PayloadTooLarge, match=r"^metadata is 101 bytes once encoded"):
        check_payload({"data": "x" * 90}, 100, what="metadata")


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("plain ✓", "plain ✓"),
        ("a\x00b", "a\\x00b"),
        ("bad \ud800 half", "bad \\ud800 half"),
        ("\udfff\x00", "\\udfff\\x00"),
    ],
)
def test_storable_text_escapes_what_the_database_refuses(text: str, stored: str) -> None:
    assert storable_text(text) == stored
    assert storable_text(text).encode("utf-8")  # valid UTF-8 now
    assert "\x00" not in storable_text(text)
