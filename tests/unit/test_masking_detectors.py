"""Tables of values each detector must find, and look-alikes it must leave alone."""

from __future__ import annotations

import pytest

from wardgate.masking import ENTITIES, Finding, find

# (text, the exact substring that must be found, entity)
POSITIVES: list[tuple[str, str, str]] = [
    # email
    ("jane.doe@example.com", "jane.doe@example.com", "email"),
    ("Note: write to Jane.Doe+news@mail.example.co.uk, not bob", "Jane.Doe+news@mail.example.co.uk", "email"),
    ("Jane <jane@example.org>", "jane@example.org", "email"),
    ("mailto:ops@example.io?subject=x", "ops@example.io", "email"),
    ("JOHN@EXAMPLE.COM", "JOHN@EXAMPLE.COM", "email"),
    ("müller@bücher.de", "müller@bücher.de", "email"),
    ("user@xn--bcher-kva.de", "user@xn--bcher-kva.de", "email"),
    # credit cards: Visa, Mastercard (both ranges), Amex, Discover, JCB, Diners, UnionPay, Maestro
    ("4111111111111111", "4111111111111111", "credit_card"),
    ("card 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111", "credit_card"),
    ("5500-0000-0000-0004", "5500-0000-0000-0004", "credit_card"),
    ("2221000000000009", "2221000000000009", "credit_card"),
    ("3782 822463 10005", "3782 822463 10005", "credit_card"),
    ("6011111111111117", "6011111111111117", "credit_card"),
    ("3530111333300000", "3530111333300000", "credit_card"),
    ("30569309025904", "30569309025904", "credit_card"),
    ("6200000000000005", "6200000000000005", "credit_card"),
    ("6759 6498 2643 8453", "6759 6498 2643 8453", "credit_card"),
    ("4111 1111 1111 1111 12", "4111 1111 1111 1111", "credit_card"),
    ("qty 2 4111 1111 1111 1111", "4111 1111 1111 1111", "credit_card"),
    ("SSN 123-45-6789 4111 1111 1111 1111", "4111 1111 1111 1111", "credit_card"),
    # IBAN
    ("DE89370400440532013000", "DE89370400440532013000", "iban"),
    ("IBAN: GB82 WEST 1234 5698 7654 32.", "GB82 WEST 1234 5698 7654 32", "iban"),
    ("FR1420041010050500013M02606", "FR1420041010050500013M02606", "iban"),
    ("NO9386011117947", "NO9386011117947", "iban"),
    ("pay NL91ABNA0417164300 now", "NL91ABNA0417164300", "iban"),
    # phone
    ("+44 20 7946 0958", "+44 20 7946 0958", "phone"),
    ("call +1 (415) 555-2671 now", "+1 (415) 555-2671", "phone"),
    ("(415) 555-2671", "(415) 555-2671", "phone"),
    ("415.555.2671", "415.555.2671", "phone"),
    ("020 7946 0958", "020 7946 0958", "phone"),
    ("+49(0)30 1234567", "+49(0)30 1234567", "phone"),
    ("06 12 34 56 78", "06 12 34 56 78", "phone"),
    ("06.12.34.56.78", "06.12.34.56.78", "phone"),
    ("0044 20 7946 0958", "0044 20 7946 0958", "phone"),
    ("612 34 56 78", "612 34 56 78", "phone"),
    ("+91 98765 43210", "+91 98765 43210", "phone"),
    ("Tel: 4155552671", "4155552671", "phone"),
    ("415-555-2671x123", "415-555-2671x123", "phone"),
    ("020 7946 0958 2024", "020 7946 0958", "phone"),
    # SSN
    ("123-45-6789", "123-45-6789", "ssn"),
    ("SSN: 123456789", "123456789", "ssn"),
    ("social security number 123 45 6789", "123 45 6789", "ssn"),
    # national IDs
    ("NI number AB 12 34 56 C", "AB 12 34 56 C", "national_id"),
    ("AB123456C", "AB123456C", "national_id"),
    ("DNI 12345678Z", "12345678Z", "national_id"),
    ("X1234567L", "X1234567L", "national_id"),
    ("RSSMRA85T10A562S", "RSSMRA85T10A562S", "national_id"),
    ("NIR 2 55 08 14 168 025 38", "2 55 08 14 168 025 38", "national_id"),
    ("255081416802538", "255081416802538", "national_id"),
    ("BSN: 111222333", "111222333", "national_id"),
    # IP addresses
    ("8.8.8.8", "8.8.8.8", "ipv4"),
    ("from 203.0.113.7:443", "203.0.113.7", "ipv4"),
    ("login from 10.1.2.3.", "10.1.2.3", "ipv4"),
    ("2001:4860:4860::8888", "2001:4860:4860::8888", "ipv6"),
    ("[2a00:1450:4001:82b::200e]:443", "2a00:1450:4001:82b::200e", "ipv6"),
    ("fe80::1%eth0", "fe80::1%eth0", "ipv6"),
    ("::ffff:192.0.2.1", "::ffff:192.0.2.1", "ipv6"),
    # JWT
    (
        "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
        "jwt",
    ),
    ("eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", "jwt"),
    # secrets
    ("AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "secret"),
    ("key ASIAY34FZKBOKMUTVV7A used", "ASIAY34FZKBOKMUTVV7A", "secret"),
    ("ghp_" + "a" * 36, "ghp_" + "a" * 36, "secret"),
    ("github_pat_" + "A1b2" * 20, "github_pat_" + "A1b2" * 20, "secret"),
    ("xoxb-123456789012-1234567890123-abcdefABCDEF", "xoxb-123456789012-1234567890123-abcdefABCDEF", "secret"),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "secret"),
    ("password=hunter2 user=bob", "hunter2", "secret"),
    ("pwd: s3cr3t!", "s3cr3t!", "secret"),
    ('{"password": "p@ss w0rd"}', "p@ss w0rd", "secret"),
    ("DB_PASSWORD='abc123'", "abc123", "secret"),
    ("client_secret=xyz&scope=read", "xyz", "secret"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "secret"),
    ("postgres://app:S3cret@db.example.com:5432/shop", "S3cret", "secret"),
    ("redis://:pa55@cache:6379/0", "pa55", "secret"),
    ("ALTER ROLE app PASSWORD 'md5abc'", "md5abc", "secret"),
    ("Authorization: Bearer abcdefghijklmnop1234", "abcdefghijklmnop1234", "secret"),
]  # fmt: skip

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n"
    "aNgx3ihJdsbNl/GkN4nBAUR0K7dm2VTh1ImsF1ctV0aB8kc2CaN2C4G5N6ZSW9yA\n"
    "-----END RSA PRIVATE KEY-----"
)

