"""Deterministic, format-preserving pseudonyms under a key, and how to know our own.

A pseudonym is drawn from HMAC-SHA256(key, entity, normalised value), so the
same value always gets the same pseudonym (joins and GROUP BY still work) and
nobody without the key can compute or reverse it.

Masking must be idempotent, yet a good pseudonym looks like real data and is
found again by ``detect``. Two ways out, chosen per entity:

* **Reserved space** - the pseudonym lies where real values cannot:
  SSNs in area 9xx with group 01-49 (neither SSN nor ITIN), IPv4 in
  240.0.0.0/4, IPv6 in 2001:db8::/32, UK NINOs with a never-issued prefix,
  and phone numbers and other national IDs that keep the format but fail the
  check (invalid for phonenumbers, wrong check letter or key). These are never
  detected again, or are recognised without the key.
* **Keyed tag** - where the pseudonym must pass the check (Luhn cards, mod-97
  IBANs, emails, JWTs, tokens), its last characters are a MAC of the rest
  under the key. The masker recognises the tag and leaves the value alone.
  A real value passes the tag check by chance with probability 10^-6 for a
  16-digit card (6 tag digits), 2^-30 for an email, 2^-40 for a secret value
  (docs/masking.md lists them all).

Phone and national-ID pseudonyms also end in a 4-digit tag: free text never
finds them, but a column rule masks whatever the value is, and the tag lets
``Masker.mask_whole`` leave them alone (only when they are not valid numbers,
so no real number passes for one). When no safe same-format value turns up
the functions return None and the masker uses the keyed hash token instead.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import string
from collections.abc import Callable

from . import checks, credentials, phones
from .entities import (
    CREDIT_CARD,
    EMAIL,
    IBAN,
    IPV4,
    IPV6,
    JWT,
    NATIONAL_ID,
    PHONE,
    SECRET,
    SSN,
)

DIGITS = string.digits
LOWER = string.ascii_lowercase
UPPER = string.ascii_uppercase
B32 = LOWER + "234567"
B64URL = string.ascii_letters + DIGITS + "-_"
B64 = string.ascii_letters + DIGITS + "+/"

Detected = Callable[[str], bool]

_ATTEMPTS = 64


class KeyedStream:
    """An endless run of choices drawn from HMAC-SHA256(key, label, value)."""

    __slots__ = ("_seed", "_block", "_pos", "_counter")

    def __init__(self, key: bytes, label: str, value: str) -> None:
        message = label.encode() + b"\x00" + value.encode("utf-8", "surrogatepass")
        self._seed = hmac.digest(key, message, "sha256")
        self._block = self._seed
        self._pos = 0
        self._counter = 0

    def _byte(self) -> int:
        if self._pos == len(self._block):
            self._counter += 1
            self._block = hashlib.sha256(self._seed + self._counter.to_bytes(4, "big")).digest()
            self._pos = 0
        value = self._block[self._pos]
        self._pos += 1
        return value

    def below(self, n: int) -> int:
        """Uniform in ``range(n)``, by rejection so no residue is favoured."""
        size = max(1, (n - 1).bit_length() + 7 >> 3)
        limit = (256**size // n) * n
        while True:
            value = 0
            for _ in range(size):
                value = value << 8 | self._byte()
            if value < limit:
                return value % n

    def choice(self, alphabet: str) -> str:
        return alphabet[self.below(len(alphabet))]

    def text(self, alphabet: str, length: int) -> str:
        return "".join(self.choice(alphabet) for _ in range(length))


def tag(key: bytes, label: str, body: str, alphabets: list[str]) -> str:
    """A MAC of ``body`` spelled in the given per-position alphabets."""
    stream = KeyedStream(key, "tag:" + label, body)
    return "".join(stream.choice(a) for a in alphabets)


def class_alphabet(ch: str) -> str | None:
    """The alphabet a character is replaced from, or None to keep it as it is."""
    if "0" <= ch <= "9":
        return DIGITS
    if ch.isalpha():
        return UPPER if ch.isupper() else LOWER
    return None


def refill(template: str, chars: str, slot: Callable[[str], bool]) -> str:
    """``template`` with its slot characters replaced, in order, by ``chars``."""
    it = iter(chars)
    return "".join(next(it) if slot(c) else c for c in template)


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def _is_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _compact(value: str) -> str:
    return "".join(c for c in value if _is_alnum(c)).upper()


# ---------------------------------------------------------------------- email

_EMAIL_PSEUDONYM = re.compile(r"([a-z2-7]{8})([a-z2-7]{6})(@[a-z]{8}\.[^.@\s]+)")


def email(key: bytes, value: str) -> str:
    _, _, domain = value.rpartition("@")
    parent, _, tld = domain.rpartition(".")
    host = KeyedStream(key, "email-domain", parent.lower()).text(LOWER, 8)
    body = KeyedStream(key, "email-local", value.lower()).text(B32, 8)
    tail = f"@{host}.{tld.lower()}"
    return body + tag(key, EMAIL, body + tail, [B32] * 6) + tail


def is_email(key: bytes, value: str) -> bool:
    m = _EMAIL_PSEUDONYM.fullmatch(value)
    return m is not None and tag(key, EMAIL, m[1] + m[3], [B32] * 6) == m[2]


# ------------------------------------------------------------- payment cards


def _card_split(digits: str, r: checks.CardRange) -> tuple[int, int]:
    """(body digits, tag digits) between the kept prefix and the Luhn digit."""
    free = len(digits) - r.prefix_len - 1
    tag_len = min(6, free // 2)
    return free - tag_len, tag_len


def credit_card(key: bytes, value: str, only_card: Detected) -> str | None:
    """Same issuer range, length and separators, Luhn-valid, tagged. Drawn again
    in the rare case the result also reads as something that outranks a card
    (a 15-digit number can pass a French NIR's mod-97 key)."""
    digits = "".join(c for c in value if _is_digit(c))
    r = checks.card_range(digits)
    if r is None:
        return None
    prefix = digits[: r.prefix_len]
    body_len, tag_len = _card_split(digits, r)
    stream = KeyedStream(key, CREDIT_CARD, digits)
    for _ in range(_ATTEMPTS):
        body = stream.text(DIGITS, body_len)
        number = prefix + body + tag(key, CREDIT_CARD, prefix + body, [DIGITS] * tag_len)
        number += checks.luhn_check_digit(number)
        if checks.card_range(number) is r:
            candidate = refill(value, number, _is_digit)
            if only_card(candidate):
                return candidate
    return None


def is_credit_card(key: bytes, value: str) -> bool:
    digits = "".join(c for c in value if _is_digit(c))
    r = checks.card_range(digits)
    if r is None or len(digits) < r.prefix_len + 3:
        return False
    body_len, tag_len = _card_split(digits, r)
    head = digits[: r.prefix_len + body_len]
    expected = tag(key, CREDIT_CARD, head, [DIGITS] * tag_len)
    return digits[len(head) : len(head) + tag_len] == expected and checks.luhn_ok(digits)


# ------------------------------------------------------------------------ IBAN


def _iban_parts(compact: str) -> tuple[str, list[str], int]:
    bban = compact[4:]
    alphabets = [DIGITS if c.isdigit() else UPPER for c in bban]
    return compact[:2], alphabets, min(6, len(bban) // 2)


def iban(key: bytes, value: str) -> str:
    compact = _compact(value)
    country, alphabets, tag_len = _iban_parts(compact)
    stream = KeyedStream(key, IBAN, compact)
    body = "".join(stream.choice(a) for a in alphabets[: len(alphabets) - tag_len])
    bban = body + tag(key, IBAN, country + body, alphabets[len(alphabets) - tag_len :])
    number = country + checks.iban_check_digits(country, bban) + bban
    return refill(value, number, _is_alnum)


def is_iban(key: bytes, value: str) -> bool:
    compact = _compact(value)
    if len(compact) < 8 or not checks.iban_ok(compact):
        return False
    country, alphabets, tag_len = _iban_parts(compact)
    split = len(compact) - tag_len
    expected = tag(key, IBAN, country + compact[4:split], alphabets[len(alphabets) - tag_len :])
    return compact[split:] == expected


# ------------------------------------------------------------- digit tags

DIGIT_TAG_MAX = 4


def _digit_positions(value: str) -> list[int]:
    return [i for i, c in enumerate(value) if _is_digit(c)]


def _digit_tag_slots(value: str) -> set[int]:
    positions = _digit_positions(value)
    return set(positions[len(positions) - min(DIGIT_TAG_MAX, len(positions) // 2) :])


def with_digit_tag(key: bytes, label: str, value: str) -> str:
    """``value`` with its last digits (up to 4) replaced by a MAC of the rest."""
    slots = _digit_tag_slots(value)
    if not slots:
        return value
    order = sorted(slots)
    mac = tag(key, label, _tag_input(value, slots), [DIGITS] * len(order))
    chars = list(value)
    for i, ch in zip(order, mac, strict=True):
        chars[i] = ch
    return "".join(chars)


def has_digit_tag(key: bytes, label: str, value: str) -> bool:
    slots = _digit_tag_slots(value)
    return len(slots) >= 3 and with_digit_tag(key, label, value) == value


# ---------------------------------------------------------------------- phone


def phone(key: bytes, value: str, detected: Detected) -> str | None:
    """Same punctuation and digit count, country code and trunk 0 kept, and not a
    valid number any more, so free text never finds it again. Its last digits
    are a tag, so a column rule (which masks whatever the value is) knows it."""
    head = value.lstrip("(")
    keep = phones.country_code_digits(value)
    if head.startswith("00"):
        keep += 2
    elif head.startswith("0"):
        keep = 1
    seed = phones.e164(value) or "".join(c for c in value if _is_digit(c))
    stream = KeyedStream(key, PHONE, seed)
    digits = [c for c in value if _is_digit(c)]
    for _ in range(_ATTEMPTS):
        new = "".join(digits[:keep]) + stream.text(DIGITS, len(digits) - keep)
        candidate = with_digit_tag(key, PHONE, refill(value, new, _is_digit))
        if not detected(candidate):
            return candidate
    return None


# ------------------------------------------------------------------------ SSN


def ssn(key: bytes, value: str) -> str:
    """Area 900-999 and group 01-49: the SSN format, yet never an SSN or an ITIN."""
    stream = KeyedStream(key, SSN, "".join(c for c in value if _is_digit(c)))
    number = f"{900 + stream.below(100):03d}{1 + stream.below(49):02d}{1 + stream.below(9999):04d}"
    return refill(value, number, _is_digit)


# Nine digits in the pseudonym range, laid out with spaces or dashes as the masked value
# was (``ssn`` keeps the original layout, so ``030 123078`` becomes ``954 450855``).
_SSN_SHAPE = re.compile(r"[0-9](?:[ -]?[0-9]){8}")
_SSN_PSEUDONYM_DIGITS = re.compile(r"9[0-9]{2}(?:0[1-9]|[1-4][0-9])(?!0000)[0-9]{4}")


def is_ssn(value: str) -> bool:
    if _SSN_SHAPE.fullmatch(value) is None:
        return False
    digits = value.replace(" ", "").replace("-", "")
    return _SSN_PSEUDONYM_DIGITS.fullmatch(digits) is not None


# ----------------------------------------------------------------- national IDs

_NINO_SHAPE = re.compile(r"[A-Z]{2}[0-9]{6}[A-D]")
_NINO_PAIRS = sorted(checks.NINO_UNUSED_PREFIXES)
_DNI_SHAPE = re.compile(r"[0-9]{8}[A-Z]")
_NIE_SHAPE = re.compile(r"[XYZ][0-9]{7}[A-Z]")
_CF_SHAPE = re.compile(r"[A-Z]{6}[0-9A-Z]{2}[A-Z][0-9A-Z]{2}[A-Z][0-9A-Z]{3}[A-Z]")
_NIR_SHAPE = re.compile(r"[0-9]{5}(?:[0-9]{2}|2[AB])[0-9]{8}")
_BSN_SHAPE = re.compile(r"[0-9]{9}")


def _wrong_letter(stream: KeyedStream, right: str, letters: str) -> str:
    return letters[(letters.index(right) + 1 + stream.below(len(letters) - 1)) % len(letters)]


def _national_candidate(stream: KeyedStream, compact: str) -> str | None:
    if _NINO_SHAPE.fullmatch(compact):
        pair = _NINO_PAIRS[stream.below(len(_NINO_PAIRS))]
        return pair + stream.text(DIGITS, 6) + stream.choice("ABCD")
    if _DNI_SHAPE.fullmatch(compact):
        number = stream.text(DIGITS, 8)
        return number + _wrong_letter(stream, checks.dni_letter(number), checks.DNI_LETTERS)
    if _NIE_SHAPE.fullmatch(compact):
        lead = stream.choice("XYZ")
        number = stream.text(DIGITS, 7)
        right = checks.dni_letter(str("XYZ".index(lead)) + number)
        return lead + number + _wrong_letter(stream, right, checks.DNI_LETTERS)
    if _CF_SHAPE.fullmatch(compact):
        chars = [
            stream.choice(checks.CF_MONTHS) if i == 8 else stream.choice(class_alphabet(c) or UPPER)
            for i, c in enumerate(compact[:15])
        ]
        first15 = "".join(chars)
        return first15 + _wrong_letter(stream, checks.cf_check_letter(first15), UPPER)
    if _NIR_SHAPE.fullmatch(compact):
        body = (
            compact[0]
            + stream.text(DIGITS, 2)
            + f"{1 + stream.below(12):02d}"
            + f"{1 + stream.below(95):02d}"
            + stream.text(DIGITS, 6)
        )
        key = (checks.nir_key(body) + stream.below(96)) % 97 + 1  # any key but the right one
        return body + f"{key:02d}"
    if _BSN_SHAPE.fullmatch(compact):
        number = stream.text(DIGITS, 9)
        return None if checks.bsn_ok(number) else number
    return None


def national_id(key: bytes, value: str, detected: Detected) -> str | None:
    """Same shape, but failing its own check (or with an unissued prefix), and
    with a digit tag like phone numbers."""
    compact = _compact(value)
    stream = KeyedStream(key, NATIONAL_ID, compact)
    for _ in range(_ATTEMPTS):
        candidate = _national_candidate(stream, compact)
        if candidate is None:
            if not any(shape.fullmatch(compact) for shape in _NATIONAL_SHAPES):
                return None
            continue
        masked = with_digit_tag(key, NATIONAL_ID, refill(value, candidate, _is_alnum))
        if not detected(masked):
            return masked
    return None


_NATIONAL_SHAPES = (_NINO_SHAPE, _DNI_SHAPE, _NIE_SHAPE, _CF_SHAPE, _NIR_SHAPE, _BSN_SHAPE)


def is_national_id(value: str) -> bool:
    """A NINO with a prefix that is never issued is one of ours; the other kinds fail
    their check and are never found, so they need no recognising."""
    compact = _compact(value)
    return _NINO_SHAPE.fullmatch(compact) is not None and compact[:2] in checks.NINO_UNUSED_PREFIXES


# ------------------------------------------------------------------ addresses

_V4_BASE = int(ipaddress.IPv4Address("240.0.0.0"))
_V4_SPAN = int(ipaddress.IPv4Address("255.255.255.254")) - _V4_BASE + 1
_V4_RESERVED = checks.IPV4_PSEUDONYM_SPACE
_V6_RESERVED = checks.IPV6_PSEUDONYM_SPACE


def ipv4(key: bytes, value: str) -> str:
    canonical = str(ipaddress.IPv4Address(value))
    stream = KeyedStream(key, IPV4, canonical)
    return str(ipaddress.IPv4Address(_V4_BASE + stream.below(_V4_SPAN)))


def is_ipv4(value: str) -> bool:
    try:
        return ipaddress.IPv4Address(value) in _V4_RESERVED
    except ValueError:
        return False


def ipv6(key: bytes, value: str) -> str:
    address, sep, zone = value.partition("%")
    canonical = str(ipaddress.IPv6Address(address))
    stream = KeyedStream(key, IPV6, canonical)
    low = int.from_bytes(bytes(stream.below(256) for _ in range(12)), "big")
    pseudo = ipaddress.IPv6Address(int(_V6_RESERVED.network_address) | low)
    return str(pseudo) + sep + zone


def is_ipv6(value: str) -> bool:
    try:
        return ipaddress.IPv6Address(value.partition("%")[0]) in _V6_RESERVED
    except ValueError:
        return False


# ---------------------------------------------------------- JWT and secrets


Slot = Callable[[str], str | None]


def _tag_input(value: str, tagged: set[int]) -> str:
    """What the tag is a MAC of: the value with the tag positions blanked out."""
    return "".join("\x00" if i in tagged else c for i, c in enumerate(value))


def _layout(
    value: str, start: int, slot: Slot, tag_max: int
) -> tuple[list[str | None], list[int], set[int]]:
    alphabets = [None] * start + [slot(c) for c in value[start:]]
    positions = [i for i, a in enumerate(alphabets) if a is not None]
    tag_len = min(tag_max, len(positions) // 2)
    return (
        alphabets,
        positions[: len(positions) - tag_len],
        set(positions[len(positions) - tag_len :]),
    )


def slotted(key: bytes, label: str, value: str, start: int, slot: Slot, tag_max: int) -> str:
    """Replace each slot character after ``start`` from its alphabet; the last
    ``min(tag_max, slots // 2)`` slots carry a tag over all the others."""
    alphabets, body, tagged = _layout(value, start, slot, tag_max)
    stream = KeyedStream(key, label, value)
    chars = list(value)
    for i in body:
        chars[i] = stream.choice(alphabets[i] or "")
    order = sorted(tagged)
    mac = tag(key, label, _tag_input("".join(chars), tagged), [alphabets[i] or "" for i in order])
    for i, ch in zip(order, mac, strict=True):
        chars[i] = ch
    return "".join(chars)


def is_slotted(key: bytes, label: str, value: str, start: int, slot: Slot, tag_max: int) -> bool:
    alphabets, _, tagged = _layout(value, start, slot, tag_max)
    if len(tagged) < 4:
        return False  # too short to tell ours from a real value: mask it again
    order = sorted(tagged)
    mac = tag(key, label, _tag_input(value, tagged), [alphabets[i] or "" for i in order])
    return "".join(value[i] for i in order) == mac


def _b64url(ch: str) -> str | None:
    return B64URL if ch != "." else None


def jwt(key: bytes, value: str) -> str:
    """Header kept (it only names the algorithm); payload and signature replaced."""
    return slotted(key, JWT, value, value.index(".") + 1, _b64url, 8)


def is_jwt(key: bytes, value: str) -> bool:
    return "." in value and is_slotted(key, JWT, value, value.index(".") + 1, _b64url, 8)


def _pem_slot_factory(value: str) -> Slot:
    escaped = False

    def slot(ch: str) -> str | None:
        nonlocal escaped
        was_escaped, escaped = escaped, ch == "\\" and not escaped
        if was_escaped or not (_is_alnum(ch) or ch in "+/"):
            return None
        return B64

    return slot


_SECRET_VALUE = re.compile(r"[a-z2-7]{20}")


def _pem_bounds(value: str) -> tuple[int, int] | None:
    begin = credentials.PEM_BEGIN.match(value)
    if begin is None:
        return None
    footer = value.rfind("-----END ")
    return begin.end(), footer if footer > begin.end() else len(value)


def secret(key: bytes, value: str) -> str:
    """Tokens keep their vendor prefix and character classes; private keys keep
    their armour lines; anything else becomes a 20-character tagged value
    (which also hides the length of a password)."""
    bounds = _pem_bounds(value)
    if bounds is not None:
        start, stop = bounds
        inner = slotted(key, SECRET, value[:stop], start, _pem_slot_factory(value), 8)
        return inner + value[stop:]
    prefix = credentials.TOKEN_PREFIX.match(value)
    if prefix is not None and credentials.TOKEN.fullmatch(value):
        return slotted(key, SECRET, value, prefix.end(), class_alphabet, 8)
    body = KeyedStream(key, SECRET, value).text(B32, 12)
    return body + tag(key, SECRET, body, [B32] * 8)


def is_secret(key: bytes, value: str) -> bool:
    bounds = _pem_bounds(value)
    if bounds is not None:
        start, stop = bounds
        return is_slotted(key, SECRET, value[:stop], start, _pem_slot_factory(value), 8)
    prefix = credentials.TOKEN_PREFIX.match(value)
    if prefix is not None and credentials.TOKEN.fullmatch(value):
        return is_slotted(key, SECRET, value, prefix.end(), class_alphabet, 8)
    if _SECRET_VALUE.fullmatch(value) is None:
        return False
    return tag(key, SECRET, value[:12], [B32] * 8) == value[12:]


# ---------------------------------------------------------------------- generic

GENERIC_TAG_MIN_SLOTS = 12


def generic(key: bytes, value: str) -> str:
    """Same length, each letter or digit replaced by one of its class; values with
    at least 12 letters and digits carry a 6-character tag and are recognised."""
    slots = sum(1 for c in value if class_alphabet(c) is not None)
    tag_max = 6 if slots >= GENERIC_TAG_MIN_SLOTS else 0
    return slotted(key, "generic", value, 0, class_alphabet, tag_max)


def is_generic(key: bytes, value: str) -> bool:
    slots = sum(1 for c in value if class_alphabet(c) is not None)
    return slots >= GENERIC_TAG_MIN_SLOTS and is_slotted(
        key, "generic", value, 0, class_alphabet, 6
    )
