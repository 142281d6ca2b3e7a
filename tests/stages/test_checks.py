from __future__ import annotations

import pytest

from keel.errors import (
    BodyTooLarge,
    EmptyBody,
    EmptyText,
    InputSchemaError,
    InvalidEncoding,
    InvalidJSON,
    InvalidRequest,
    TextTooLong,
)
from keel.spec import FeatureSpec
from keel.stages.checks import build_checks, run_checks
from keel.stages.checks.body import parse_json_object
from keel.types import Call


def feature(**input_spec: object) -> FeatureSpec:
    return FeatureSpec.model_validate({
        "input": input_spec,
        "output": {"kind": "label", "labels": ["a"]},
        "versions": {"v1": {"model": "m"}},
        "aliases": {"champion": "v1"},
    })


def check(spec: FeatureSpec, input: dict[str, object]) -> None:
    run_checks(build_checks(spec), Call("f", input, "t"))


def test_valid_input_passes() -> None:
    check(feature(), {"text": "my card has not arrived"})


@pytest.mark.parametrize(
    ("input", "error", "param"),
    [
        ({}, InputSchemaError, "input"),
        ({"text": 5}, InputSchemaError, "input.text"),
        ({"text": ""}, EmptyText, "input.text"),
        ({"text": "   \n"}, EmptyText, "input.text"),
        ({"text": "x" * 101}, TextTooLong, "input.text"),
        ({"text": "bad \ud800 surrogate"}, InvalidEncoding, "input.text"),
    ],
)
def test_bad_input_is_refused_with_code_and_param(input: dict[str, object], error: type, param: str) -> None:
    with pytest.raises(error) as info:
        check(feature(max_chars=100), input)
    assert info.value.param == param
    assert info.value.status in (400, 413)
    assert info.value.message


def test_schema_message_names_the_field() -> None:
    spec = feature(schema={"type": "object", "required": ["n"],
                           "properties": {"n": {"type": "integer", "minimum": 1}}}, text_field=None)
    with pytest.raises(InputSchemaError, match=r"input\.n: 0 is less than the minimum of 1"):
        check(spec, {"n": 0})


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", EmptyBody),
        (b"  ", EmptyBody),
        (b"{not json", InvalidJSON),
        (b'{"text": "\xff\xfe"}', InvalidEncoding),
        (b"[1, 2]", InvalidRequest),
        (b'"text"', InvalidRequest),
        (b"x" * 2000, BodyTooLarge),
    ],
)
def test_body_parsing_errors(raw: bytes, error: type) -> None:
    with pytest.raises(error):
        parse_json_object(raw, limit=1000)


def test_body_parsing_accepts_an_object() -> None:
    assert parse_json_object(b'{"input": {"text": "hi"}}', 1000) == {"input": {"text": "hi"}}
