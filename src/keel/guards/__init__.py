"""Guard detectors: pure, synchronous functions that look at one text and report what
they find. Nothing here knows about features, specs or the pipeline; the wiring into
input checks and output validators (actions, time limits, events) lives in
:mod:`keel.stages`.

* :mod:`keel.guards.pii` — e-mail, phone, payment card (Luhn + IIN), IBAN (mod 97),
  national ids (US SSN, UK NINO, Spanish DNI/NIE); :func:`find_pii` and :func:`redact`.
* :mod:`keel.guards.injection` — heuristic prompt-injection / jailbreak score in
  [0, 1] with the signals that fired; ``>= 0.5`` means likely.
* :mod:`keel.guards.language` — :func:`detect_language` (py3langid, offline model)
  and :func:`is_valid_text` (encoding damage: surrogates, controls, U+FFFD, mojibake).
* :mod:`keel.guards.terms` — banned terms with Unicode-aware word boundaries;
  :class:`TermMatcher` compiles a term list once.

Every detector compiles its patterns at import and keeps no mutable module state (the
language model is loaded once, on first use, and only read afterwards). Each takes well
under a millisecond on a typical short message.
"""

from keel.guards.injection import LIKELY_THRESHOLD, InjectionResult, injection_score
from keel.guards.language import LanguageGuess, detect_language, is_valid_text
from keel.guards.pii import ALL_KINDS, PiiKind, PiiMatch, find_pii, redact
from keel.guards.terms import TermMatch, TermMatcher, find_terms

__all__ = [
    "ALL_KINDS",
    "LIKELY_THRESHOLD",
    "InjectionResult",
    "LanguageGuess",
    "PiiKind",
    "PiiMatch",
    "TermMatch",
    "TermMatcher",
    "detect_language",
    "find_pii",
    "find_terms",
    "injection_score",
    "is_valid_text",
    "redact",
]
