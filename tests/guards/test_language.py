"""Language identification (py3langid, offline) and encoding checks."""

from __future__ import annotations

import time

import pytest

from keel.guards.language import (
    UNDETERMINED,
    LanguageGuess,
    detect_language,
    is_valid_text,
    preload,
)
from tests.guards import banking77_texts

SENTENCES = {
    "en": ["I still have not received my new card, I ordered it over a week ago.",
           "Why was I charged a fee for withdrawing cash from the machine?",
           "How long does a transfer to another country usually take?"],
    "de": ["Ich habe meine Karte verloren und brauche dringend eine neue.",
           "Warum wurde mir für die Überweisung eine Gebühr berechnet?",
           "Wie lange dauert es, bis das Geld auf meinem Konto ist?"],
    "fr": ["Je n'ai toujours pas reçu ma nouvelle carte bancaire.",
           "Pourquoi ai-je payé des frais pour ce retrait d'argent ?",
           "Combien de temps faut-il pour un virement vers l'étranger ?"],
    "es": ["Todavía no he recibido mi nueva tarjeta, la pedí hace una semana.",
           "¿Por qué me cobraron una comisión por sacar dinero del cajero?",
           "¿Cuánto tarda una transferencia a otro país?"],
}


@pytest.mark.parametrize(("code", "text"), [(c, t) for c, ts in SENTENCES.items() for t in ts])
def test_detects_the_language_of_a_sentence(code: str, text: str) -> None:
    guess = detect_language(text)
    assert guess.code == code
    assert guess.confidence > 0.5  # the language check's default min_confidence


def test_candidates_restrict_and_renormalise() -> None:
    guess = detect_language("Hallo, wie geht es dir?", candidates=["en", "DE"])
    assert guess.code == "de" and 0.5 < guess.confidence <= 1.0
    assert detect_language("Bonjour", candidates=["xx"]) == LanguageGuess(UNDETERMINED, 0.0)


@pytest.mark.parametrize("text", ["", "   ", "12345 678", "😀😀", "!!!", "4111 1111 1111 1111"])
def test_no_letters_is_undetermined(text: str) -> None:
    assert detect_language(text) == LanguageGuess(UNDETERMINED, 0.0)


def test_short_text_has_low_confidence() -> None:
    assert detect_language("ok").confidence < 0.5


def test_odd_input_does_not_crash() -> None:
    assert detect_language("broken \ud800 surrogate in an English sentence here").code == "en"
    assert detect_language("word " * 10_000).confidence > 0.0


def test_banking77_is_detected_as_english() -> None:
    texts = banking77_texts()
    codes = [detect_language(t).code for t in texts]
    share = codes.count("en") / len(codes)
    assert share >= 0.99  # measured: 0.9984 (3,075 of 3,080; the rest pcm, cy, af)


def test_fast_once_loaded() -> None:
    text = ("I paid for something in a shop abroad yesterday and the exchange rate you applied "
            "looks wrong to me. Can you check it and refund the difference, please? Thanks!")
    detect_language(text)
    start = time.perf_counter()
    for _ in range(200):
        detect_language(text)
    assert (time.perf_counter() - start) / 200 < 0.001  # measured: about 0.1 ms


# --- is_valid_text -------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "", "Plain ASCII.", "Tabs\tand\nnewlines\r\nare fine", "Grüße aus Köln, ça va? ¿Qué tal?",
    "日本語のテキスト", "emoji 👍🏽 and a family 👨‍👩‍👧 with ZWJ", "non-breaking\u00a0space",
    "combining e\u0301", "Ñandú", "£5 and €10", "Ã is a letter in Portuguese: Ãgua",
])
def test_clean_text_is_valid(text: str) -> None:
    assert is_valid_text(text) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("half a pair \ud83d here", "lone surrogate U+D83D at index 12"),
    ("nul\x00byte", "control character NUL at index 3"),
    ("escape \x1b[31mred", "control character ESC at index 7"),
    ("bell\x07", "control character U+0007"),
    ("c1 \x85 control", "control character U+0085"),
    ("lost \ufffd byte", "U+FFFD replacement character at index 5"),
    ("cafÃ© au lait", "mojibake 'Ã©'"),
    ("donâ€™t worry", "mojibake"),
    ("Â£5", "mojibake"),
    ("\ue000\ue001\ue002 ab", "3 of 6 characters are unprintable"),
])
def test_encoding_problems_are_described(text: str, expected: str) -> None:
    problem = is_valid_text(text)
    assert problem is not None and expected in problem


def test_unprintable_share_is_a_threshold() -> None:
    text = "a" * 95 + "\u2062" * 5  # invisible format characters, 5 %
    assert is_valid_text(text) is None
    assert is_valid_text(text, max_unprintable_share=0.01) is not None


def test_banking77_texts_are_valid() -> None:
    assert [t for t in banking77_texts() if is_valid_text(t)] == []


def test_preload_is_idempotent() -> None:
    preload()
    preload()
    assert detect_language("This is an English sentence about my card.").code == "en"
