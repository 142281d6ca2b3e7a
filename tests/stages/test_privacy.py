"""A feature's privacy policy: what its events and review items keep (keel.stages.privacy)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from keel.errors import ConfigError
from keel.gateway import Keel
from keel.spec import parse_spec
from keel.stages.privacy import Policy, Sanitizer, redact_value
from keel.stages.scrub import Scrubber
from keel.types import Completion, Decision, Event, OnFail, ReviewRequest, Usage, ValidationResult
from tests.conftest import basic_feature, scripted, settings_in, spec_with

TEXT = "Mail jane.doe@example.com or call +44 20 7946 0958 about order 881"
MASKED = "Mail [EMAIL] or call [PHONE] about order 881"


def event(**overrides: Any) -> Event:
    fields: dict[str, Any] = dict(
        trace_id="t1", ts=1.0, feature="f", version="v1", decision=Decision.ACCEPTED,
        confidence=0.9, latency_ms=1.0, timings_ms={}, input_tokens=1, output_tokens=1,
        cost_usd=0.0, attempts=[], input={"text": TEXT}, output={"reply": TEXT},
        validations=[ValidationResult("pii", False, OnFail.REPAIR, f"found in {TEXT}",
                                      repaired={"reply": TEXT})],
        reason=f"because {TEXT}")
    fields.update(overrides)
    return Event(**fields)


def test_redact_value_masks_personal_data_in_every_string() -> None:
    value = {"a": [TEXT, 3, None], "b": {"c": "nothing here"}}
    assert redact_value(value) == {"a": [MASKED, 3, None], "b": {"c": "nothing here"}}
    clean = {"b": {"c": "nothing here"}}
    assert redact_value(clean) is clean


def test_full_keeps_everything_but_secrets() -> None:
    sanitize = Sanitizer(Scrubber(), {"f": Policy()})
    e = event(input={"text": TEXT + " password=hunter22"})
    out = sanitize(e)
    assert isinstance(out, Event)
    assert out.input == {"text": TEXT + " password=[SECRET]"} and out.output == {"reply": TEXT}
    assert e.input == {"text": TEXT + " password=hunter22"}  # the caller's objects are not touched
    clean = event()
    assert sanitize(clean) is clean  # nothing to change: nothing copied


def test_redacted_and_none_reach_every_copy_of_the_text() -> None:
    sanitize = Sanitizer(Scrubber(), {"f": Policy("redacted", "none")})
    out = sanitize(event())
    assert isinstance(out, Event)
    assert out.input == {"text": MASKED} and out.output is None
    (validation,) = out.validations
    assert validation.repaired is None and validation.message == f"found in {MASKED}"
    assert out.reason == f"because {MASKED}"
    only_phones = Sanitizer(Scrubber(), {"f": Policy("redacted", "full", ("phone",))})
    kept = only_phones(event())
    assert isinstance(kept, Event)
    assert kept.input == {"text": "Mail jane.doe@example.com or call [PHONE] about order 881"}
    assert kept.output == {"reply": TEXT}


def test_review_items_keep_payloads_masked_unless_full() -> None:
    item = ReviewRequest("t1", 1.0, "f", "v1", "deferred", 0.4, "low", {"text": TEXT},
                         {"reply": TEXT}, [])
    masked = Sanitizer(Scrubber(), {"f": Policy("none", "none")})(item)
    assert isinstance(masked, ReviewRequest)
    assert masked.input == {"text": MASKED} and masked.output == {"reply": MASKED}
    assert Sanitizer(Scrubber(), {"f": Policy()})(item) is item


def test_privacy_block_in_keel_yaml() -> None:
    spec = spec_with(basic_feature(privacy={"store_input": "redacted", "store_output": "none",
                                            "kinds": ["email"]}))
    privacy = spec.features["f"].privacy
    assert Policy.of(privacy) == Policy("redacted", "none", ("email",))
    with pytest.raises(ConfigError):
        parse_spec({"features": {"f": {**basic_feature(), "privacy": {"store_input": "hashed"}}}})


async def test_policy_applies_to_stored_events_and_reviews(tmp_path: Path) -> None:
    spec = spec_with(basic_feature(privacy={"store_input": "redacted", "store_output": "none"},
                                   policy={"accept_at": 0.95, "refuse_below": 0.1}))
    async with Keel(spec, settings_in(tmp_path)) as keel:
        scripted(keel, "p1").script = [Completion({"label": "a"}, 0.5, Usage(1, 1))]
        outcome = await keel.call("f", {"text": TEXT})
        assert outcome.decision is Decision.REVIEW and outcome.output == {"label": "a"}
        assert keel.writer.flush()
        (stored,) = keel.store.recent_events()
        with keel.store.connection() as conn:
            review = dict(conn.execute("SELECT input, output FROM review_items").fetchone())
    assert stored["input"] == {"text": MASKED} and stored["output"] is None
    assert review == {"input": '{"text":"' + MASKED + '"}', "output": '{"label":"a"}'}


async def test_store_payloads_off_still_wins(tmp_path: Path) -> None:
    spec = spec_with(basic_feature(privacy={"store_input": "full"}))
    settings = dataclasses.replace(settings_in(tmp_path), store_payloads=False)
    async with Keel(spec, settings) as keel:
        await keel.call("f", {"text": TEXT})
        assert keel.writer.flush()
        (stored,) = keel.store.recent_events()
    assert stored["input"] is None and stored["output"] is None
