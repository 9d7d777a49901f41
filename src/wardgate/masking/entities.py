"""Entity names, findings and the order in which overlapping findings win."""

from __future__ import annotations

from dataclasses import dataclass

EMAIL = "email"
CREDIT_CARD = "credit_card"
IBAN = "iban"
PHONE = "phone"
SSN = "ssn"
NATIONAL_ID = "national_id"
IPV4 = "ipv4"
IPV6 = "ipv6"
JWT = "jwt"
SECRET = "secret"

ENTITIES: frozenset[str] = frozenset(
    {EMAIL, CREDIT_CARD, IBAN, PHONE, SSN, NATIONAL_ID, IPV4, IPV6, JWT, SECRET}
)

# When two candidate findings overlap, the one with the higher priority is kept.
# A JWT is named as such even when it is also the value of "token=...". Secrets
# come next: a password inside a connection string also looks like the local
# part of an email ("user:pass@host.com"), and masking the password is what
# matters. National IDs beat cards: a French NIR written in groups holds runs
# of digits that pass Luhn by chance, and its mod-97 key is the stronger test.
# Phone numbers come last: their shapes are the loosest.
PRIORITY: dict[str, int] = {
    JWT: 100,
    SECRET: 95,
    IBAN: 90,
    EMAIL: 85,
    SSN: 82,
    NATIONAL_ID: 81,
    CREDIT_CARD: 80,
    IPV6: 65,
    IPV4: 62,
    PHONE: 60,
}


@dataclass(frozen=True, slots=True)
class Finding:
    """A sensitive value at ``text[start:end]`` (offsets in characters, not bytes)."""

    start: int
    end: int
    entity: str


def check_entities(entities: frozenset[str]) -> frozenset[str]:
    """Refuse unknown entity names so a typo in a masking rule is loud, not a silent leak."""
    unknown = entities - ENTITIES
    if unknown:
        raise ValueError(
            f"unknown masking entities: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(ENTITIES))})"
        )
    return frozenset(entities)
