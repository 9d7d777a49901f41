"""What each strategy turns each entity into, and the Masker's contract."""

from __future__ import annotations

import ipaddress
import re

import phonenumbers
import pytest

from wardgate.masking import Masker, Strategy, find
from wardgate.masking.checks import card_range, dni_ok, iban_ok, luhn_ok, nino_ok, ssn_ok

KEY = b"test-key-0123456789abcdef"
REDACT = Masker(KEY, Strategy.REDACT)
PARTIAL = Masker(KEY, Strategy.PARTIAL)
HASH = Masker(KEY, Strategy.HASH)
PSEUDO = Masker(KEY, Strategy.PSEUDONYM)
OTHER_KEY = Masker(b"another-key-0123456789", Strategy.PSEUDONYM)

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
    "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n"
    "-----END PRIVATE KEY-----"
)

SAMPLES = {
    "email": "Jane.Doe@example.co.uk",
    "credit_card": "4111-1111-1111-1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "phone": "+44 20 7946 0958",
    "ssn": "123-45-6789",
    "national_id": "AB 12 34 56 C",
    "ipv4": "203.0.113.7",
    "ipv6": "2001:4860:4860::8888",
    "jwt": JWT,
    "secret": "AKIAIOSFODNN7EXAMPLE",
}


@pytest.mark.parametrize(("entity", "value"), SAMPLES.items())
def test_redact_writes_the_entity_name(entity: str, value: str) -> None:
    assert REDACT.mask_text(f"x {value} y") == f"x [{entity}] y"


PARTIALS = [
    ("Jane.Doe@example.co.uk", "J****@*****.uk"),
    ("4111-1111-1111-1111", "****-****-****-1111"),
    ("4111 1111 1111 1111", "**** **** **** 1111"),
    ("4111111111111111", "************1111"),
    ("DE89 3704 0044 0532 0130 00", "DE** **** **** **** **30 00"),
    ("+44 20 7946 0958", "+** ** **** **58"),
    ("(415) 555-2671", "(***) ***-**71"),
    ("123-45-6789", "***-**-6789"),
    ("AB 12 34 56 C", "** ** ** *6 C"),
    ("12345678Z", "*******8Z"),
    ("203.0.113.7", "203.0.*.*"),
    ("2001:4860:4860::8888", "2001:4860:*:*:*:*:*:*"),
    (JWT, "eyJhbGciOiJIUzI1NiJ9.****.****"),
    ("AKIAIOSFODNN7EXAMPLE", "AKIA****"),
    ("ghp_" + "a1" * 18, "ghp_****"),
    (PEM, "-----BEGIN PRIVATE KEY-----\n****\n-----END PRIVATE KEY-----"),
]


@pytest.mark.parametrize(("value", "expected"), PARTIALS)
def test_partial_keeps_a_safe_part(value: str, expected: str) -> None:
    assert PARTIAL.mask_text(value) == expected
    assert find(expected) == []


def test_partial_masks_the_value_of_an_assignment_only() -> None:
    assert PARTIAL.mask_text("password=hunter2 user=bob") == "password=**** user=bob"
    assert PARTIAL.mask_text("postgres://app:S3cret@db:5432/x") == "postgres://app:****@db:5432/x"


def test_hash_is_a_short_keyed_token() -> None:
    token = HASH.mask_text("4111 1111 1111 1111")
    assert re.fullmatch(r"h:[0-9a-f]{16}", token) and not token[2:].isdigit()
    assert HASH.mask_text("4111-1111-1111-1111") == token  # same card, other spelling
    assert Masker(b"other-key", Strategy.HASH).mask_text("4111 1111 1111 1111") != token
    assert HASH.mask_text("JANE@EXAMPLE.COM") == HASH.mask_text("jane@example.com")
    assert HASH.mask_text("+44 20 7946 0958") == HASH.mask_text("020 7946 0958")


def test_hash_token_is_not_read_back_as_data() -> None:
    text = "password=hunter2 card 4111111111111111 mail jane@example.com"
    once = HASH.mask_text(text)
    assert find(once) == []
    assert HASH.mask_text(once) is once


# ------------------------------------------------------------------ pseudonyms


def test_pseudonym_email_is_an_email_with_the_same_tld() -> None:
    out = PSEUDO.mask_text("Jane.Doe@example.co.uk")
    assert re.fullmatch(r"[a-z2-7]{14}@[a-z]{8}\.uk", out)
    assert [f.entity for f in find(out)] == ["email"]
    same_domain = PSEUDO.mask_text("bob@example.co.uk")
    assert same_domain.split("@")[1] == out.split("@")[1]  # grouping by domain still works


@pytest.mark.parametrize(
    "card", ["4111-1111-1111-1111", "5500 0000 0000 0004", "378282246310005", "6759649826438453"]
)
def test_pseudonym_card_keeps_length_separators_and_issuer(card: str) -> None:
    out = PSEUDO.mask_text(card)
    digits = out.replace(" ", "").replace("-", "")
    original = card.replace(" ", "").replace("-", "")
    assert out != card and len(out) == len(card)
    assert [c for c in out if not c.isdigit()] == [c for c in card if not c.isdigit()]
    assert luhn_ok(digits) and card_range(digits) is card_range(original)


