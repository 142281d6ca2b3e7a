from __future__ import annotations

import asyncio

from keel.spec import FeatureSpec
from keel.stages.validate import build_validators, run_validators
from keel.stages.validate.json_schema import extract_json
from keel.types import OnFail


def validators(*specs: dict[str, object], labels: list[str] | None = None) -> FeatureSpec:
    return FeatureSpec.model_validate({
        "output": {"kind": "label" if labels else "json", "labels": labels},
        "versions": {"v1": {"model": "m"}},
        "aliases": {"champion": "v1"},
        "validators": list(specs),
    })


def run(spec: FeatureSpec, output: object) -> tuple[list, object]:
    return asyncio.run(run_validators(build_validators(spec), output))


def test_allowed_labels_pass_and_fail() -> None:
    spec = validators({"type": "allowed_labels", "on_fail": "refuse"}, labels=["card_arrival", "refund"])
    (ok,), _ = run(spec, {"label": "refund"})
    assert ok.passed
    (bad,), _ = run(spec, {"label": "pizza"})
    assert not bad.passed and bad.on_fail is OnFail.REFUSE and "'pizza'" in (bad.message or "")
    (none,), _ = run(spec, "free text")
    assert not none.passed


def test_allowed_labels_repair_maps_near_misses() -> None:
    spec = validators({"type": "allowed_labels", "on_fail": "repair"}, labels=["card_arrival"])
    (result,), output = run(spec, {"label": "Card Arrival"})
    assert not result.passed
    assert output == {"label": "card_arrival"}
    (result,), output = run(spec, {"label": "something else"})
    assert result.repaired is None and output == {"label": "something else"}


def test_json_schema_validates_and_repairs_fenced_json() -> None:
    schema = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}}
    spec = validators({"type": "json_schema", "schema": schema, "on_fail": "repair"})
    (ok,), _ = run(spec, {"answer": "yes"})
    assert ok.passed
    (wrong,), _ = run(spec, {"answer": 3})
    assert not wrong.passed and wrong.repaired is None
    (fixed,), output = run(spec, 'Sure! ```json\n{"answer": "yes"}\n```')
    assert not fixed.passed and output == {"answer": "yes"}


def test_extract_json_from_chatty_text() -> None:
    assert extract_json('The result is {"a": 1} as requested') == {"a": 1}
    assert extract_json("no json here") is None


def test_regex_and_length() -> None:
    spec = validators(
        {"type": "regex", "pattern": r"^\d{4}$", "field": "code", "on_fail": "review"},
        {"type": "length", "max_chars": 4, "field": "code", "on_fail": "repair"},
    )
    results, _ = run(spec, {"code": "1234"})
    assert all(r.passed for r in results)
    results, output = run(spec, {"code": "12345"})
    assert [r.passed for r in results] == [False, False]
    assert output == {"code": "1234"}  # truncated by the length repair


def test_regex_must_not_match() -> None:
    spec = validators({"type": "regex", "pattern": "(?i)password", "must_match": False, "on_fail": "refuse"})
    (ok,), _ = run(spec, "all good")
    assert ok.passed
    (bad,), _ = run(spec, "your Password is hunter2")
    assert not bad.passed
