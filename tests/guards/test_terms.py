"""Banned-term matching: word boundaries across scripts, case, whitespace, many terms."""

from __future__ import annotations

import time

import pytest

from keel.guards.terms import TermMatch, TermMatcher, find_terms
from tests.guards import banking77_texts


def found(text: str, terms: list[str], **options: bool) -> list[tuple[str, str]]:
    return [(m.term, m.text) for m in find_terms(text, terms, **options)]


def test_match_carries_term_span_and_text() -> None:
    text = "We beat Acme Corp on price."
    assert find_terms(text, ["acme corp"]) == [TermMatch("acme corp", 8, 17, "Acme Corp")]
    assert text[8:17] == "Acme Corp"


@pytest.mark.parametrize(("text", "term", "hit"), [
    ("a class act", "ass", False),
    ("you ass!", "ass", True),
    ("Herr Müller", "Müll", False),
    ("der Müll, bitte", "Müll", True),
    ("naïveté", "naïve", False),
    ("Straße_1", "Straße", False),  # the underscore is a word character
    ("東京に行く", "東京", False),  # no spaces in Japanese: the neighbour is a letter
    ("東京 に", "東京", True),
    ("Ёлка и ёж", "ёлка", True),
    ("I love c++ and c#", "c++", True),
    ("ping @admin now", "@admin", True),
    ("x@admin", "@admin", False),
    ("project-x is late", "project", True),  # a hyphen is not a word character
    ("4111 is the code", "4111", True),
    ("41112", "4111", False),
])
def test_whole_words_are_unicode_aware(text: str, term: str, hit: bool) -> None:
    assert bool(find_terms(text, [term])) is hit


def test_substring_mode() -> None:
    assert found("a class act", ["ass"], whole_words=False) == [("ass", "ass")]
    assert found("Herr Müller", ["Müll"], whole_words=False) == [("Müll", "Müll")]


def test_case() -> None:
    assert found("ÉTÉ and Été", ["été"]) == [("été", "ÉTÉ"), ("été", "Été")]
    assert found("ÉTÉ and été", ["été"], case_sensitive=True) == [("été", "été")]
    assert found("Acme and ACME", ["Acme", "ACME"], case_sensitive=True) == [
        ("Acme", "Acme"), ("ACME", "ACME")]


def test_whitespace_inside_a_term_matches_any_whitespace() -> None:
    assert found("a credit\n   card here", ["credit card"]) == [("credit card", "credit\n   card")]
    assert found("creditcard", ["credit card"]) == []


def test_longest_term_wins_and_matches_do_not_overlap() -> None:
    terms = ["acme", "acme corp", "corp"]
    assert found("ACME Corp and acme and corp", terms) == [
        ("acme corp", "ACME Corp"), ("acme", "acme"), ("corp", "corp")]


def test_regex_metacharacters_are_literal() -> None:
    assert found("costs $5.00 (approx.)", ["$5.00", "(approx.)"]) == [
        ("$5.00", "$5.00"), ("(approx.)", "(approx.)")]
    assert found("costs $5x00", ["$5.00"]) == []


def test_matcher_dedupes_and_validates_terms() -> None:
    matcher = TermMatcher(["Acme", "acme", "ACME  corp", "acme corp"])
    assert matcher.terms == ("Acme", "ACME corp")
    assert TermMatcher(["Acme", "acme"], case_sensitive=True).terms == ("Acme", "acme")
    with pytest.raises(ValueError, match="empty"):
        TermMatcher(["ok", "  "])
    assert TermMatcher([]).find("anything") == []
    assert "2 terms" in repr(matcher)


def test_search_stops_at_the_first_match() -> None:
    matcher = TermMatcher(["foo", "bar"])
    assert matcher.search("bar then foo") == TermMatch("bar", 0, 3, "bar")
    assert matcher.search("nothing here") is None


def test_many_terms_compile_once_and_stay_fast() -> None:
    terms = [f"competitor{i}" for i in range(2000)] + ["monzo", "revolut", "n26", "starling"]
    matcher = TermMatcher(terms)
    texts = banking77_texts()
    hits = [m for t in texts for m in matcher.find(t)]
    assert hits == []  # BANKING77 names no bank: nothing to find
    text = "Is Revolut or N26 cheaper than you for transfers? competitor1999 says so. " * 3
    assert [m.term for m in matcher.find(text)] == ["revolut", "n26", "competitor1999"] * 3
    start = time.perf_counter()
    for _ in range(200):
        matcher.find(text)
    assert (time.perf_counter() - start) / 200 < 0.001
