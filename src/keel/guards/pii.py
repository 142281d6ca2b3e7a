"""Personal data in free text: e-mail addresses, phone numbers, payment cards, IBANs and
national ids, with checksums wherever the format has one.

Precision comes first: a detector that fires on order numbers and amounts gets switched
off. So each kind is found by a candidate regex (compiled once, at import) and then
*validated*: cards by the Luhn checksum and a known IIN prefix with a length that issuer
uses, IBANs by the ISO 13616 mod-97 checksum and the country's length, US SSNs by the
ranges never issued, UK National Insurance numbers by their prefix rules, Spanish DNI/NIE
numbers by their check letter. Phones have no checksum; they must look like a phone
number: a ``+`` country code, a North American ``(415) 555-2671`` shape, a trunk ``0``
with separators (``020 7946 0958``), or a bare ``0``-number right after a word such as
"phone", "call" or "mobile". Plain digit runs, amounts, dates and times are not phones.
Digits are ASCII ``[0-9]``: the checksums are not defined on other Unicode digits.

:func:`find_pii` returns non-overlapping matches ordered by position; where two kinds
claim the same characters the validated one wins (email, iban, card, national_id, then
phone). :func:`redact` replaces matches with placeholders such as ``[EMAIL]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "ALL_KINDS", "PLACEHOLDERS", "PiiKind", "PiiMatch", "find_pii", "iban_ok", "luhn_ok", "redact",
]

PiiKind = Literal["email", "phone", "card", "iban", "national_id"]
#: Every kind, in the order overlaps are resolved (earlier wins).
ALL_KINDS: Final[tuple[PiiKind, ...]] = ("email", "iban", "card", "national_id", "phone")
PLACEHOLDERS: Final[Mapping[str, str]] = MappingProxyType({
    "email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "iban": "[IBAN]",
    "national_id": "[NATIONAL_ID]",
})


@dataclass(frozen=True, slots=True)
class PiiMatch:
    """One finding: ``text == source[start:end]``. ``detail`` names the sub-type
    (``visa``, ``us_ssn``, ``GB`` for an IBAN's country, ...)."""

    kind: PiiKind
    start: int
    end: int
    text: str
    detail: str = ""


# --- e-mail -------------------------------------------------------------------------
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w%+-]+(?:\.[\w%+-]+)*@(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{2,63}(?![\w-])"
)

# --- payment cards ------------------------------------------------------------------
_CARD = re.compile(r"(?<![\w.,-])[0-9]{4}(?:[ -]?[0-9]{3,6}){1,4}(?![\w-]|[.,][0-9])")
# (first prefix, last prefix, prefix width, valid lengths, brand)
_IIN: Final = (
    (4, 4, 1, (13, 16, 19), "visa"),
    (51, 55, 2, (16,), "mastercard"),
    (2221, 2720, 4, (16,), "mastercard"),
    (34, 34, 2, (15,), "amex"),
    (37, 37, 2, (15,), "amex"),
    (6011, 6011, 4, (16, 17, 18, 19), "discover"),
    (644, 649, 3, (16, 17, 18, 19), "discover"),
    (65, 65, 2, (16, 17, 18, 19), "discover"),
    (300, 305, 3, (14, 16, 17, 18, 19), "diners"),
    (36, 36, 2, (14, 15, 16, 17, 18, 19), "diners"),
    (38, 39, 2, (16, 17, 18, 19), "diners"),
    (3528, 3589, 4, (16, 17, 18, 19), "jcb"),
    (62, 62, 2, (16, 17, 18, 19), "unionpay"),
    (2200, 2204, 4, (16, 17, 18, 19), "mir"),
    (5018, 5018, 4, (13, 14, 15, 16, 17, 18, 19), "maestro"),
    (5020, 5020, 4, (13, 14, 15, 16, 17, 18, 19), "maestro"),
    (5038, 5038, 4, (13, 14, 15, 16, 17, 18, 19), "maestro"),
    (5893, 5893, 4, (13, 14, 15, 16, 17, 18, 19), "maestro"),
    (6304, 6304, 4, (13, 14, 15, 16, 17, 18, 19), "maestro"),
    (6759, 6759, 4, (13, 14, 15, 16, 17, 18, 19), "maestro"),
    (6761, 6763, 4, (13, 14, 15, 16, 17, 18, 19), "maestro"),
)


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) checksum over a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_brand(digits: str) -> str | None:
    for low, high, width, lengths, brand in _IIN:
        if len(digits) in lengths and low <= int(digits[:width]) <= high:
            return brand
    return None


def _cards(text: str) -> Iterator[PiiMatch]:
    for m in _CARD.finditer(text):
        raw = m.group()
        if len({c for c in raw if not c.isdigit()}) > 1:
            continue  # mixed separators: "1234 5678-9012" is not how cards are written
        digits = raw.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and luhn_ok(digits) and (brand := _card_brand(digits)):
            yield PiiMatch("card", m.start(), m.end(), raw, brand)


