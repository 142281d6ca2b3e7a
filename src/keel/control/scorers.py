"""Per-item scorers of an eval run: each compares one output with what was expected.

A scorer has a ``name`` and an async ``score(input, expected, output)`` returning a float
in [0, 1], or None when it does not apply (no expected answer, a judge that gave no
readable score). ``output`` is None when the call failed: scorers that can judge the item
then score 0, so a version that errs never looks better than one that answers.

=================  ==========================================================================
``label``          expected ``{"label": x}`` or ``"x"`` vs the output's label (classification)
``exact_match``    canonical JSON equality; text compared trimmed, case- and space-folded
``regex=PATTERN``  the output text contains a match of PATTERN
``json_valid``     the output is JSON (json features: a parsed object; others: its text
                   parses); ``json_valid=schema.json`` also validates it with that schema
``similarity``     cosine of local embeddings of output text and expected text, clipped at 0
``judge=F[@V]``    LLM as judge: version V (default: champion) of feature F grades the
                   output from 1 to 5 (or 0 to 1); mapped to [0, 1]
=================  ==========================================================================

The ``name=argument`` strings above are what ``keel eval --scorer`` takes and what an eval
run stores in its config, so a resumed run scores the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import jsonschema
import numpy as np
import orjson

from keel.errors import ConfigError, VersionNotFound
from keel.providers.base import OutputKind, Provider, ProviderRequest
from keel.stages.validate.grounded import Embed
from keel.types import JSON

if TYPE_CHECKING:
    from keel.gateway import Keel

__all__ = [
    "ExactMatch",
    "JsonValid",
    "Judge",
    "LabelMatch",
    "Regex",
    "Scorer",
    "Similarity",
    "build_scorers",
    "default_scorers",
    "judge_via_keel",
    "judge_via_provider",
    "label_of",
    "parse_judge_score",
    "text_of",
]

Ask = Callable[[str], Awaitable[str]]  # a judge prompt in, the judge model's answer out


class Scorer(Protocol):
    @property
    def name(self) -> str:
        """How the scorer's scores and mean are keyed in results and metrics."""
        ...

    async def score(self, input: dict[str, JSON], expected: JSON, output: JSON) -> float | None:
        """A score in [0, 1]; None when not applicable. ``output`` None: the call failed."""
        ...


# --- reading outputs ------------------------------------------------------------------


def label_of(value: JSON) -> str | None:
    """The label of ``{"label": x}`` or of a bare string."""
    if isinstance(value, dict):
        label = value.get("label")
        return label if isinstance(label, str) else None
    return value if isinstance(value, str) else None


def text_of(value: JSON) -> str | None:
    """The text a person reads: ``{"text"}``, a chat message's ``content``, a label alone,
    a string; any other JSON value as canonical JSON. None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("text", "content"):
            if isinstance(value.get(key), str):
                return str(value[key])
        if set(value) == {"label"} and isinstance(value["label"], str):
            return value["label"]
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _canonical(value: JSON) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


# --- scorers --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelMatch:
    """1 when the output's label is the expected one."""

    name: str = "label"

    async def score(self, input: dict[str, JSON], expected: JSON, output: JSON) -> float | None:
        truth = label_of(expected)
        if truth is None:
            return None
        return float(label_of(output) == truth)


@dataclass(frozen=True, slots=True)
class ExactMatch:
    """Structured expectations compare as canonical JSON; a string expectation compares
    with the output's text, trimmed, case-folded, runs of white space made one."""

    name: str = "exact_match"

    async def score(self, input: dict[str, JSON], expected: JSON, output: JSON) -> float | None:
        if expected is None:
            return None
        if output is None:
            return 0.0
        if isinstance(expected, str) or (isinstance(expected, dict) and set(expected) == {"text"}):
            text, truth = text_of(output), text_of(expected)
            return float(text is not None and truth is not None and _fold(text) == _fold(truth))
        return float(_canonical(expected) == _canonical(output))


@dataclass(frozen=True, slots=True)
class Regex:
    """1 when the output's text contains a match of ``pattern``."""

    pattern: str
    name: str = "regex"
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_compiled", re.compile(self.pattern))
        except re.error as exc:
            raise ConfigError(f"scorer regex: not a valid regular expression: {exc}") from None

    async def score(self, input: dict[str, JSON], expected: JSON, output: JSON) -> float | None:
        text = text_of(output)
        return 0.0 if text is None else float(self._compiled.search(text) is not None)


