"""Check-digit and structure rules that turn a regex candidate into a finding.

Everything here is a pure function of a string: no regex scanning of free text
(that is ``detect``), no keys (that is ``pseudonyms``).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from dataclasses import dataclass

# ---------------------------------------------------------------- payment cards


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The digit that makes ``partial + digit`` pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = ord(ch) - 48
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


@dataclass(frozen=True, slots=True)
class CardRange:
    """Issuer numbers ``low..high`` over the first ``prefix_len`` digits."""

    brand: str
    low: int
    high: int
    prefix_len: int
    lengths: frozenset[int]


def _lengths(low: int, high: int) -> frozenset[int]:
    return frozenset(range(low, high + 1))


# Order matters: the first range that matches the number's prefix decides its
# brand, so the narrow ranges sit before the broad Maestro 56-69 range.
CARD_RANGES: tuple[CardRange, ...] = (
    CardRange("visa", 4, 4, 1, frozenset({13, 16, 19})),
    CardRange("mastercard", 51, 55, 2, frozenset({16})),
    CardRange("mastercard", 2221, 2720, 4, frozenset({16})),
    CardRange("amex", 34, 34, 2, frozenset({15})),
    CardRange("amex", 37, 37, 2, frozenset({15})),
    CardRange("discover", 6011, 6011, 4, _lengths(16, 19)),
    CardRange("discover", 644, 649, 3, _lengths(16, 19)),
    CardRange("discover", 65, 65, 2, _lengths(16, 19)),
    CardRange("jcb", 3528, 3589, 4, _lengths(16, 19)),
    CardRange("jcb", 1800, 1800, 4, frozenset({15})),
    CardRange("jcb", 2131, 2131, 4, frozenset({15})),
    CardRange("diners", 300, 305, 3, _lengths(14, 19)),
    CardRange("diners", 36, 36, 2, _lengths(14, 19)),
    CardRange("diners", 38, 39, 2, _lengths(14, 19)),
    CardRange("unionpay", 62, 62, 2, _lengths(16, 19)),
    # Maestro runs from 12 digits, but only its classic ranges are trusted that short.
    CardRange("maestro", 50, 50, 2, _lengths(12, 19)),
    CardRange("maestro", 56, 58, 2, _lengths(12, 19)),
    CardRange("maestro", 6304, 6304, 4, _lengths(12, 19)),
    CardRange("maestro", 6390, 6390, 4, _lengths(12, 19)),
    CardRange("maestro", 67, 67, 2, _lengths(12, 19)),
    CardRange("maestro", 59, 69, 2, _lengths(13, 19)),
)


def card_range(digits: str) -> CardRange | None:
    """The issuer range a card number belongs to, ignoring length and Luhn."""
    for r in CARD_RANGES:
        if len(digits) >= r.prefix_len and r.low <= int(digits[: r.prefix_len]) <= r.high:
            return r
    return None


def card_ok(digits: str) -> bool:
    """A known issuer range, a length that issuer uses, and the Luhn check."""
    r = card_range(digits)
    return r is not None and len(digits) in r.lengths and luhn_ok(digits)


def gtin_ok(digits: str) -> bool:
    """The GS1 check digit of a UPC-A (12) or EAN-13 barcode number."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits[:-1])))
    return (10 - total % 10) % 10 == int(digits[-1])


# ------------------------------------------------------------------------ IBAN

# Total IBAN length per country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}  # fmt: skip


def iban_mod97(compact: str) -> int:
    """``int(rearranged IBAN) % 97`` with letters as 10..35; 1 means valid."""
    rearranged = compact[4:] + compact[:4]
    remainder = 0
    for ch in rearranged:
        value = ord(ch) - 48 if ch <= "9" else ord(ch) - 55
        remainder = (remainder * (100 if value > 9 else 10) + value) % 97
    return remainder


def iban_check_digits(country: str, bban: str) -> str:
    return f"{98 - iban_mod97(country + '00' + bban):02d}"


def iban_ok(compact: str) -> bool:
    """Country in the registry, the registry length, alphanumeric BBAN, mod-97 == 1."""
    length = IBAN_LENGTHS.get(compact[:2])
    if length is None or len(compact) != length:
        return False
    if not (compact[2:4].isdigit() and compact[4:].isalnum() and compact[4:].isascii()):
        return False
    if compact[4:] != compact[4:].upper():
        return False
    return iban_mod97(compact) == 1


# ---------------------------------------------------------------------- US SSN


def ssn_ok(digits: str) -> bool:
    """Area not 000, 666 or 9xx; group not 00; serial not 0000."""
    if len(digits) != 9 or not digits.isdigit():
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


# ---------------------------------------------------------------- national IDs

