"""Heuristic prompt-injection and jailbreak scoring.

:func:`injection_score` looks for named *signals* — phrases and byte patterns that
ordinary users almost never write but injection attempts almost always do — and folds
their weights into one score with a noisy-OR, ``1 - prod(1 - w)``: one strong signal
is enough, several weak ones add up, and the score stays in [0, 1].

How to read the score (the thresholds below are exported):

* ``>= LIKELY_THRESHOLD`` (0.5): likely an injection attempt; block it or send it to
  review. One strong signal ("ignore all previous instructions", a ``<|im_start|>``
  role tag, "you are now DAN", an encoded blob that decodes to an injection) gets here
  alone.
* ``>= SUSPICIOUS_THRESHOLD`` (0.25): suspicious; weak signals only ("pretend you
  are", "from now on you", a long base64 blob). Log it, do not block on it.
* below: nothing of note.

This is a cheap first line, not a classifier: paraphrases it has no pattern for get
through, and a message *about* prompt injection scores like one. The text is
NFKC-normalised (full-width letters fold to ASCII) and stripped of zero-width
characters before matching, and base64/hex blobs are decoded and scored once more.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass
from typing import Final

__all__ = ["LIKELY_THRESHOLD", "SUSPICIOUS_THRESHOLD", "InjectionResult", "injection_score"]

LIKELY_THRESHOLD: Final = 0.5
SUSPICIOUS_THRESHOLD: Final = 0.25


@dataclass(frozen=True, slots=True)
class InjectionResult:
    """``score`` in [0, 1]; ``signals`` names what fired, strongest first."""

    score: float
    signals: tuple[str, ...]

    @property
    def likely(self) -> bool:
        return self.score >= LIKELY_THRESHOLD


_I = re.IGNORECASE
_PREV = r"(?:all\s+|any\s+|the\s+|your\s+|my\s+|of\s+|these\s+|those\s+|everything\s+)*"
_WHEN = (r"(?:previous|prior|above|earlier|preceding|former|foregoing|initial|original|old|system|"
         r"developer|safety|existing|given)")
_RULES = (r"(?:instructions?|prompts?|rules|directives?|directions|guidelines|guardrails|commands|"
          r"programming|constraints|restrictions|context|policies|training)")
_LIMITS = r"(?:rules|restrictions|limits|limitations|filters|guidelines|ethics|morals|censorship)"

# (name, weight, triggers, pattern, flags). ``weight`` is the signal's noisy-OR input;
# the pattern only runs when one of the ``triggers`` occurs in the lower-cased text,
# which keeps an ordinary message at a few microseconds.
_TABLE: Final = (
    ("ignore_instructions", 0.85,
     ("ignor", "disregard", "forget", "skip", "overr", "bypass", "neglect", "abandon", "drop"),
     rf"\b(?:ignore|disregard|forget|skip|override|overrule|bypass|neglect|abandon|drop)\s+{_PREV}"
     rf"{_WHEN}\s+(?:\w+\s+)?{_RULES}\b|\b(?:ignore|disregard|forget)\s+(?:all\s+|everything\s+)?"
     r"(?:(?:that\s+)?(?:was\s+)?(?:said|written|stated)\s+)?(?:the\s+)?(?:above|before\s+this|so\s+far)\b|"
     rf"\b(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+)?(?:of\s+)?(?:your|the)\s+{_RULES}\b", _I),
    ("ignore_instructions_i18n", 0.85, ("ignor", "vergiss", "missacht"),
     r"\b(?:ignoriere|vergiss|missachte)\w*\s+(?:alle\s+)?(?:vorherigen|bisherigen|obigen|vorigen)\s+"
     r"(?:Anweisungen|Instruktionen|Regeln)|\bignor\w*\s+(?:toutes\s+)?(?:les|tes|vos)\s+"
     r"(?:instructions|consignes|règles)\s+(?:précédentes|antérieures)|\bignor\w*\s+(?:todas\s+)?"
     r"(?:las|tus|sus)\s+(?:instrucciones|reglas)\s+(?:anteriores|previas)", _I),
    ("system_prompt_override", 0.7, ("instruction", "prompt", "rules", "system"),
     r"\b(?:new|updated|real|actual|override|revised)\s+(?:system\s+)?(?:instructions?|prompt|rules)\s*:|"
     r"\bsystem\s+(?:prompt|message|override)\s*:|\b(?:disregard|ignore|override|bypass|replace)\s+"
     r"(?:the\s+|your\s+)?system\s+(?:prompt|message|instructions?)", _I),
    ("reveal_prompt", 0.6, ("prompt", "instruction", "above"),
     r"\b(?:reveal|print|show|display|output|repeat|recite|leak|dump|expose|spell\s+out|tell\s+me|"
     r"give\s+me|write\s+(?:out|down)|what\s+(?:is|are|was|were))\s+(?:me\s+)?(?:all\s+)?(?:of\s+)?"
     r"(?:your|the)\s+(?:full\s+|entire\s+|exact\s+|original\s+|initial\s+|hidden\s+|secret\s+|"
     r"internal\s+|complete\s+)*(?:system\s+(?:prompt|message|instructions?)|initial\s+prompt|"
     r"(?:hidden|secret|internal)\s+(?:prompt|instructions?)|instructions\s+(?:you\s+were\s+given|above)|"
     r"prompt\s+above|pre-?prompt)|\b(?:repeat|print|output)\s+(?:the\s+|all\s+)?(?:words|text)\s+above\b", _I),
    ("jailbreak_persona", 0.8, ("dan", "stan", "dude"),  # the names are case-sensitive
     r"(?i:\byou\s+are\s+(?:now\s+)?|\b(?:act|play|respond|answer)\s+as\s+|\b(?:called|named)\s+|"
     r"\bhello,?\s+|\bhi,?\s+)(?:(?i:an?)\s+)?(?:DAN|STAN|DUDE)\b|\b(?:DAN|STAN|DUDE)\s+(?i:mode|prompt|jailbreak)\b", 0),
    ("do_anything_now", 0.8, ("anything",), r"\bdo\s+anything\s+now\b", _I),
    ("jailbreak_mode", 0.7, ("mode", "jailbr"),
     r"\b(?:jailbreak|unrestricted|unfiltered|uncensored|evil|chaos)\s+mode\b|\bjailbr(?:eak|oken)\b", _I),
    ("developer_mode", 0.45, ("mode",), r"\b(?:developer|dev|god|sudo|debug|admin)\s+mode\b", _I),
    ("roleplay_unrestricted", 0.65, ("pretend", "act", "role", "imagine", "behave", "now", "simulat"),
     r"\b(?:pretend|act(?:ing)?\s+as|role-?play|imagine\s+you\s+are|behave\s+(?:as|like)|you\s+are\s+now|"
     r"from\s+now\s+on|simulate)\b[^.!?\n]{0,80}?\b(?:unrestricted|unfiltered|uncensored|amoral|"
     rf"unethical|no\s+{_LIMITS}|without\s+(?:any\s+)?{_LIMITS}|not\s+bound\s+by|free\s+(?:of|from)\s+"
     r"(?:all\s+)?(?:rules|restrictions))", _I),
    ("role_override", 0.3, ("pretend", "act", "now"),
     r"\bpretend\s+(?:to\s+be|you\s+are|that\s+you)|\bact\s+as\s+(?:if\s+you\s+(?:are|were|have)|"
     r"an?\s+(?:\w+\s+)?(?:ai|assistant|chatbot|bot|model|character|persona|hacker)\b|my\s+(?:\w+\s+)?"
     r"(?:grandma|grandmother|assistant)\b)|\byou\s+are\s+now\s+(?:an?|my|the|in)\b|\bfrom\s+now\s+on,?\s+"
     r"you\b|\byou\s+(?:will|must)\s+now\s+(?:act|respond|answer|behave)", _I),
    ("no_restrictions", 0.5, ("safety", "content", "ethic", "moral"),
     r"\b(?:bypass|disable|turn\s+off|remove|without|ignore|evade)\s+(?:your\s+|the\s+|all\s+|any\s+)*"
     r"(?:safety|content|ethical|moral)\s+(?:filters?|guidelines|restrictions|polic(?:y|ies)|guardrails)\b", _I),
    ("role_tag", 0.75, ("<", "[inst", "#"),
     r"</?\s*(?:system|assistant|user|instructions?|sys)\s*>|<\|(?:im_start|im_end|im_sep|system|user|"
     r"assistant|endoftext|eot_id|start_header_id|end_header_id|begin_of_text|end_of_text|"
     r"endofprompt)\|>|\[/?INST\]|<</?SYS>>|^\s*#{2,}\s*(?:instruction|system|response|human|assistant|"
     r"input)s?\b", _I | re.M),
    ("chat_transcript", 0.3, ("system", "assistant"), r"^\s*(?:system|assistant)\s*:", _I | re.M),
)
_SIGNALS: Final[tuple[tuple[str, float, tuple[str, ...], re.Pattern[str]], ...]] = tuple(
    (name, weight, triggers, re.compile(pattern, flags))
    for name, weight, triggers, pattern, flags in _TABLE
)
_SPECIAL_TOKEN = re.compile(
    r"<\|[^|<>\s]{1,40}\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:unk|pad|bos|eos|mask|sep|cls)>|"
    r"<(?:start|end)_of_turn>|<\|>"
)
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/=])")
_HEX = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[ :]?){16,}(?![0-9A-Fa-f])")
_INVISIBLE = re.compile("[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]")
_MAX_BLOB = 4096  # decode at most this many characters per blob


def _decoded_blobs(text: str) -> list[str]:
    """Plain text hidden in base64 or hex runs (only blobs that decode to mostly-printable
    text; ordinary ids and hashes decode to binary and are ignored)."""
    found: list[str] = []
    for m in _BASE64.finditer(text):
        blob = m.group()[:_MAX_BLOB]
        if blob.isalpha() or blob.isdigit() or len(blob.rstrip("=")) % 4 == 1:
            continue  # a long word or a number, not base64
        try:
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        found.append(raw.decode("utf-8", "replace"))
    for m in _HEX.finditer(text):
        digits = re.sub(r"[ :]", "", m.group()[:_MAX_BLOB])
        found.append(bytes.fromhex(digits[: len(digits) // 2 * 2]).decode("utf-8", "replace"))
    return [s for s in found if s and sum(c.isprintable() or c.isspace() for c in s) / len(s) > 0.9
            and sum(c.isalpha() or c == " " for c in s) / len(s) > 0.6]


def _signals(text: str) -> dict[str, float]:
    hits: dict[str, float] = {}
    lowered = text.lower()
    for name, weight, triggers, pattern in _SIGNALS:
        if any(t in lowered for t in triggers) and pattern.search(text):
            hits[name] = weight
    tokens = len(_SPECIAL_TOKEN.findall(text)) if "<" in text or "[" in text else 0
    if tokens >= 3:
        hits["special_tokens"] = min(0.9, 0.2 * tokens)
    return hits


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text) if not text.isascii() else text
    return _INVISIBLE.sub("", text)


def injection_score(text: str) -> InjectionResult:
    """Score ``text`` for prompt-injection / jailbreak signals (see the module docstring
    for the thresholds). Pure and synchronous; tens of microseconds for a short message."""
    hits = _signals(_normalise(text))
    if len(_INVISIBLE.findall(text)) >= 3:  # zero-width, bidi-override or tag characters
        hits["invisible_characters"] = 0.4
    for blob in _decoded_blobs(text):
        inner = _signals(_normalise(blob))
        # a blob that decodes to text at all is odd in a chat message; one that decodes
        # to an injection is an attempt to slip it past filters like this one
        hits["encoded_blob"] = 0.9 if any(w >= LIKELY_THRESHOLD for w in inner.values()) else 0.3
    remaining = 1.0
    for weight in hits.values():
        remaining *= 1.0 - weight
    ordered = sorted(hits, key=lambda name: -hits[name])
    return InjectionResult(round(1.0 - remaining, 4), tuple(ordered))