@dataclass(frozen=True, slots=True)
class JsonValid:
    """1 when the output is JSON (and valid under ``schema`` when one is given). A json
    feature's output is already parsed (a string means it did not parse); for other
    kinds the output's text must parse."""

    kind: OutputKind = "json"
    schema: dict[str, JSON] | None = None
    name: str = "json_valid"

    def __post_init__(self) -> None:
        if self.schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(self.schema)
            except jsonschema.SchemaError as exc:
                raise ConfigError(f"scorer json_valid: not a valid JSON Schema: {exc.message}") from None

    async def score(self, input: dict[str, JSON], expected: JSON, output: JSON) -> float | None:
        if output is None:
            return 0.0
        value: JSON
        if self.kind == "json" and not isinstance(output, str):
            value = output
        else:
            text = text_of(output) if self.kind != "json" else output
            try:
                value = orjson.loads(text or "")
            except orjson.JSONDecodeError:
                return 0.0
        if self.schema is None:
            return 1.0
        return float(jsonschema.Draft202012Validator(self.schema).is_valid(value))


@dataclass(frozen=True, slots=True)
class Similarity:
    """Cosine similarity of the embeddings of the output's and the expected text,
    clipped to [0, 1]."""

    embed: Embed
    name: str = "similarity"

    async def score(self, input: dict[str, JSON], expected: JSON, output: JSON) -> float | None:
        truth = text_of(expected)
        if truth is None:
            return None
        text = text_of(output)
        if not text:
            return 0.0
        vectors = np.asarray(await self.embed([text, truth]), dtype=np.float64)
        norm = float(np.linalg.norm(vectors[0]) * np.linalg.norm(vectors[1]))
        if norm == 0:
            return 0.0
        return min(1.0, max(0.0, float(vectors[0] @ vectors[1]) / norm))


JUDGE_PROMPT = """You are grading the answer of an AI system.

Input:
{input}

Reference answer:
{expected}

Answer to grade:
{output}

How well does the answer to grade match the reference and serve the input? Rate it from 1
(wrong or useless) to 5 (fully correct). Reply with "Score: N" and one sentence why."""

Scale = Literal["1-5", "0-1"]
_NUMBER = r"(-?\d+(?:\.\d+)?)"
_KEYED = re.compile(rf"\b(?:score|rating|grade)\b\W{{0,3}}{_NUMBER}(?:\s*(?:/|out of)\s*(\d+))?",
                    re.IGNORECASE)
_FRACTION = re.compile(rf"{_NUMBER}\s*(?:/|out of)\s*(\d+)\b", re.IGNORECASE)
_ALONE = re.compile(rf"(?<![\w.]){_NUMBER}(?!\w|\.\d)")


def _on_scale(value: float, top: float | None, scale: Scale) -> float | None:
    if top is not None:
        return value / top if top > 0 and 0 <= value <= top else None
    if scale == "1-5":
        if 1 <= value <= 5:
            return (value - 1) / 4
        return None
    return value if 0 <= value <= 1 else None


def parse_judge_score(answer: str, scale: Scale = "1-5") -> float | None:
    """A judge's answer as a score in [0, 1], or None when it holds no readable score.

    Tried in order: a JSON object with ``score``/``rating``/``grade``; "Score: 4", "rating
    = 0.8", "grade 4/5"; a fraction "4/5", "8 out of 10"; the first number standing alone.
    ``N/D`` is N divided by D; otherwise a number is read on ``scale`` (1-5 maps 1 -> 0
    and 5 -> 1). Numbers off the scale give None, never a clipped guess."""
    for match in re.finditer(r"\{[^{}]*\}", answer):
        try:
            data = orjson.loads(match.group(0))
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict):
            for key in ("score", "rating", "grade"):
                value = data.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return _on_scale(float(value), None, scale)
    for pattern in (_KEYED, _FRACTION):
        found = pattern.search(answer)
        if found:
            top = float(found.group(2)) if found.group(2) else None
            return _on_scale(float(found.group(1)), top, scale)
    alone = _ALONE.search(answer)
    return _on_scale(float(alone.group(1)), None, scale) if alone else None


@dataclass(frozen=True, slots=True)
class Judge:
    """LLM as judge: ``ask`` sends the filled ``prompt`` to a model and returns its answer
    (:func:`judge_via_keel`, :func:`judge_via_provider`). Items with no expected answer are
    still judged (the reference reads "(none)"); a failed call scores 0."""

    ask: Ask
    prompt: str = JUDGE_PROMPT
    scale: Scale = "1-5"
    name: str = "judge"

    async def score(self, input: dict[str, JSON], expected: JSON, output: JSON) -> float | None:
        if output is None:
            return 0.0
        text = self.prompt.format(
            input=text_of(input.get("text")) if set(input) == {"text"} else text_of(input),
            expected="(none)" if expected is None else text_of(expected),
            output=text_of(output))
        return parse_judge_score(await self.ask(text), self.scale)


