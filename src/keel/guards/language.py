"""Which language a text is in, and whether it is well-formed text at all.

:func:`detect_language` uses `py3langid <https://pypi.org/project/py3langid/>`_ (a
maintained fork of langid.py: a naive-Bayes model over byte n-grams for some 140
languages and varieties, shipped inside the package, nothing fetched at run time). The
model is read on the first call (about a second) and then shared, read-only, by every
call in the process; a call takes some 50–100 µs. Codes are ISO 639-1 where one exists
(``en``, ``de``), ISO 639-3 otherwise (``pcm``); ``und`` means undetermined: no letters,
or the model's own verdict "no linguistic content" (``zxx``).
Confidence is the model's probability for its choice, normalised over text length;
short texts (a word or two) get low confidence, so judge only above a threshold.

:func:`is_valid_text` finds encoding damage: lone surrogates, NUL and other control
characters, U+FFFD replacement characters, UTF-8 read as Latin-1 ("Ã©", "â€™") and a
high share of unprintable characters. It returns a one-line description or ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

__all__ = ["UNDETERMINED", "LanguageGuess", "detect_language", "is_valid_text", "preload"]

UNDETERMINED: Final = "und"
_NO_LANGUAGE: Final = "zxx"  # the model's label for "no linguistic content"
_MAX_CHARS: Final = 2000  # more text does not change the answer, only the cost
_HAS_LETTER = re.compile(r"[^\W\d_]")


@dataclass(frozen=True, slots=True)
class LanguageGuess:
    code: str
    confidence: float


@cache
def _identifier() -> Any:
    """The py3langid model, loaded once per process and never changed afterwards (we
    never call ``set_languages`` on it, so concurrent calls are safe)."""
    try:
        from py3langid.langid import (  # type: ignore[import-untyped]
            MODEL_FILE,
            LanguageIdentifier,
        )
    except ImportError as exc:  # pragma: no cover - a packaging error
        raise ImportError("language detection needs the 'py3langid' package") from exc
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def preload() -> None:
    """Load the model now (about a second) rather than on the first call: call it at
    start-up so no request pays for it."""
    _identifier()


def detect_language(text: str, *, candidates: Collection[str] | None = None) -> LanguageGuess:
    """The most likely language of ``text`` and the model's confidence in it.

    ``candidates`` restricts the answer to those codes (e.g. ``{"en", "de"}``), with the
    confidence renormalised over them: use it when the set of possible languages is
    known; it helps most on short texts. Text without any letter (empty,
    digits, emoji) is ``LanguageGuess("und", 0.0)``.
    """
    text = text[:_MAX_CHARS]
    if not _HAS_LETTER.search(text):
        return LanguageGuess(UNDETERMINED, 0.0)
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates break the model
    identifier = _identifier()
    if candidates is None:
        code, confidence = identifier.classify(text)
        if code == _NO_LANGUAGE:
            return LanguageGuess(UNDETERMINED, 0.0)
        return LanguageGuess(str(code), float(confidence))
    wanted = {c.lower() for c in candidates}
    ranked = [(str(c), float(p)) for c, p in identifier.rank(text) if c in wanted and c != _NO_LANGUAGE]
    total = sum(p for _, p in ranked)
    if not ranked or total <= 0.0:
        return LanguageGuess(UNDETERMINED, 0.0)
    code, p = ranked[0]
    return LanguageGuess(code, p / total)


# --- encoding problems ------------------------------------------------------------------
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0 (bar \t \n \r), DEL, C1
_MOJIBAKE = re.compile("[ÂÃ][\u00a0-\u00bf]|â€[\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u2013-\u203a\u20ac\u2122]")
_CONTROL_NAMES: Final = {"\x00": "NUL", "\x1b": "ESC", "\x7f": "DEL"}


def is_valid_text(text: str, *, max_unprintable_share: float = 0.1) -> str | None:
    """``None`` if ``text`` looks like clean text, else what is wrong with it (the first
    problem found, with its position).

    Flags: lone surrogates (unencodable), NUL and every C0 control except tab, LF and
    CR, DEL and C1 controls, U+FFFD (bytes lost in an earlier decode), UTF-8 mis-read
    as Latin-1/cp1252 (mojibake such as "Ã©"), and more than ``max_unprintable_share``
    of the characters being unprintable (format, private-use or unassigned code points;
    whitespace of any kind is fine). Emoji, combining marks and ZWJ sequences pass.
    """
    if m := _SURROGATE.search(text):
        return f"lone surrogate U+{ord(m.group()):04X} at index {m.start()} (not valid Unicode)"
    if m := _CONTROL.search(text):
        ch = m.group()
        name = _CONTROL_NAMES.get(ch, f"U+{ord(ch):04X}")
        return f"control character {name} at index {m.start()}"
    if (i := text.find("\ufffd")) >= 0:
        return f"U+FFFD replacement character at index {i} (text was decoded with errors)"
    if m := _MOJIBAKE.search(text):
        return f"mojibake {m.group()!r} at index {m.start()} (UTF-8 decoded as Latin-1/cp1252)"
    if not text.isprintable():
        bad = sum(1 for ch in text if not ch.isprintable() and not ch.isspace() and ch != "\u200d")
        if bad and bad / len(text) > max_unprintable_share:
            return f"{bad} of {len(text)} characters are unprintable"
    return None