NEGATIVES: list[str] = [
    # The first groups of a UUID are not a phone number (found by the property tests).
    "07062414-6786-ce98-6f1d-09bf2c576150",
    # identifiers, times, versions, amounts, numbers
    "550e8400-e29b-41d4-a716-446655440000",
    "2024-01-15T10:30:00.123456Z",
    "2024-01-15 10:30:01 INFO worker started pid=4211",
    "15/01/2024",
    "15.01.2024",
    "1.2.3",
    "v10.0.19045",
    "10.0.19045.2965",
    "1.2.3.4-rc1",
    "1,234.56",
    "$ 12,345,678.90",
    "1 234 567,89 €",
    "42",
    "1705312345",
    "1705312345678",
    "1234567890123456789",
    "3.14159",
    "0.592668133",
    "-12.5",
    "ORD-2024-004512",
    "ORD-4111111111111111",
    "build 20240115.3",
    "INV/2024/00123",
    "git 3f2a9bc, sha 3f2a9bc1d4e5f60718293a4b5c6d7e8f90a1b2c3",
    # cards that fail Luhn or the issuer ranges
    "4111 1111 1111 1112",
    "1234567812345670",
    "7111111111111114",
    "5705-9467-3768-5655-403",
    "4006381333931",  # an EAN-13 barcode, also Luhn-valid
    # IBANs with a wrong check, length or country
    "DE88370400440532013000",
    "DE8937040044053201300",
    "QQ89370400440532013000",
    # phones that are not valid numbers, and numbers that are not phones
    "+1 555 0100",
    "+44 7700 900123",  # Ofcom drama range
    "123-456-7890",
    "12345678",
    "5009806360",
    # SSNs that can never be issued
    "000-12-3456",
    "666-12-3456",
    "912-34-5678",
    "123-00-4567",
    "123-45-0000",
    "123456789",
    # national IDs with a wrong check or an unissued prefix
    "ZZ 12 34 56 A",
    "GB123456A",
    "AB123456E",
    "12345678A",
    "RSSMRA85T10A562X",
    "255081416802539",
    "111222334",
    # emails that are not addresses
    "user@localhost",
    "@handle",
    "logo@2x.png",
    "a@b.c",
    "john..doe@example.com",
    "pkg@1.2.3",
    # addresses that are not (or not someone's) addresses
    "999.1.1.1",
    "1.2.3",
    "127.0.0.1",
    "0.0.0.0",
    "::1",
    "::",
    "12:30:45",
    "00:1a:2b:3c:4d:5e",
    "std::vector<int>",
    "bad::cafe",
    # JWT look-alikes
    "eyJ0eXAiOiJKV1QifQ.e30.abcdef",
    "abc.def.ghi",
    # secret look-alikes and references
    "The password policy requires 12 characters",
    "Forgot your password? Reset it here",
    "max_tokens 512",
    "token_count=17",
    "api_key: null",
    "password: ${DB_PASSWORD}",
    "password: $DB_PASSWORD",
    "secret: env:APP_SECRET",
    "password=[secret]",
    "password=****",
    "password=h:3f2a9bc1d4e5f607",
    "postgres://app:****@db/x",
    "AKIA1234",
    "ghp_short",
    "sk_live_",
    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----",
    "Bearer token required",
    "https://example.com:443/path",
    # already masked
    "[email] [credit_card] [secret] ****",
    "j****@*****.com **** **** **** 9012 DE******************3000",
    "h:3f2a9bc1d4e5f607",
]