def judge_via_keel(keel: Keel, feature: str, version: str | None = None) -> Ask:
    """Ask through a feature of this Keel app, pinned to ``version`` (default: its
    champion): no events, no reviews, and its own provider, retries and timeouts."""
    target = keel.pipeline.feature(feature)
    pin = version or target.router.aliases["champion"]
    if pin not in target.targets:
        raise VersionNotFound(f"judge: feature '{feature}' has no version '{pin}' loaded")
    field_name = target.spec.input.text_field or "text"

    async def ask(prompt: str) -> str:
        outcome = await keel.call(feature, {field_name: prompt}, pin=pin)
        if outcome.output is None:
            raise RuntimeError(f"judge {feature}@{pin} failed: {outcome.error or outcome.decision}")
        return text_of(outcome.output) or ""

    return ask


def judge_via_provider(provider: Provider, model: str, *, timeout_s: float = 60.0,
                       system: str | None = None, params: dict[str, JSON] | None = None) -> Ask:
    """Ask a provider directly (one attempt, no retries): e.g. a vLLM or OpenAI model that
    no feature serves."""

    async def ask(prompt: str) -> str:
        request = ProviderRequest("_judge", "_", model, {"text": prompt}, "text", timeout_s,
                                  prompt="{text}", system=system, params=dict(params or {}))
        completion = await provider.complete(request)
        return completion.text if completion.text is not None else text_of(completion.output) or ""

    return ask


# --- building from names ----------------------------------------------------------------


def default_scorers(kind: OutputKind, *, embeddings: bool) -> list[str]:
    """label -> label; json -> exact_match + json_valid; text/chat -> exact_match, and
    similarity when local embeddings are at hand."""
    if kind == "label":
        return ["label"]
    if kind == "json":
        return ["exact_match", "json_valid"]
    return ["exact_match", "similarity"] if embeddings else ["exact_match"]


def _schema_file(arg: str) -> dict[str, JSON]:
    try:
        schema = orjson.loads(Path(arg).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"scorer json_valid: schema file not found: {arg}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"scorer json_valid: {arg} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise ConfigError(f"scorer json_valid: {arg} must hold a JSON object (a JSON Schema)")
    return schema


def build_scorers(specs: Sequence[str], *, kind: OutputKind, embed: Embed | None = None,
                  judge: Callable[[str, str | None], Ask] | None = None) -> list[Scorer]:
    """Scorers from ``name`` / ``name=argument`` strings (see the module docstring).

    ``embed`` serves ``similarity``; ``judge(feature, version)`` builds the ask function
    of ``judge=feature@version``. Unknown names and bad arguments raise ConfigError."""
    scorers: list[Scorer] = []
    for spec in specs:
        name, _, arg = spec.partition("=")
        name = name.strip()
        if name == "label":
            scorers.append(LabelMatch())
        elif name == "exact_match":
            scorers.append(ExactMatch())
        elif name == "regex":
            if not arg:
                raise ConfigError("scorer regex needs a pattern: regex=PATTERN")
            scorers.append(Regex(arg))
        elif name == "json_valid":
            scorers.append(JsonValid(kind, _schema_file(arg) if arg else None))
        elif name == "similarity":
            if embed is None:
                raise ConfigError("scorer similarity needs local embeddings (the local provider)")
            scorers.append(Similarity(embed))
        elif name == "judge":
            if not arg:
                raise ConfigError("scorer judge needs a feature: judge=FEATURE or judge=FEATURE@VERSION")
            if judge is None:
                raise ConfigError("scorer judge needs a Keel app to call the judge through")
            feature, _, version = arg.partition("@")
            scorers.append(Judge(judge(feature, version or None)))
        else:
            raise ConfigError(
                f"unknown scorer '{name}' (scorers: label, exact_match, regex=PATTERN, "
                "json_valid[=SCHEMA.json], similarity, judge=FEATURE[@VERSION])")
    names = [s.name for s in scorers]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"scorer(s) given twice: {', '.join(sorted(dupes))}")
    return scorers


def finite(value: float | None) -> float | None:
    """None for NaN/inf, so a scorer's bad arithmetic never reaches the metrics."""
    return value if value is not None and math.isfinite(value) else None
