"""Per-item scorers: good, bad and edge cases of each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from keel.control.scorers import (
    ExactMatch,
    JsonValid,
    Judge,
    LabelMatch,
    Regex,
    Similarity,
    build_scorers,
    default_scorers,
    judge_via_keel,
    judge_via_provider,
    parse_judge_score,
)
from keel.errors import ConfigError, VersionNotFound
from keel.gateway import Keel
from keel.testing import FakeUpstream
from keel.types import Completion, Usage
from tests.conftest import scripted, settings_in, spec_with

X: dict[str, object] = {"text": "x"}


async def test_label() -> None:
    s = LabelMatch()
    assert await s.score(X, {"label": "a"}, {"label": "a"}) == 1.0
    assert await s.score(X, "a", {"label": "a"}) == 1.0  # a bare expected label
    assert await s.score(X, {"label": "a"}, {"label": "b"}) == 0.0
    assert await s.score(X, {"label": "a"}, None) == 0.0  # the call failed: wrong
    assert await s.score(X, {"label": "a"}, {"label": "A"}) == 0.0  # labels are exact
    assert await s.score(X, None, {"label": "a"}) is None  # nothing expected
    assert await s.score(X, {"text": "a"}, {"label": "a"}) is None  # not a label


async def test_exact_match() -> None:
    s = ExactMatch()
    assert await s.score(X, {"b": [1, 2], "a": 1}, {"a": 1, "b": [1, 2]}) == 1.0  # key order
    assert await s.score(X, {"a": 1}, {"a": 1.5}) == 0.0
    assert await s.score(X, {"a": [1, 2]}, {"a": [2, 1]}) == 0.0  # list order matters
    assert await s.score(X, "Hello  World ", {"text": "hello world"}) == 1.0  # folded text
    assert await s.score(X, {"text": "Paris"}, {"text": " paris\n"}) == 1.0
    assert await s.score(X, "Paris", {"role": "assistant", "content": "Paris"}) == 1.0  # chat
    assert await s.score(X, "Paris", {"text": "Paris, France"}) == 0.0
    assert await s.score(X, "a", {"label": "a"}) == 1.0
    assert await s.score(X, None, {"text": "x"}) is None
    assert await s.score(X, "x", None) == 0.0


async def test_regex() -> None:
    s = Regex(r"^\d{3}-\d{4}$")
    assert await s.score(X, None, {"text": "555-1234"}) == 1.0
    assert await s.score(X, None, {"text": "call 555-1234"}) == 0.0
    assert await s.score(X, None, None) == 0.0
    assert await Regex("refund").score(X, None, {"label": "refund_request"}) == 1.0
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        Regex("(")


async def test_json_valid() -> None:
    json_kind = JsonValid("json")
    assert await json_kind.score(X, None, {"a": 1}) == 1.0
    assert await json_kind.score(X, None, [1, 2]) == 1.0
    assert await json_kind.score(X, None, "{not json") == 0.0  # a json output that did not parse
    assert await json_kind.score(X, None, None) == 0.0
    text_kind = JsonValid("text")
    assert await text_kind.score(X, None, {"text": '{"a": 1}'}) == 1.0
    assert await text_kind.score(X, None, {"text": "sure! {a: 1}"}) == 0.0
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    with_schema = JsonValid("json", schema)
    assert await with_schema.score(X, None, {"a": 1}) == 1.0
    assert await with_schema.score(X, None, {"a": "1"}) == 0.0
    assert await with_schema.score(X, None, {"b": 1}) == 0.0
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        JsonValid("json", {"type": "nope"})


async def test_similarity_is_the_cosine_clipped_to_0_1() -> None:
    vectors = {"cat": [1.0, 0.0], "kitten": [0.8, 0.6], "dog": [0.0, 1.0], "anti": [-1.0, 0.0],
               "zero": [0.0, 0.0]}
    seen: list[list[str]] = []

    async def embed(texts: list[str]) -> npt.NDArray[np.float32]:
        seen.append(texts)
        return np.asarray([vectors[t] for t in texts], dtype=np.float32)

    s = Similarity(embed)
    assert await s.score(X, "cat", {"text": "cat"}) == pytest.approx(1.0)
    assert await s.score(X, {"text": "cat"}, {"text": "kitten"}) == pytest.approx(0.8)
    assert await s.score(X, "cat", {"text": "dog"}) == pytest.approx(0.0)
    assert await s.score(X, "cat", {"text": "anti"}) == 0.0  # opposite: clipped, not -1
    assert await s.score(X, "cat", {"text": "zero"}) == 0.0  # no direction: no similarity
    assert await s.score(X, "cat", None) == 0.0
    assert await s.score(X, None, {"text": "cat"}) is None
    assert seen[1] == ["kitten", "cat"]


@pytest.mark.parametrize(("answer", "scale", "score"), [
    ("Score: 4", "1-5", 0.75),
    ("score: 5 — fully correct", "1-5", 1.0),
    ("Rating = 1. The answer is wrong.", "1-5", 0.0),
    ('{"score": 3, "why": "partly"}', "1-5", 0.5),
    ("I'd give it 4/5.", "1-5", 0.8),
    ("8 out of 10", "1-5", 0.8),
    ("3", "1-5", 0.5),
    ("I give it a 4.", "1-5", 0.75),
    ("The answer deserves a 2 because it misses the date.", "1-5", 0.25),
    ("score: 0.7", "0-1", 0.7),
    ("0.25", "0-1", 0.25),
    ("Grade: 9/10", "0-1", 0.9),
    ("Score: 7", "1-5", None),  # off the scale: no guess
    ("score: 2", "0-1", None),
    ("no idea", "1-5", None),
    ("", "1-5", None),
])
def test_parse_judge_score(answer: str, scale: str, score: float | None) -> None:
    got = parse_judge_score(answer, scale)  # type: ignore[arg-type]
    assert got == (None if score is None else pytest.approx(score))


async def test_judge_fills_the_prompt_and_reads_the_answer() -> None:
    prompts: list[str] = []

    async def ask(prompt: str) -> str:
        prompts.append(prompt)
        return "Score: 5. Matches." if "Paris" in prompt.split("Answer to grade:")[1] else "Score: 1"

    judge = Judge(ask)
    question = {"text": "capital of France?"}
    assert await judge.score(question, "Paris", {"text": "Paris"}) == 1.0
    assert await judge.score(question, "Paris", {"text": "Lyon"}) == 0.0
    assert await judge.score(question, None, None) == 0.0  # failed call: not asked
    assert len(prompts) == 2
    assert "capital of France?" in prompts[0] and "Reference answer:\nParis" in prompts[0]
    assert await judge.score(question, None, {"text": "Paris"}) == 1.0
    assert "Reference answer:\n(none)" in prompts[-1]


async def test_judge_through_a_feature_of_the_keel_app(tmp_path: Path) -> None:
    spec = spec_with({"output": {"kind": "text"},
                      "versions": {"j1": {"provider": "p1", "model": "judge-model"}},
                      "aliases": {"champion": "j1"}})
    async with Keel(spec, settings_in(tmp_path)) as keel:
        provider = scripted(keel, "p1")
        provider.script = [Completion(output={"text": "Score: 4 - close"}, usage=Usage(50, 5))]
        ask = judge_via_keel(keel, "f")
        assert await Judge(ask).score({"text": "q"}, "a", {"text": "a"}) == 0.75
        (request,) = provider.requests
        assert request.version == "j1" and "Answer to grade:\na" in request.input["text"]
        keel.writer.flush()
        assert keel.store.count_events() == 0  # judge calls are pinned: not live traffic
        with pytest.raises(VersionNotFound):
            judge_via_keel(keel, "f", "nope")


async def test_judge_straight_through_a_provider() -> None:
    def grade(body: dict[str, object]) -> str:
        messages = body["messages"]
        assert isinstance(messages, list)
        return "Score: 2" if "Lyon" in str(messages[-1]) else "Score: 5"

    from keel.providers import build_provider
    from keel.spec import ProviderSpec

    with FakeUpstream(reply=grade) as up:
        provider = build_provider("judge", ProviderSpec(type="openai", base_url=up.base_url))
        await provider.start()
        try:
            judge = Judge(judge_via_provider(provider, "fake-model"))
            assert await judge.score({"text": "q"}, "Paris", {"text": "Lyon"}) == 0.25
            assert await judge.score({"text": "q"}, "Paris", {"text": "Paris"}) == 1.0
        finally:
            await provider.close()


def test_build_scorers_from_names(tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object"}))
    built = build_scorers(["label", "exact_match", "regex=^a", f"json_valid={schema}"], kind="json")
    assert [s.name for s in built] == ["label", "exact_match", "regex", "json_valid"]
    assert isinstance(built[3], JsonValid) and built[3].schema == {"type": "object"}
    with pytest.raises(ConfigError, match="unknown scorer 'bleu'"):
        build_scorers(["bleu"], kind="text")
    with pytest.raises(ConfigError, match="regex=PATTERN"):
        build_scorers(["regex"], kind="text")
    with pytest.raises(ConfigError, match="local embeddings"):
        build_scorers(["similarity"], kind="text")
    with pytest.raises(ConfigError, match="judge=FEATURE"):
        build_scorers(["judge"], kind="text")
    with pytest.raises(ConfigError, match="schema file not found"):
        build_scorers(["json_valid=/nope.json"], kind="json")
    with pytest.raises(ConfigError, match="given twice"):
        build_scorers(["label", "label"], kind="label")


def test_default_scorers_by_output_kind() -> None:
    assert default_scorers("label", embeddings=True) == ["label"]
    assert default_scorers("json", embeddings=True) == ["exact_match", "json_valid"]
    assert default_scorers("text", embeddings=True) == ["exact_match", "similarity"]
    assert default_scorers("chat", embeddings=False) == ["exact_match"]