# --- IBAN -----------------------------------------------------------------------------
# ISO 13616 registry: total IBAN length by country
_IBAN_BY_LENGTH: Final = (
    (15, "NO"), (16, "BE"), (18, "DK FI FK FO GL NL SD"), (19, "MK SI"),
    (20, "AT BA EE KZ LT LU MN XK"), (21, "CH HR LI LV"),
    (22, "BG BH CR DE GB GE IE ME RS VA"), (23, "AE GI IL IQ OM SO TL"),
    (24, "AD CZ ES MD PK RO SA SE SK TN VG"), (25, "LY PT ST"), (26, "IS TR"),
    (27, "BI DJ FR GR IT MC MR SM"), (28, "AL AZ BY CY DO GT HN HU LB NI PL SV"),
    (29, "BR EG PS QA UA"), (30, "JO KW MU YE"), (31, "MT SC"), (32, "LC"), (33, "RU"),
)
_IBAN_LENGTHS: Final[Mapping[str, int]] = MappingProxyType(
    {cc: n for n, ccs in _IBAN_BY_LENGTH for cc in ccs.split()}
)
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}(?=[ -]?[A-Za-z0-9])")


def iban_ok(iban: str) -> bool:
    """ISO 13616: right country length and ``int(rearranged) % 97 == 1``. No spaces."""
    iban = iban.upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isascii() or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ibans(text: str) -> Iterator[PiiMatch]:
    for m in _IBAN_START.finditer(text):
        want = _IBAN_LENGTHS.get(m.group()[:2].upper())
        if want is None:
            continue
        chars, i, n = list(m.group()), m.end(), len(text)
        while len(chars) < want and i < n:  # walk on, allowing one space/dash between chars
            if text[i] in " -" and i + 1 < n and text[i + 1].isascii() and text[i + 1].isalnum():
                i += 1
            if not (text[i].isascii() and text[i].isalnum()):
                break
            chars.append(text[i])
            i += 1
        if len(chars) == want and not (i < n and text[i].isalnum()) and iban_ok("".join(chars)):
            yield PiiMatch("iban", m.start(), i, text[m.start():i], chars[0].upper() + chars[1].upper())


# --- national ids -------------------------------------------------------------------------
_SSN = re.compile(r"(?<![\w-])([0-9]{3})([- ])([0-9]{2})\2([0-9]{4})(?![\w-]|[.,][0-9])")
_SSN_NEVER_ISSUED: Final = frozenset({"078051120", "219099999"})  # voided: used in ads
_NINO = re.compile(
    r"(?<![A-Za-z0-9])([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]) ?([0-9]{2}) ?([0-9]{2}) ?([0-9]{2}) ?([A-D])"
    r"(?![A-Za-z0-9])"
)
_NINO_BAD_PREFIXES: Final = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
_DNI = re.compile(r"(?<![\w-])(?:([XYZ])-?)?([0-9]{7,8})-?([A-Z])(?![\w-])")
_DNI_LETTERS: Final = "TRWAGMYFPDXBNJZSQVHLCKE"


def _national_ids(text: str) -> Iterator[PiiMatch]:
    for m in _SSN.finditer(text):
        area, group, serial = m.group(1), m.group(3), m.group(4)
        if (area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"
                and area + group + serial not in _SSN_NEVER_ISSUED):
            yield PiiMatch("national_id", m.start(), m.end(), m.group(), "us_ssn")
    for m in _NINO.finditer(text):
        if m.group(1) not in _NINO_BAD_PREFIXES:
            yield PiiMatch("national_id", m.start(), m.end(), m.group(), "uk_nino")
    for m in _DNI.finditer(text):
        prefix, number, letter = m.group(1) or "", m.group(2), m.group(3)
        if len(prefix) + len(number) != 8:  # DNI: 8 digits; NIE: X/Y/Z + 7 digits
            continue
        value = int(str("XYZ".index(prefix)) + number if prefix else number)
        if _DNI_LETTERS[value % 23] == letter:
            yield PiiMatch("national_id", m.start(), m.end(), m.group(), "es_nie" if prefix else "es_dni")


