"""Finding sensitive values in free text: one pass per entity behind cheap prefilters.

Every detector is a regex that proposes candidates and a check that accepts
them (Luhn and issuer ranges, the IBAN registry and mod-97, phonenumbers, the
SSA rules, check letters, ``ipaddress``, JWT headers). Overlaps are settled by
``entities.PRIORITY``.

Text that is already a mask is never proposed: redaction tokens (``[email]``)
and stars contain nothing a detector matches, and hash tokens (``h:`` and 16
hex digits with at least one letter, see ``strategies``) are fenced off, so
masking the output of a mask changes nothing. Pseudonyms are real-looking
values and *are* found again; the ``Masker`` recognises its own.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Iterable

from . import checks, credentials, phones
from .entities import (
    CREDIT_CARD,
    EMAIL,
    ENTITIES,
    IBAN,
    IPV4,
    IPV6,
    JWT,
    NATIONAL_ID,
    PHONE,
    PRIORITY,
    SECRET,
    SSN,
    Finding,
    check_entities,
)

Span = tuple[int, int]

_EMAIL = re.compile(
    r"(?<![\w.%+\-])(?P<local>[\w.%+\-]{1,64})@"
    r"(?P<domain>(?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.){1,8}(?:[^\W\d_]{2,63}|xn--[a-z0-9\-]{1,59}))"
    r"(?![\w\-]|\.[^\W_])"
)

# Runs of digit groups; cards are looked for inside them on group boundaries.
# A comma before the run is a CSV field separator (thousands groups are too short to
# be cards). Not the digits of an IBAN-shaped value whose check failed ("LT03 2283 ...").
_DIGIT_RUN = re.compile(r"(?<![0-9A-Za-z_.+\-])(?<![A-Z]{2}[0-9]{2} )[0-9]++(?:[ \-][0-9]++)*+")
# What may not follow a card: more of a word, or ".5", ",5", "-5" (a decimal, an
# address, a date): then the last group belongs to that, not to the card.
# A comma and one or two digits is a decimal comma; a comma and a longer field (a
# date, an id) is the next CSV field.
_NOT_AFTER_CARD = re.compile(r"[0-9A-Za-z_]|[.\-][0-9]|,[0-9]{1,2}(?![0-9./\-:])")
_TOKEN = re.compile(r"[^ ]+")
CARD_MIN_DIGITS = 12
CARD_MAX_DIGITS = 19

_IBAN_START = re.compile(r"(?<![0-9A-Za-z])([A-Z]{2})[0-9]{2}")

# Numbers: never inside a word, a decimal, a date or a dash-joined identifier.
_NUM_BEFORE = r"(?<![0-9A-Za-z_.,\-])"
_NUM_AFTER = r"(?![0-9A-Za-z_]|[.,\-][0-9])"
_SSN = re.compile(_NUM_BEFORE + r"([0-9]{3})-([0-9]{2})-([0-9]{4})" + _NUM_AFTER)
_SSN_BARE = re.compile(_NUM_BEFORE + r"[0-9]{3}[ ]?[0-9]{2}[ ]?[0-9]{4}" + _NUM_AFTER)
_SSN_HINT = re.compile(r"(?i)(?:ssn|social[ \t]+security(?:[ \t]+(?:number|no|#))?)[^0-9\n]{0,12}$")

# UK NINO, Spanish DNI/NIE and Italian codice fiscale, in one pass.
_CAPITAL_IDS = re.compile(
    r"(?<![0-9A-Za-z\-])(?:"
    r"(?P<nino>[A-Z]{2}[ ]?[0-9]{2}[ ]?[0-9]{2}[ ]?[0-9]{2}[ ]?[A-D])"
    r"|(?P<dni>(?:[0-9]{8}|[XYZ]-?[0-9]{7})-?[A-Z])"
    r"|(?P<cf>[A-Z]{6}[0-9LMNP-V]{2}[ABCDEHLMPRST][0-9LMNP-V]{2}[A-Z][0-9LMNP-V]{3}[A-Z])"
    r")(?![0-9A-Za-z])"
)
_NIR = re.compile(
    _NUM_BEFORE + r"[1278][ ]?[0-9]{2}[ ]?[0-9]{2}[ ]?(?:[0-9]{2}|2[AB])[ ]?[0-9]{3}[ ]?[0-9]{3}"
    r"[ ]?[0-9]{2}" + _NUM_AFTER
)
_BSN = re.compile(_NUM_BEFORE + r"[0-9]{9}" + _NUM_AFTER)
_BSN_HINT = re.compile(r"(?i)(?:bsn|burgerservicenummer|sofi(?:nummer)?)[^0-9\n]{0,12}$")

# Not followed by "-rc1"/"-beta": a four-part version, not an address.
# Not after "+41 ": "+41 31.251.14.68" is a phone number written with dots.
_IPV4 = re.compile(
    r"(?<![0-9A-Za-z_.])(?<!\+[0-9] )(?<!\+[0-9]{2} )(?<!\+[0-9]{3} )(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9A-Za-z_]|\.[0-9]|-[A-Za-z])"
)
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z_:.])(?:[0-9A-Fa-f]{0,4}:){2,7}+"
    r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?+(?:%[0-9A-Za-z_.\-]{1,32})?+"
    r"(?![0-9A-Za-z_:]|\.[0-9])"
)

_JWT = re.compile(
    r"(?<![A-Za-z0-9_\-.])(eyJ[A-Za-z0-9_\-]{5,4096})\.([A-Za-z0-9_\-]{2,65536})\.([A-Za-z0-9_\-]{0,4096})(?![A-Za-z0-9_\-]|\.[A-Za-z0-9])"
)

# Whole values that no detector can match: ISO dates and timestamps, UUIDs,
# integers of up to 11 digits without a leading zero, decimals. Database
# cells are very often one of these, and one fullmatch is cheaper than the
# detectors bowing out one by one. (tests/unit/test_masking_properties.py
# checks that the detectors indeed find nothing in them.)
_CLEAN_VALUE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?"
    r"(?:Z|[+\-][0-9]{2}(?::?[0-9]{2})?)?)?"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|-?[1-9][0-9]{0,10}|-?(?:0|[1-9][0-9]{0,29})\.[0-9]{1,30}|0"
)

# Hash tokens made by the hash strategy; see strategies.hash_token.
_HASH_TOKEN = re.compile(r"(?<![0-9A-Za-z])h:(?=[0-9]{0,15}[a-f])[0-9a-f]{16}(?![0-9A-Za-z])")


class _Profile:
    """What a text contains, counted once, so each detector can bow out cheaply."""

    __slots__ = ("lowered", "digits", "upper", "hinted")

    def __init__(self, text: str, assume_hint: bool) -> None:
        self.lowered = text.lower()
        raw = text.encode("utf-8", "surrogatepass")
        self.digits = len(raw) - len(raw.translate(None, b"0123456789"))
        self.upper = self.lowered != text
        self.hinted = assume_hint

    def word(self, *words: str) -> bool:
        return self.hinted or any(w in self.lowered for w in words)


def _hinted(text: str, start: int, hint: re.Pattern[str]) -> bool:
    return hint.search(text, max(0, start - 40), start) is not None


def _emails(text: str) -> Iterable[Span]:
    for m in _EMAIL.finditer(text):
        if checks.email_ok(m.group("local"), m.group("domain")):
            yield m.span()


def _cards(text: str) -> Iterable[Span]:
    """Digit runs that are card numbers. When a whole run is not one, cards of
    13+ digits are looked for along its space-separated tokens: a card after a
    quantity or before an expiry ("2 4111 1111 1111 1111 12") is found, a card
    inside a longer dash-joined identifier ("5705-9467-3768-5655-403") is not."""
    out: list[Span] = []
    for m in _DIGIT_RUN.finditer(text):
        run = m.group()
        if len(run) < CARD_MIN_DIGITS:
            continue
        if _NOT_AFTER_CARD.match(text, m.end()):
            cut = max(run.rfind(" "), run.rfind("-"))
            if cut <= 0:
                continue
            run = run[:cut]
        if CARD_MIN_DIGITS <= len(run) <= CARD_MAX_DIGITS + 6:
            digits = run.replace(" ", "").replace("-", "")
            if CARD_MIN_DIGITS <= len(digits) <= CARD_MAX_DIGITS and checks.card_ok(digits):
                # A bare 12 or 13 digit number that is also a valid UPC-A/EAN-13
                # is a barcode (German EANs start 40-44, like old 13-digit Visa).
                if not (run.isdigit() and len(run) in (12, 13) and checks.gtin_ok(run)):
                    out.append((m.start(), m.start() + len(run)))
                continue
        if " " not in run:
            continue
        tokens = [(m.start() + t.start(), m.start() + t.end()) for t in _TOKEN.finditer(run)]
        i = 0
        while i < len(tokens):
            for j in range(len(tokens), i, -1):
                if i == 0 and j == len(tokens):
                    continue
                start, end = tokens[i][0], tokens[j - 1][1]
                digits = text[start:end].replace(" ", "").replace("-", "")
                if 13 <= len(digits) <= CARD_MAX_DIGITS and checks.card_ok(digits):
                    out.append((start, end))
                    i = j
                    break
            else:
                i += 1
    return out


def _ibans(text: str) -> Iterable[Span]:
    for m in _IBAN_START.finditer(text):
        length = checks.IBAN_LENGTHS.get(m.group(1))
        if length is None:
            continue
        chars: list[str] = []
        pos = m.start()
        while pos < len(text) and len(chars) < length:
            ch = text[pos]
            if "0" <= ch <= "9" or "A" <= ch <= "Z":
                chars.append(ch)
            elif not (ch == " " and chars and pos + 1 < len(text) and text[pos + 1] != " "):
                break
            pos += 1
        if len(chars) != length or (pos < len(text) and text[pos].isalnum()):
            continue
        if checks.iban_ok("".join(chars)):
            yield m.start(), pos


def _ssns(text: str, p: _Profile) -> Iterable[Span]:
    if "-" in text:
        for m in _SSN.finditer(text):
            if checks.ssn_ok(m.group(1) + m.group(2) + m.group(3)):
                yield m.span()
    if p.word("ssn", "social"):
        for m in _SSN_BARE.finditer(text):
            value = m.group()
            if (p.hinted or _hinted(text, m.start(), _SSN_HINT)) and checks.ssn_ok(
                value.replace(" ", "")
            ):
                yield m.span()


def _national_ids(text: str, p: _Profile) -> Iterable[Span]:
    if p.upper:  # NINO, DNI/NIE and codice fiscale are written in capitals
        for m in _CAPITAL_IDS.finditer(text):
            kind = m.lastgroup
            value = m.group()
            if (
                (kind == "nino" and checks.nino_ok(value.replace(" ", "")))
                or (kind == "dni" and checks.dni_ok(value.replace("-", "")))
                or (kind == "cf" and checks.cf_ok(value))
            ):
                yield m.span()
    if p.digits >= 13:
        for m in _NIR.finditer(text):
            if checks.nir_ok(m.group().replace(" ", "")):
                yield m.span()
    if p.digits >= 9 and p.word("bsn", "burgerservice", "sofi"):
        for m in _BSN.finditer(text):
            if (p.hinted or _hinted(text, m.start(), _BSN_HINT)) and checks.bsn_ok(m.group()):
                yield m.span()


def _ipv4s(text: str) -> Iterable[Span]:
    for m in _IPV4.finditer(text):
        try:
            address = ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        if not (
            address.is_loopback or address.is_unspecified or address in checks.IPV4_PSEUDONYM_SPACE
        ):
            yield m.span()


def _ipv6s(text: str) -> Iterable[Span]:
    for m in _IPV6.finditer(text):
        value = m.group()
        if not any(c.isdigit() for c in value.partition("%")[0]):
            continue
        try:
            address = ipaddress.IPv6Address(value)
        except ValueError:
            continue
        if not (
            address.is_loopback or address.is_unspecified or address in checks.IPV6_PSEUDONYM_SPACE
        ):
            yield m.span()


def _jwts(text: str) -> Iterable[Span]:
    for m in _JWT.finditer(text):
        if checks.jwt_header_ok(m.group(1)):
            yield m.span()


# may_contain's counts, from scan's gates below: with fewer digits than this, no phone
# number (phones.MIN_DIGITS), card, SSN, BSN, NIR or DNI (8 digits, or a letter and 7)
# can be found; tests/unit/test_masking_prefilter.py ties it to them.
MANY_DIGITS = 7
# Two capitals in a row: what an IBAN ("DE89...") or, with few digits, a NINO ("AB 12 34
# 56 C") or codice fiscale ("RSSMRA...") starts with.
_TWO_CAPITALS = re.compile("[A-Z]{2}")


def may_contain(data: bytes) -> bool:
    """Bytes prefilter: False only when ``find`` on the decoded text is sure to be empty.

    Valid for ASCII-compatible encodings, where every character a detector
    keys on (digits, capitals, ``@``, ``:``, ``.``, the secret words) is one ASCII byte,
    so the text holds at most the counts the bytes hold. It follows scan's gates: seven
    or more digits (phones, cards, SSNs and the national ids with many digits) say
    True; with two to six, only an IBAN or a NINO / codice fiscale can be found, and
    each needs two capitals in a row, or an IPv4 address, which needs four digits and
    three dots; with one, only an IPv6 address (colons). Every test is a count or an
    ``in``, so a substring never says True where the whole said False (rows_clean).
    The words are looked for in a latin-1 view of the bytes: one byte per
    character, never an error, and ``str`` search is several times faster than
    ``bytes`` search in CPython.
    """
    digits = len(data) - len(data.translate(None, b"0123456789"))
    if digits >= MANY_DIGITS:
        return True
    view = data.decode("latin-1")
    if "@" in view or "eyJ" in view:
        return True
    if digits:
        if "::" in view or view.count(":") >= 7:
            return True
        if digits >= 4 and view.count(".") >= 3:
            return True
        if digits >= 2 and _TWO_CAPITALS.search(view) is not None:
            return True
    return credentials.may_hold_secret(view, view.lower())


_CLEAN_BYTES = re.compile(_CLEAN_VALUE.pattern.encode("ascii"))

# A value's shape: its digits 2 to 9 written as 1. clean_bytes gives a value and its
# shape the same answer: may_contain counts digits and no other test of it involves
# one, and _CLEAN_VALUE tells digits apart only as 0 or not ([1-9], a lone 0). So
# values that differ only in their digits ("Person 1234", "Person 5678", most ids and
# amounts of a fresh row) share one answer, remembered by shape.
SHAPE = bytes.maketrans(b"23456789", b"11111111")
SHAPE_MAX = 128  # longer values are tested each time, not remembered
# clean_shape's answers, by hinted (False, True); the masking hot loop looks here first.
CLEAN_SHAPES: tuple[dict[bytes, bool], dict[bytes, bool]] = ({}, {})
CLEAN_SHAPES_MAX = 16384


def _clean(data: bytes, hinted: bool) -> bool:
    if not may_contain(data):
        return True
    return not hinted and len(data) <= 64 and _CLEAN_BYTES.fullmatch(data) is not None


def clean_shape(shape: bytes, hinted: bool = False) -> bool:
    """clean_bytes of any value of this shape (``value.translate(SHAPE)``, at most
    SHAPE_MAX bytes)."""
    memo = CLEAN_SHAPES[hinted]
    found = memo.get(shape)
    if found is None:
        found = _clean(shape, hinted)
        if len(memo) >= CLEAN_SHAPES_MAX:
            memo.clear()
        memo[shape] = found
    return found


def clean_bytes(data: bytes, hinted: bool = False) -> bool:
    """True when ``scan`` of ``data`` decoded (``assume_hint=hinted``) is sure to be
    empty: the prefilter says so, or the value is one scan itself passes whole
    (``_CLEAN_VALUE``: a number, a date, a UUID), looked for in the bytes. Valid for
    ASCII-compatible encodings: bytes that match an ASCII pattern are ASCII, and decode
    to the same characters."""
    if len(data) > SHAPE_MAX:
        return _clean(data, hinted)
    return clean_shape(data.translate(SHAPE), hinted)


def _resolve(candidates: list[tuple[int, int, str]], fenced: list[Span]) -> list[Finding]:
    """Keep the highest-priority, then longest, candidates that do not overlap."""
    candidates.sort(key=lambda c: (-PRIORITY[c[2]], c[0] - c[1], c[0]))
    starts: list[int] = []
    ends: list[int] = []
    for start, end in fenced:
        i = bisect.bisect_left(starts, start)
        starts.insert(i, start)
        ends.insert(i, end)
    kept: list[Finding] = []
    for start, end, entity in candidates:
        i = bisect.bisect_right(starts, start)
        if i > 0 and ends[i - 1] > start:
            continue
        if i < len(starts) and starts[i] < end:
            continue
        starts.insert(i, start)
        ends.insert(i, end)
        kept.append(Finding(start, end, entity))
    kept.sort(key=lambda f: f.start)
    return kept


def scan(text: str, entities: frozenset[str], assume_hint: bool = False) -> list[Finding]:
    """``find`` with ``assume_hint``: bare SSN/BSN/phone digits count without a hint word."""
    if not text or (not assume_hint and len(text) <= 64 and _CLEAN_VALUE.fullmatch(text)):
        return []
    p = _Profile(text, assume_hint)
    digits = p.digits
    found: list[tuple[int, int, str]] = []

    def add(entity: str, spans: Iterable[Span]) -> None:
        found.extend((start, end, entity) for start, end in spans)

    if SECRET in entities and credentials.may_hold_secret(text, p.lowered):
        add(SECRET, credentials.find_secrets(text))
    if JWT in entities and "eyJ" in text:
        add(JWT, _jwts(text))
    if EMAIL in entities and "@" in text:
        add(EMAIL, _emails(text))
    if digits >= 2:
        if IBAN in entities and p.upper:
            add(IBAN, _ibans(text))
        if CREDIT_CARD in entities and digits >= CARD_MIN_DIGITS:
            add(CREDIT_CARD, _cards(text))
        if SSN in entities and digits >= 9:
            add(SSN, _ssns(text, p))
        if NATIONAL_ID in entities and digits >= 6:
            add(NATIONAL_ID, _national_ids(text, p))
        if PHONE in entities and digits >= phones.MIN_DIGITS:
            add(PHONE, phones.find_phones(text, assume_hint))
        if IPV4 in entities and digits >= 4 and text.count(".") >= 3:
            add(IPV4, _ipv4s(text))
    if IPV6 in entities and digits and ("::" in text or text.count(":") >= 7):
        add(IPV6, _ipv6s(text))
    if not found:
        return []
    fenced = [m.span() for m in _HASH_TOKEN.finditer(text)] if "h:" in text else []
    return _resolve(found, fenced)


def find(text: str, entities: frozenset[str] = ENTITIES) -> list[Finding]:
    """Validated, non-overlapping findings in ``text``, sorted by position."""
    if entities is not ENTITIES:
        entities = check_entities(entities)
    return scan(text, entities)
