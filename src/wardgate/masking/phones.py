"""Phone numbers: cheap candidate spans, then ``phonenumbers`` decides.

A candidate is only a phone number when phonenumbers says the number is valid
(``is_valid_number``: a real numbering plan range, the right length), and only
in a shape a person writes a phone number in:

* international: ``+44 20 7946 0958``, ``+49(0)30 1234567``, ``0044 ...``, ``001-...``;
* national with a trunk ``0``: ``020 7946 0958``, ``(0191) 496 0377``,
  ``06 12 34 56 78``, tried as GB, DE, FR, NL, IT, IN, BE, AT, CH;
* US/NANP with separators: ``(415) 555-2671``, ``415.555.2671``, ``1-800-...``;
* grouped national numbers without a trunk prefix: ``612 34 56 78`` (ES),
  ``342 083 7783`` (IT), ``98765 43210`` (IN);
* bare digits (``4155552671``) only right after a hint word such as
  "phone", "tel", "mobile": otherwise they are plain integers.
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumber

TRUNK_REGIONS = ("GB", "DE", "FR", "NL", "IT", "IN", "BE", "AT", "CH")
GROUPED_REGIONS = ("ES", "IT")
HINTED_REGIONS = ("US", "ES", "IT", "IN", "GB", "DE", "FR", "NL")
# When a hint word says phone, national numbers of these regions are tried too.
HINTED_EXTRA_REGIONS = (
    "PL",
    "AU",
    "BR",
    "JP",
    "SE",
    "BE",
    "CH",
    "AT",
    "IE",
    "PT",
    "MX",
    "DK",
    "NO",
)

MIN_DIGITS = 7
MAX_DIGITS = 15  # E.164 maximum, extension not counted
MAX_GROUPS = 8  # sub-span search is quadratic in groups: keep it bounded

_CANDIDATE = re.compile(
    r"(?<![0-9A-Za-z_+@.\-/\\#])(?<![A-Z]{2}[0-9]{2} )"
    r"\(?\+?[0-9](?:[ .\-/]?\(?[0-9]\)?){5,30}+"
    r"(?:[ ]?(?i:x|ext\.?|\#|;ext=)[ ]?[0-9]{1,6})?+"
    # Not followed by more of the same token: a digit, a letter, or a separator and then
    # one (the hex groups of a UUID, "07062414-6786-ce98-...", are not a phone number).
    r"(?![0-9A-Za-z_@]|[.\-/:][0-9A-Za-z])"
)
_EXTENSION = re.compile(r"[ ]?(?i:x|ext\.?|\#|;ext=)[ ]?[0-9]{1,6}$")
_US = re.compile(
    r"(?:\+?1[ .\-]?)?(?:\([2-9][0-9]{2}\)[ .\-]?|[2-9][0-9]{2}[ .\-])[2-9][0-9]{2}[ .\-][0-9]{4}"
)
_SSN_SHAPE = re.compile(r"[0-9]{3}-[0-9]{2}-[0-9]{4}")
# ES and IT numbers without a trunk prefix open with a 3-digit group
# ("612 34 56 78", "342 083 7783"); dates open with 4 or 2 digits.
_GROUPED_START = re.compile(r"[0-9]{3}[ .\-]")
_IN_GROUPED = re.compile(r"[6-9][0-9]{4}[ \-][0-9]{5}")
_GROUP_SEPARATORS = re.compile(r"[ .\-]")
_HINT = re.compile(
    r"(?i)(?<![^\W\d_])(?:(?:tele|cell|mobile[ ]?|smart)?phones?|tel|mob|mobile|cell|fax|call|whatsapp"
    r"|sms|telefon(?:nummer)?|t[ée]l|t[ée]l[ée]phone|tel[ée]fono|m[óo]vil|cellulare|telefoon|mobiel"
    r"|handy|portable|gsm|contact[ _]?(?:no|number)|phone[ _]?(?:no|number))(?![^\W\d_])[^0-9\n]{0,12}$"
)
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)\.[0-9]+")  # 030.1234567 is not a decimal
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
# A calendar date (2024-01-15, 15.01.2024): after a hint word it would parse as a
# national number ("phone | 2024-01-15" is a German 20240115), and masking it as one
# made the masked text of a row with a "[phone]" tag in it change when masked again.
_DATE = re.compile(
    r"(?:19|20)[0-9]{2}([\-/.])(?:0[1-9]|1[0-2])\1(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[1-9]|[12][0-9]|3[01])([\-/.])(?:0[1-9]|1[0-2])\2(?:19|20)[0-9]{2}"
)


def _digits(text: str) -> int:
    return sum(map(text.count, "0123456789"))


def _valid(text: str, region: str | None) -> PhoneNumber | None:
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException:
        return None
    return number if phonenumbers.is_valid_number(number) else None


def parse_phone(candidate: str, hinted: bool, wide: bool = False) -> PhoneNumber | None:
    """The valid number ``candidate`` is written as, or None.

    ``wide``: a hint word stands right before the candidate, so national numbers of
    more regions are tried (``HINTED_EXTRA_REGIONS``). Not for ``assume_hint`` (a
    whole value under a column rule): phone pseudonyms must be invalid numbers, and
    hardly any 10-digit string is invalid in every one of 20 regions."""
    extra = HINTED_EXTRA_REGIONS if wide else ()
    core = _EXTENSION.sub("", candidate)
    if _DECIMAL.fullmatch(core):
        return None  # 0.592668133 is a number, not a phone
    if _DATE.fullmatch(core):
        return None
    count = _digits(core)
    if not MIN_DIGITS <= count <= MAX_DIGITS:
        return None
    head = candidate.lstrip("(")
    if head.startswith("+"):
        return _valid(candidate, None)
    if head.startswith("00"):
        return _valid("+" + head[2:], None)
    if head.startswith("0"):
        if count < 9:
            return None
        for region in TRUNK_REGIONS + extra:
            number = _valid(candidate, region)
            if number is not None:
                return number
        return None
    if _US.fullmatch(core):
        number = _valid(candidate, "US")
        if number is not None or not wide:
            return number  # after a hint word, "335-474-0384" may be Italian
    # Three or more groups opening with three digits; not ddd-dd-dddd (a US
    # SSN), and not a dotted quad unless a hint word says so ("612.34.71.33"
    # is a Spanish mobile only when "Tel:" stands before it).
    separators = len(_GROUP_SEPARATORS.findall(core))
    grouped = (
        separators >= 2
        and _GROUPED_START.match(core) is not None
        and "/" not in core
        and (hinted or not _DOTTED_QUAD.fullmatch(core))
        and not _SSN_SHAPE.fullmatch(core)
    )
    if count in (9, 10) and grouped:
        for region in GROUPED_REGIONS:
            number = _valid(candidate, region)
            if number is not None:
                return number
    if _IN_GROUPED.fullmatch(core):
        return _valid(candidate, "IN")
    if (hinted and core.isdigit()) or (wide and separators >= 1):
        for region in HINTED_REGIONS + extra:
            number = _valid(candidate, region)
            if number is not None:
                return number
    return None


def _opens(text: str, group: tuple[int, int]) -> bool:
    """Whether a group can open a phone number of its own: "+...", "(...", an
    international prefix ("0044"), or one token with inner separators ("206-886-4764")."""
    token = text[group[0] : group[1]]
    return (
        token[0] in "+("
        or (token.startswith("00") and 4 <= len(token) <= 5)
        or "-" in token[1:-1]
        or "." in token[1:-1]
    )


def _segments(text: str, groups: list[tuple[int, int]], out: list[tuple[int, int]]) -> None:
    """Numbers inside a longer invalid candidate: from its first group on, the
    longest valid run of groups, then again from the group after it.

    Left-anchored, or anchored at a group that opens a number (``_opens``): so "020 7946 0958
    2024" yields the phone number but "5508 0503 0626 4453" (a card-like number) does
    not yield "0503 0626 4453", nor "+49(0) 015177033" the "015177033" after an invalid
    country prefix.
    """
    i = 0
    while i < len(groups):
        for j in range(min(len(groups), i + MAX_GROUPS), i, -1):
            start, end = groups[i][0], groups[j - 1][1]
            if j - i == len(groups):
                continue  # the whole candidate was already tried
            sub = text[start:end]
            if MIN_DIGITS <= _digits(sub) <= MAX_DIGITS + 6 and parse_phone(sub, False):
                out.append((start, end))
                i = j
                break
        else:
            # No number from here: go on at the next group that opens a number
            # ("+..." or "(..."), so "req=88 (612) 743-0039" still yields the phone.
            i = next((k for k in range(i + 1, len(groups)) if _opens(text, groups[k])), len(groups))


def find_phones(text: str, assume_hint: bool = False) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for m in _CANDIDATE.finditer(text):
        candidate = m.group()
        number = parse_phone(candidate, assume_hint)
        if number is None and not assume_hint:
            # Bare digits, a dotted quad, a national number of a region not tried
            # by default: a phone number only after a hint word ("Tel:", a phone
            # column's name); look for one only now, the search costs more.
            if _HINT.search(text, max(0, m.start() - 32), m.start()) is not None:
                number = parse_phone(candidate, True, wide=True)
        if number is not None:
            out.append(m.span())
            continue
        if " " not in candidate:
            continue
        groups = [
            (m.start() + g.start(), m.start() + g.end()) for g in re.finditer(r"\S+", candidate)
        ]
        _segments(text, groups, out)
    return out


def e164(value: str) -> str | None:
    """A canonical spelling for hashing, so "+44 20 7946 0958" and "020 7946 0958" agree."""
    number = parse_phone(value, hinted=True)
    if number is None:
        return None
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return formatted + (f"x{number.extension}" if number.extension else "")


def country_code_digits(value: str) -> int:
    """How many digits of an international number are its country code (0 if national)."""
    head = value.lstrip("(")
    if not (head.startswith("+") or head.startswith("00")):
        return 0
    number = parse_phone(value, hinted=True)
    return len(str(number.country_code)) if number is not None else 0
