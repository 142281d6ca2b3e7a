"""Banned-term search for outputs (competitor names, internal code names, slurs, ...).

Build one :class:`TermMatcher` per configuration — it compiles every term into a single
regex alternation, longest term first — and call :meth:`TermMatcher.find` per text.
:func:`find_terms` is the one-off convenience; it compiles on every call.

Matching rules:

* ``whole_words=True``: a match may not touch a word character (any Unicode letter,
  digit or underscore) on either side, so "ass" does not match "class" and "Müll" does
  not match "Müller", while "c++" and "@admin" still work (their edges are not word
  characters, and only the outside neighbours are checked).
* ``case_sensitive=False``: Unicode simple case folding (``re.IGNORECASE``), so "ÉTÉ"
  matches "été"; full folds that change length ("ß" vs "SS") are not applied.
* Whitespace inside a term matches any run of whitespace: "credit  card" and a line
  break between the words both match the term "credit card".
* Matches do not overlap; at one position the longest term wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["TermMatch", "TermMatcher", "find_terms"]


@dataclass(frozen=True, slots=True)
class TermMatch:
    """``term`` is the configured term that matched; ``text == source[start:end]``."""

    term: str
    start: int
    end: int
    text: str


def _key(text: str, case_sensitive: bool) -> str:
    text = " ".join(text.split())
    return text if case_sensitive else text.casefold()


_END = ""  # the trie key that marks the end of a term
_WS = r"\s+"
_Trie = dict[str, "_Trie"]


def _trie_pattern(terms: Iterable[str], case_sensitive: bool) -> str:
    """One regex for all terms, with common prefixes shared (``comp(?:any|etitor)``)
    instead of a flat ``a|b|c``: Python's engine tries a flat alternation's branches one
    by one at every position, which is 50x slower for a few thousand terms."""
    root: _Trie = {}
    for term in terms:
        node = root
        for i, word in enumerate(term.split()):
            for unit in ([_WS] if i else []) + [re.escape(ch) for ch in word]:
                key = unit if case_sensitive or len(unit.lower()) != len(unit) else unit.lower()
                node = node.setdefault(key, {})
        node[_END] = {}
    return _render(root)


def _render(node: _Trie) -> str:
    out = ""
    while len(node) == 1 and _END not in node:  # a chain without branches: no group
        ((unit, node),) = node.items()
        out += unit
    if not node or node.keys() == {_END}:
        return out
    leaves = sorted(u for u, child in node.items() if u != _END and u != _WS and child.keys() == {_END})
    branches = [u + _render(child) for u, child in node.items() if u != _END and u not in leaves]
    if leaves:
        branches.append(leaves[0] if len(leaves) == 1 else "[" + "".join(leaves) + "]")
    return out + "(?:" + "|".join(branches) + ")" + ("?" if _END in node else "")


class TermMatcher:
    """A compiled matcher for a fixed set of terms. Immutable after construction and
    safe to share between threads and tasks."""

    __slots__ = ("_by_key", "_pattern", "case_sensitive", "terms", "whole_words")

    def __init__(self, terms: Iterable[str], *, whole_words: bool = True,
                 case_sensitive: bool = False) -> None:
        unique: dict[str, str] = {}
        for term in terms:
            if not term.strip():
                raise ValueError("a banned term must not be empty or blank")
            unique.setdefault(_key(term, case_sensitive), " ".join(term.split()))
        self.terms: tuple[str, ...] = tuple(unique.values())
        self.whole_words = whole_words
        self.case_sensitive = case_sensitive
        self._by_key = unique
        self._pattern: re.Pattern[str] | None = None
        if unique:
            body = _trie_pattern(self.terms, case_sensitive)
            pattern = rf"(?<!\w)(?:{body})(?!\w)" if whole_words else f"(?:{body})"
            self._pattern = re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)

    def __repr__(self) -> str:
        return (f"TermMatcher({len(self.terms)} terms, whole_words={self.whole_words}, "
                f"case_sensitive={self.case_sensitive})")

    def _term_for(self, matched: str) -> str:
        term = self._by_key.get(_key(matched, self.case_sensitive))
        if term is not None:
            return term
        flags = 0 if self.case_sensitive else re.IGNORECASE  # a fold casefold() disagrees on
        for term in self.terms:
            if re.fullmatch(r"\s+".join(map(re.escape, term.split())), matched, flags):
                return term
        return matched  # pragma: no cover - every match comes from one of the terms

    def finditer(self, text: str) -> Iterator[TermMatch]:
        """Matches one by one, by position (lazy: stop early for a yes/no check)."""
        if self._pattern is None:
            return
        for m in self._pattern.finditer(text):
            yield TermMatch(self._term_for(m.group()), m.start(), m.end(), m.group())

    def find(self, text: str) -> list[TermMatch]:
        """Every non-overlapping match in ``text``, by position."""
        return list(self.finditer(text))

    def search(self, text: str) -> TermMatch | None:
        """The first match, or ``None``: the cheap form of a yes/no check."""
        return next(self.finditer(text), None)


def find_terms(text: str, terms: Iterable[str], *, whole_words: bool = True,
               case_sensitive: bool = False) -> list[TermMatch]:
    """Every match of ``terms`` in ``text``. Compiles the terms each time: for repeated
    checks with the same terms, build a :class:`TermMatcher` once instead."""
    return TermMatcher(terms, whole_words=whole_words, case_sensitive=case_sensitive).find(text)
