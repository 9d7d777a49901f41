"""Redaction tokens, partial masks and hash tokens, and telling them apart from data.

None of these outputs is ever detected again (no detector matches ``[email]``,
``****`` or an ``h:`` token), which is what makes redact, partial and hash
idempotent in free text. For whole values (column rules) ``is_mask_output``
recognises them so a second pass leaves them as they are.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from enum import StrEnum

from . import credentials, phones
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
    SECRET,
    SSN,
)


class Strategy(StrEnum):
    REDACT = "redact"
    PARTIAL = "partial"
    HASH = "hash"
    PSEUDONYM = "pseudonym"


GENERIC_TOKEN = "[redacted]"
STARS = "****"


def redact_token(entity: str | None) -> str:
    return f"[{entity}]" if entity is not None else GENERIC_TOKEN


REDACT_TOKENS = frozenset({redact_token(e) for e in ENTITIES} | {GENERIC_TOKEN})

# ----------------------------------------------------------------------- hash

_HASH_TOKEN = re.compile(r"h:(?=[0-9]{0,15}[a-f])[0-9a-f]{16}")


def hash_token(key: bytes, normalised: str) -> str:
    """``h:`` and 16 hex digits of HMAC-SHA256, with at least one letter among
    them so the token can never read as a run of digits (a card, a phone)."""
    digest = hmac.digest(key, b"hash\x00" + normalised.encode("utf-8", "surrogatepass"), "sha256")
    hexed = digest.hex()
    for i in range(0, 64, 16):
        window = hexed[i : i + 16]
        if not window.isdigit():
            return "h:" + window
    return "h:a" + hexed[1:16]  # all 64 digits decimal: about 1 in 10^13


def normalise(entity: str | None, value: str) -> str:
    """The spelling that hashes and pseudonyms are computed from, so that the
    same value written differently ("4111 1111 ..." and "4111-1111-...",
    "+44 20 ..." and "020 ...") masks the same."""
    if entity == EMAIL:
        return value.lower()
    if entity == PHONE:
        return phones.e164(value) or "".join(c for c in value if c.isdigit())
    if entity in (CREDIT_CARD, IBAN, SSN, NATIONAL_ID):
        return "".join(c for c in value if c.isascii() and c.isalnum()).upper()
    if entity in (IPV4, IPV6):
        try:
            return str(ipaddress.ip_address(value.partition("%")[0]))
        except ValueError:
            return value
    return value


# -------------------------------------------------------------------- partial


def _is_digit(ch: str) -> bool:
    return "0" <= ch <= "9"


def _is_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _star_all_but(value: str, keep_last: int, slot: str = "digit") -> str:
    """Stars over every digit (or letter/digit) except the last ``keep_last``."""
    is_slot = _is_digit if slot == "digit" else _is_alnum
    total = sum(1 for c in value if is_slot(c))
    out: list[str] = []
    seen = 0
    for c in value:
        if is_slot(c):
            seen += 1
            out.append(c if seen > total - keep_last else "*")
        else:
            out.append(c)
    return "".join(out)


def _partial_email(value: str) -> str:
    local, _, domain = value.rpartition("@")
    tld = domain.rpartition(".")[2]
    return f"{local[:1]}{STARS}@*****.{tld}"


def _partial_iban(value: str) -> str:
    masked = _star_all_but(value, 4, "alnum")
    lead = [i for i, c in enumerate(value) if c.isascii() and c.isalnum()][:2]
    chars = list(masked)
    for i in lead:
        chars[i] = value[i]
    return "".join(chars)


def _partial_ipv4(value: str) -> str:
    a, b, _, _ = value.split(".")
    return f"{a}.{b}.*.*"


def _partial_ipv6(value: str) -> str:
    hextets = ipaddress.IPv6Address(value.partition("%")[0]).exploded.split(":")
    head = ":".join(h.lstrip("0") or "0" for h in hextets[:2])
    return head + ":*" * 6


def _partial_secret(value: str) -> str:
    begin = credentials.PEM_BEGIN.match(value)
    if begin is not None:
        return f"{begin.group()}\n{STARS}\n-----END {begin.group(1)}-----"
    prefix = credentials.TOKEN_PREFIX.match(value)
    if prefix is not None and credentials.TOKEN.fullmatch(value):
        return prefix.group() + STARS
    return STARS


def partial(entity: str | None, value: str) -> str:
    """Keep a part that identifies nothing on its own: the email's first letter
    and TLD, the card's last 4, IBAN country and last 4, the phone's last 2, the
    SSN's last 4, a national ID's last 2, the IP's network half, the JWT header,
    a token's vendor prefix. Generic values keep nothing."""
    if entity == EMAIL:
        return _partial_email(value)
    if entity == CREDIT_CARD:
        return _star_all_but(value, 4)
    if entity == IBAN:
        return _partial_iban(value)
    if entity == PHONE:
        return _star_all_but(value, 2)
    if entity == SSN:
        return _star_all_but(value, 4)
    if entity == NATIONAL_ID:
        return _star_all_but(value, 2, "alnum")
    if entity == IPV4:
        return _partial_ipv4(value)
    if entity == IPV6:
        return _partial_ipv6(value)
    if entity == JWT:
        return value.partition(".")[0] + f".{STARS}.{STARS}"
    if entity == SECRET:
        return _partial_secret(value)
    return STARS


# What partial() returns, per entity, so a column value masked once is left alone.
_PARTIAL_SHAPES: dict[str | None, re.Pattern[str]] = {
    EMAIL: re.compile(r"[^@\s*]?\*{4}@\*{5}\.[^\s.@*]+"),
    CREDIT_CARD: re.compile(r"[*\s\-]*(?:[0-9][\s\-]?){3}[0-9]"),
    IBAN: re.compile(r"[A-Z]{2}[*\s]*(?:[0-9A-Z]\s?){0,4}"),
    PHONE: re.compile(r"[+*\s().\-/x#ext]*[0-9]?[\s().\-/]*[0-9]?"),
    SSN: re.compile(r"[*\s\-]*(?:[0-9][\s\-]?){3}[0-9]"),
    NATIONAL_ID: re.compile(r"[*\s\-]*(?:[0-9A-Z][\s\-]?){0,2}"),
    IPV4: re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.\*\.\*"),
    IPV6: re.compile(r"[0-9a-f]{1,4}:[0-9a-f]{1,4}(?::\*){6}"),
    JWT: re.compile(r"eyJ[A-Za-z0-9_\-]*\.\*{4}\.\*{4}"),
    SECRET: re.compile(
        r"(?:AKIA|ASIA|gh[pousr]_|github_pat_|xox[abprs]-|(?:sk|rk)_(?:live|test)_)?\*{4}"
        r"|-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----\n\*{4}\n-----END \1-----"
    ),
    None: re.compile(r"\*{4}"),
}


def is_mask_output(value: str, entity: str | None) -> bool:
    """A redaction token, a hash token, or what partial() makes for ``entity``."""
    if value in REDACT_TOKENS or _HASH_TOKEN.fullmatch(value):
        return True
    if "*" not in value:
        return False
    shape = _PARTIAL_SHAPES.get(entity)
    if shape is not None and shape.fullmatch(value):
        return True
    return _PARTIAL_SHAPES[None].fullmatch(value) is not None