# UK National Insurance number: two-letter prefix, six digits, suffix A-D.
NINO_FIRST = frozenset("ABCEGHJKLMNOPRSTWXYZ")  # never D F I Q U V
NINO_SECOND = frozenset("ABCEGHJKLMNPRSTWXYZ")  # never D F I O Q U V
NINO_UNUSED_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def nino_ok(compact: str) -> bool:
    return (
        len(compact) == 9
        and compact[0] in NINO_FIRST
        and compact[1] in NINO_SECOND
        and compact[:2] not in NINO_UNUSED_PREFIXES
        and compact[2:8].isdigit()
        and compact[8] in "ABCD"
    )


# Spanish DNI (8 digits + letter) and NIE (X/Y/Z + 7 digits + letter).
DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def dni_letter(number: str) -> str:
    return DNI_LETTERS[int(number) % 23]


def dni_ok(compact: str) -> bool:
    if len(compact) != 9:
        return False
    head = compact[:8]
    if compact[0] in "XYZ":
        head = str("XYZ".index(compact[0])) + compact[1:8]
    return head.isdigit() and compact[8] == dni_letter(head)


# Italian codice fiscale: 15 characters and a check letter.
_CF_ODD = {
    **dict(zip("0123456789", (1, 0, 5, 7, 9, 13, 15, 17, 19, 21), strict=True)),
    **dict(
        zip(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            (1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10,
             22, 25, 24, 23),
            strict=True,
        )
    ),
}  # fmt: skip
_CF_EVEN = {
    **{str(d): d for d in range(10)},
    **{chr(65 + i): i for i in range(26)},
}
CF_MONTHS = "ABCDEHLMPRST"
CF_OMOCODE = "LMNPQRSTUV"  # letters that may stand for digits 0-9


def cf_check_letter(first15: str) -> str:
    total = 0
    for i, ch in enumerate(first15):
        total += _CF_ODD[ch] if i % 2 == 0 else _CF_EVEN[ch]
    return chr(65 + total % 26)


def cf_ok(code: str) -> bool:
    if len(code) != 16 or not code.isascii() or not code.isalnum() or code != code.upper():
        return False
    return code[15] == cf_check_letter(code[:15])


# French NIR (numéro de sécurité sociale): 13 characters and a 2-digit key.


def nir_key(first13: str) -> int:
    number = first13.replace("2A", "19").replace("2B", "18")
    return 97 - int(number) % 97


def nir_ok(compact: str) -> bool:
    # 1/2: men and women; 7/8: temporary numbers. (3/4 are not used, and would
    # make every 15-digit Amex or Diners number a candidate.)
    if len(compact) != 15 or compact[0] not in "1278":
        return False
    month = int(compact[3:5]) if compact[3:5].isdigit() else -1
    if not (1 <= month <= 12 or 20 <= month <= 42 or 50 <= month <= 99):
        return False
    dept = compact[5:7]
    body = compact[:13]
    if not (dept.isdigit() or dept in ("2A", "2B")):
        return False
    if not (body[:5].isdigit() and body[7:].isdigit() and compact[13:].isdigit()):
        return False
    return nir_key(body) == int(compact[13:])


# Dutch BSN: nine digits passing the "elfproef" (11-test).


def bsn_ok(digits: str) -> bool:
    if len(digits) != 9 or not digits.isdigit() or digits == "000000000":
        return False
    total = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True))
    return (total - int(digits[8])) % 11 == 0


# ---------------------------------------------------------------------- email

# Common file extensions that look like top-level domains in names such as
# "logo@2x.png"; none of them is a TLD anyone sends mail to.
FILE_EXTENSIONS = frozenset(
    "png jpg jpeg gif svg webp bmp ico tif tiff pdf txt csv tsv json xml yaml yml html htm "
    "css js mjs cjs tsx jsx log tgz zip tar lock ini cfg conf toml sql exe dll jar war "
    "class java cpp hpp bak tmp old swp mov mp3 mp4 wav avi mkv".split()
)


def email_ok(local: str, domain: str) -> bool:
    if not local or len(local) > 64 or len(domain) > 253:
        return False
    if local[0] == "." or local[-1] == "." or ".." in local:
        return False
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    for label in labels:
        if not label or len(label) > 63 or label[0] == "-" or label[-1] == "-":
            return False
    tld = labels[-1].lower()
    if tld.startswith("xn--"):
        return len(tld) > 4
    return len(tld) >= 2 and tld.isalpha() and tld not in FILE_EXTENSIONS


# ------------------------------------------------------------------------ JWT


def b64url_decode(part: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        return None


def jwt_header_ok(header: str) -> bool:
    """The first part decodes to a JSON object naming an ``alg``."""
    raw = b64url_decode(header)
    if raw is None:
        return False
    try:
        parsed = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(parsed, dict) and "alg" in parsed


# Address space no one is given: pseudonyms of IP addresses are drawn from it, and the
# detectors skip it, so a pseudonym is never detected (and masked) again.
IPV4_PSEUDONYM_SPACE = ipaddress.IPv4Network("240.0.0.0/4")  # reserved
IPV6_PSEUDONYM_SPACE = ipaddress.IPv6Network("2001:db8::/32")  # documentation