def test_pseudonym_iban_keeps_country_and_length_and_passes_mod97() -> None:
    out = PSEUDO.mask_text("DE89 3704 0044 0532 0130 00")
    compact = out.replace(" ", "")
    assert out.startswith("DE") and len(out) == len("DE89 3704 0044 0532 0130 00")
    assert iban_ok(compact) and compact != "DE89370400440532013000"
    gb = PSEUDO.mask_text("GB82WEST12345698765432")
    assert gb[:2] == "GB" and gb[4:8].isalpha() and iban_ok(gb)


@pytest.mark.parametrize(
    "phone", ["+44 20 7946 0958", "(415) 555-2671", "020 7946 0958", "06.12.34.56.78"]
)
def test_pseudonym_phone_keeps_the_format_and_is_no_valid_number(phone: str) -> None:
    out = PSEUDO.mask_text(phone)
    assert out != phone and len(out) == len(phone)
    assert re.sub(r"[0-9]", "0", out) == re.sub(r"[0-9]", "0", phone)
    if phone.startswith("+44"):
        assert out.startswith("+44 ")
        assert not phonenumbers.is_valid_number(phonenumbers.parse(out, None))
    assert find(out) == []


def test_pseudonym_ssn_is_ssn_shaped_in_an_area_never_issued() -> None:
    out = PSEUDO.mask_text("123-45-6789")
    assert re.fullmatch(r"9[0-9]{2}-[0-4][0-9]-[0-9]{4}", out) and out[4:6] != "00"
    assert not ssn_ok(out.replace("-", "")) and find(out) == []


def test_pseudonym_national_ids_keep_their_shape() -> None:
    nino = PSEUDO.mask_text("AB 12 34 56 C")
    assert re.fullmatch(r"[A-Z]{2} [0-9]{2} [0-9]{2} [0-9]{2} [A-D]", nino)
    assert not nino_ok(nino.replace(" ", ""))
    dni = PSEUDO.mask_text("12345678Z")
    assert re.fullmatch(r"[0-9]{8}[A-Z]", dni) and not dni_ok(dni)
    cf = PSEUDO.mask_text("RSSMRA85T10A562S")
    assert re.fullmatch(r"[A-Z]{6}[0-9]{2}[A-Z][0-9]{2}[A-Z][0-9]{3}[A-Z]", cf)
    for value in (nino, dni, cf):
        assert find(value) == []


def test_pseudonym_addresses_stay_in_their_family() -> None:
    v4 = PSEUDO.mask_text("203.0.113.7")
    assert ipaddress.IPv4Address(v4) in ipaddress.IPv4Network("240.0.0.0/4")
    v6 = PSEUDO.mask_text("2001:4860:4860::8888")
    assert ipaddress.IPv6Address(v6) in ipaddress.IPv6Network("2001:db8::/32")


def test_pseudonym_jwt_keeps_its_header_and_shape() -> None:
    out = PSEUDO.mask_text(JWT)
    assert out.split(".")[0] == JWT.split(".")[0]
    assert [len(p) for p in out.split(".")] == [len(p) for p in JWT.split(".")]
    assert out != JWT and [f.entity for f in find(out)] == ["jwt"]


@pytest.mark.parametrize(
    "token",
    [
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_" + "aB3" * 12,
        "xoxb-123456789012-1234567890123-abcdefABCDEF",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    ],
)
def test_pseudonym_token_keeps_prefix_length_and_classes(token: str) -> None:
    out = PSEUDO.mask_text(token)
    prefix = re.match(r"AKIA|ghp_|xoxb-|sk_live_", token)
    assert prefix is not None and out.startswith(prefix.group())
    assert out != token and len(out) == len(token)
    classes = [
        ("d" if c.isdigit() else "u" if c.isupper() else "l" if c.islower() else c) for c in out
    ]
    assert classes == [
        ("d" if c.isdigit() else "u" if c.isupper() else "l" if c.islower() else c) for c in token
    ]


def test_pseudonym_private_key_keeps_its_armour() -> None:
    out = PSEUDO.mask_text(PEM)
    assert out.startswith("-----BEGIN PRIVATE KEY-----\n") and out.endswith(
        "-----END PRIVATE KEY-----"
    )
    assert len(out) == len(PEM) and out != PEM


def test_pseudonym_of_a_password_hides_its_length() -> None:
    short = PSEUDO.mask_text("password=abc")
    long = PSEUDO.mask_text("password=correct-horse-battery-staple")
    assert re.fullmatch(r"password=[a-z2-7]{20}", short)
    assert re.fullmatch(r"password=[a-z2-7]{20}", long)


@pytest.mark.parametrize("value", SAMPLES.values())
def test_pseudonyms_are_deterministic_keyed_and_idempotent(value: str) -> None:
    out = PSEUDO.mask_text(value)
    assert out != value
    assert Masker(KEY, Strategy.PSEUDONYM).mask_text(value) == out
    assert OTHER_KEY.mask_text(value) != out
    assert PSEUDO.mask_text(out) == out