def _found(text: str) -> list[tuple[str, str]]:
    return [(text[f.start : f.end], f.entity) for f in find(text)]


@pytest.mark.parametrize(("text", "value", "entity"), POSITIVES)
def test_positive(text: str, value: str, entity: str) -> None:
    assert (value, entity) in _found(text)


def test_pem_private_key_block() -> None:
    text = f"key:\n{PEM}\nend"
    assert _found(text) == [(PEM, "secret")]
    escaped = PEM.replace("\n", "\\n")
    assert _found(f'{{"key": "{escaped}"}}') == [(escaped, "secret")]


def test_truncated_pem_block_masks_the_base64_that_follows() -> None:
    text = PEM.rsplit("\n", 1)[0] + "\nthen prose follows here."
    (value, entity), *_ = _found(text)
    assert entity == "secret" and value.startswith("-----BEGIN") and "prose" not in value


@pytest.mark.parametrize("text", NEGATIVES)
def test_negative(text: str) -> None:
    assert _found(text) == []


def test_free_text_keeps_everything_but_the_values() -> None:
    text = "Customer jane@example.com called from +44 20 7946 0958 about order ORD-2024-004512."
    assert _found(text) == [("jane@example.com", "email"), ("+44 20 7946 0958", "phone")]


def test_findings_are_sorted_and_disjoint() -> None:
    text = "a@b.com 4111111111111111 8.8.8.8 123-45-6789 DE89370400440532013000 password=x"
    findings = find(text)
    assert [f.entity for f in findings] == ["email", "credit_card", "ipv4", "ssn", "iban", "secret"]
    for left, right in zip(findings, findings[1:], strict=False):
        assert left.end <= right.start


def test_connection_string_password_wins_over_the_email_it_resembles() -> None:
    assert _found("mysql://root:pw@db.example.com/app") == [("pw", "secret")]


def test_jwt_wins_over_the_token_assignment_it_sits_in() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    assert _found(f"token={token}") == [(token, "jwt")]


def test_ipv4_wins_over_a_phone_reading() -> None:
    assert _found("172.20.236.75") == [("172.20.236.75", "ipv4")]


def test_entities_filter() -> None:
    text = "jane@example.com +44 20 7946 0958"
    assert [f.entity for f in find(text, frozenset({"phone"}))] == ["phone"]
    assert find(text, frozenset()) == []


def test_unknown_entity_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown masking entities: mail"):
        find("x", frozenset({"mail"}))


def test_offsets_are_characters_not_bytes() -> None:
    text = "Grüße an jürgen@example.de"
    assert find(text) == [Finding(9, 26, "email")]
    assert text[9:26] == "jürgen@example.de"


def test_entities_constant() -> None:
    assert ENTITIES == {
        "email", "credit_card", "iban", "phone", "ssn", "national_id", "ipv4", "ipv6", "jwt", "secret",
    }  # fmt: skip