# --- phones -----------------------------------------------------------------------------
_PHONE_INTL = re.compile(
    r"(?<![\w+])\+[0-9]{1,3}(?:[ .-]?(?:\(0?[0-9]{1,5}\)|[0-9]{1,6})){1,7}(?![-.]?[0-9]|\w)"
)
_PHONE_NANP = re.compile(
    r"(?<![\w+./-])(?:1[ .-]?)?(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}(?![-.]?[0-9]|\w)"
)
_PHONE_TRUNK = re.compile(
    r"(?<![\w+./,-])(?:\(0[0-9]{1,4}\) ?[0-9]{2,8}|0[0-9]{1,4}[ ./-][0-9]{2,8})(?:[ ./-][0-9]{2,8}){0,4}(?![-./]?[0-9]|\w)"
)
_PHONE_CONTEXT = re.compile(
    r"(?i:\b(?:phone|tel|telephone|mobile|cell|call|fax|whatsapp|sms|text\s+me|ring)\b)"
    r"[^0-9\n]{0,20}?(?<![\w+])(0[0-9]{8,11})(?!\w)"
)


def _phone_digits_ok(raw: str, low: int, high: int) -> bool:
    seps = {c for c in raw if c in " ./-"}
    if len(seps) > 1 and not ("(" in raw and seps <= {" ", "-"}):
        return False  # "01.02.2023 10" and the like: real numbers keep one separator
    return low <= sum(c.isdigit() for c in raw) <= high


def _phones(text: str) -> Iterator[PiiMatch]:
    for m in _PHONE_INTL.finditer(text):
        raw = m.group()
        if _phone_digits_ok(raw.replace("(0)", "").replace(") ", ")").replace(" (", "("), 8, 15):
            yield PiiMatch("phone", m.start(), m.end(), raw, "international")
    for m in _PHONE_NANP.finditer(text):
        yield PiiMatch("phone", m.start(), m.end(), m.group(), "nanp")
    for m in _PHONE_TRUNK.finditer(text):
        raw = m.group()
        if _SSN.fullmatch(raw):
            continue  # 078-05-1120 is shaped like an SSN, not like a phone number
        if _phone_digits_ok(raw, 10 if raw.startswith("00") else 9, 15 if raw.startswith("00") else 12):
            yield PiiMatch("phone", m.start(), m.end(), raw, "national")
    for m in _PHONE_CONTEXT.finditer(text):
        yield PiiMatch("phone", m.start(1), m.end(1), m.group(1), "national")


def _emails(text: str) -> Iterator[PiiMatch]:
    for m in _EMAIL.finditer(text):
        yield PiiMatch("email", m.start(), m.end(), m.group())


_FINDERS: Final[Mapping[str, Callable[[str], Iterator[PiiMatch]]]] = MappingProxyType({
    "email": _emails, "iban": _ibans, "card": _cards, "national_id": _national_ids,
    "phone": _phones,
})


def find_pii(text: str, kinds: Collection[PiiKind] = ALL_KINDS) -> list[PiiMatch]:
    """Every validated match of the requested kinds, non-overlapping, by position.

    Kinds are tried in :data:`ALL_KINDS` order; a later kind's match that overlaps an
    earlier one is dropped, whether or not the earlier kind was asked for (the digits of
    an IBAN are never reported as a phone number). Raises ``ValueError`` for an unknown
    kind.
    """
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown:
        raise ValueError(f"unknown PII kind(s): {sorted(unknown)}")
    last = max((ALL_KINDS.index(k) for k in kinds), default=-1)
    taken: list[PiiMatch] = []
    for kind in ALL_KINDS[:last + 1]:
        for match in _FINDERS[kind](text):
            if not any(match.start < t.end and t.start < match.end for t in taken):
                taken.append(match)
    return sorted((m for m in taken if m.kind in kinds), key=lambda m: m.start)


def _merge(matches: Iterable[PiiMatch]) -> list[tuple[int, int, str]]:
    spans: list[tuple[int, int, str]] = []
    for m in sorted(matches, key=lambda m: (m.start, -m.end)):
        if spans and m.start < spans[-1][1]:  # overlaps the previous span: widen it
            start, end, kind = spans[-1]
            spans[-1] = (start, max(end, m.end), kind)
        else:
            spans.append((m.start, m.end, m.kind))
    return spans


def redact(text: str, matches: Sequence[PiiMatch],
           placeholders: Mapping[str, str] | None = None) -> str:
    """``text`` with each match replaced by its kind's placeholder (``[EMAIL]``, ...).

    Matches may overlap or come in any order (e.g. merged from several detectors):
    overlapping spans are merged and take the placeholder of the one starting first.
    Raises ``ValueError`` if a match lies outside ``text``.
    """
    names = PLACEHOLDERS if placeholders is None else {**PLACEHOLDERS, **placeholders}
    parts: list[str] = []
    pos = 0
    for start, end, kind in _merge(matches):
        if not 0 <= start <= end <= len(text):
            raise ValueError(f"match {start}:{end} outside a text of length {len(text)}")
        parts += [text[pos:start], names.get(kind, f"[{kind.upper()}]")]
        pos = end
    parts.append(text[pos:])
    return "".join(parts)