def test_pseudonym_joins_survive_free_text() -> None:
    a = PSEUDO.mask_text("order by jane@example.com")
    b = PSEUDO.mask_text("jane@example.com")
    assert a == "order by " + b


# -------------------------------------------------------------- whole values


def test_mask_whole_with_an_entity_keeps_the_shape() -> None:
    assert PARTIAL.mask_whole("jane@example.com", "email") == "j****@*****.com"
    assert PARTIAL.mask_whole(" 123456789 ", "ssn") == " *****6789 "  # column rule: no hint needed
    assert REDACT.mask_whole("jane@example.com", "email") == "[email]"
    assert re.fullmatch(
        r"[a-z2-7]{14}@[a-z]{8}\.com", PSEUDO.mask_whole("jane@example.com", "email")
    )


def test_mask_whole_falls_back_to_generic() -> None:
    assert REDACT.mask_whole("hunter2") == "[redacted]"
    assert REDACT.mask_whole("not an email", "email") == "[email]"
    assert PARTIAL.mask_whole("hunter2") == "****"
    assert PARTIAL.mask_whole("not an email", "email") == "****"
    assert re.fullmatch(r"h:[0-9a-f]{16}", HASH.mask_whole("hunter2"))
    out = PSEUDO.mask_whole("Alice Smith-Jones 42")
    assert len(out) == len("Alice Smith-Jones 42") and out != "Alice Smith-Jones 42"
    assert re.fullmatch(r"[A-Z][a-z]{4} [A-Z][a-z]{4}-[A-Z][a-z]{4} [0-9]{2}", out)


@pytest.mark.parametrize("masker", [REDACT, PARTIAL, HASH, PSEUDO], ids=lambda m: m.strategy.value)
@pytest.mark.parametrize(
    ("value", "entity"),
    [*((v, e) for e, v in SAMPLES.items()), ("hunter2", "secret"), ("Alice Smith-Jones 42", None)],
)
def test_mask_whole_is_idempotent(masker: Masker, value: str, entity: str | None) -> None:
    once = masker.mask_whole(value, entity)
    assert once != value
    assert masker.mask_whole(once, entity) == once


def test_mask_whole_short_generic_pseudonyms_are_not_recognised() -> None:
    """Documented limit: under 12 letters and digits there is no room for a tag."""
    once = PSEUDO.mask_whole("Bob")
    assert len(once) == 3 and once != "Bob"
    assert PSEUDO.mask_whole(once) != once


def test_mask_whole_refuses_unknown_entities() -> None:
    with pytest.raises(ValueError, match="unknown masking entities"):
        REDACT.mask_whole("x", "mail")


def test_mask_whole_leaves_empty_values() -> None:
    assert PSEUDO.mask_whole("") == ""


# -------------------------------------------------------------- text and bytes


def test_mask_text_returns_the_same_object_when_nothing_changes() -> None:
    text = "nothing to see here 2024-01-15"
    assert REDACT.mask_text(text) is text
    masked = PSEUDO.mask_text("jane@example.com")
    assert PSEUDO.mask_text(masked) is masked  # found, but already ours


def test_mask_bytes() -> None:
    assert REDACT.mask_bytes(b"nothing here") is None
    assert REDACT.mask_bytes(b"") is None
    assert REDACT.mask_bytes(b"mail jane@example.com now") == b"mail [email] now"


def test_mask_bytes_keeps_undecodable_bytes() -> None:
    data = b"\xff\xfe jane@example.com \xc3"
    assert REDACT.mask_bytes(data) == b"\xff\xfe [email] \xc3"


def test_mask_bytes_other_encodings() -> None:
    text = "Grüße, jürgen@example.de"
    assert REDACT.mask_bytes(text.encode("latin-1"), "latin-1") == "Grüße, [email]".encode(
        "latin-1"
    )
    assert REDACT.mask_bytes(text.encode("utf-16-le"), "utf-16-le") == "Grüße, [email]".encode(
        "utf-16-le"
    )
    assert REDACT.mask_bytes("nothing".encode("utf-16-le"), "utf-16-le") is None


def test_masker_refuses_a_bad_configuration() -> None:
    with pytest.raises(ValueError, match="non-empty bytes"):
        Masker(b"", Strategy.REDACT)
    with pytest.raises(ValueError, match="unknown masking entities"):
        Masker(KEY, Strategy.REDACT, frozenset({"emails"}))
    with pytest.raises(ValueError):
        Masker(KEY, "blur")  # type: ignore[arg-type]
    assert Masker(KEY, "partial").strategy is Strategy.PARTIAL  # type: ignore[arg-type]


def test_masker_masks_only_its_entities() -> None:
    emails_only = Masker(KEY, Strategy.REDACT, frozenset({"email"}))
    assert emails_only.mask_text("jane@example.com +44 20 7946 0958") == "[email] +44 20 7946 0958"
