"""An independent labelled set for wardgate's content detectors.

Written from the entity definitions in docs/masking.md and from public format rules
(numbering plans, the IBAN registry, card issuer ranges, vendor token formats), *without*
reading the detectors' code or tests, and without asking phonenumbers or wardgate what is
valid: the labels are this file's own. It imports nothing from wardgate.

    from masking_labelled import generate
    samples = generate(seed=7, count=6000)   # list[Sample(text, gold=[(start, end, entity)])]

Each sample is one database value: a value alone, after a label, in a sentence, in a JSON
object, in a CSV row or in a log line. About a third of the samples hold only hard
negatives (order numbers, dates, versions, UUIDs, prices, ISBNs, tracking numbers, hashes,
timestamps, coordinates, Luhn-failing card-like numbers, IBANs with a wrong check).
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field

ENTITIES = ("email", "phone", "iban", "credit_card", "secret", "jwt", "ipv4")


@dataclass
class Sample:
    text: str
    gold: list[tuple[int, int, str]] = field(default_factory=list)
    kind: str = ""  # the generator that made the value (for error reports)


@dataclass
class Value:
    """A generated value; ``span`` is the sensitive part inside it (default: all)."""

    text: str
    entity: str | None
    kind: str
    span: tuple[int, int] | None = None
    extra: list[tuple[int, int, str]] = field(default_factory=list)  # more labelled parts
    label: str | None = None  # a label this value should be shown with (a hint)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _nz(rng: random.Random) -> str:
    return rng.choice("23456789")


# --- emails -------------------------------------------------------------------------

FIRST = [
    "anna",
    "jean",
    "li",
    "maria",
    "oliver",
    "sofia",
    "pierre",
    "lukas",
    "chen",
    "amelia",
    "noah",
    "fatima",
    "jose",
    "mehmet",
    "yuki",
    "olga",
    "liam",
    "emma",
    "giulia",
    "kwame",
]
LAST = [
    "smith",
    "dupont",
    "rossi",
    "müller",
    "garcia",
    "nguyen",
    "kowalski",
    "jansen",
    "o-neil",
    "van-dijk",
    "tanaka",
    "silva",
    "kim",
    "ivanova",
    "brown",
    "schmidt",
]
DOMAINS = [
    "example.com",
    "mail.example.org",
    "corp.example.co.uk",
    "gmail.com",
    "outlook.fr",
    "web.de",
    "uni-heidelberg.de",
    "acme.io",
    "shop.example.net",
    "company.com.au",
    "posteo.de",
    "proton.me",
    "student.kuleuven.be",
    "example.museum",
    "startup.ai",
]


def email(rng: random.Random) -> Value:
    first, last = rng.choice(FIRST), rng.choice(LAST).replace("ü", "u")
    local = rng.choice(
        [
            f"{first}.{last}",
            f"{first}_{last}{rng.randint(1, 99)}",
            f"{first[0]}{last}",
            f"{first}+{rng.choice(['news', 'shop', 'x'])}@".rstrip("@"),
            f"{first}.{last}.{rng.randint(1970, 2005)}",
            f"{first.upper()}.{last.capitalize()}",
            f"{last}{_digits(rng, 3)}",
            f"{first}-{last}",
        ]
    )
    return Value(f"{local}@{rng.choice(DOMAINS)}", "email", "email")


# --- phones -------------------------------------------------------------------------
# (country code, trunk prefix, national significant number groups). The numbers follow
# the published plans: area codes in use, mobile ranges, subscriber lengths.


def _us(rng: random.Random) -> list[str]:
    area = rng.choice(
        [
            "212",
            "415",
            "312",
            "617",
            "202",
            "303",
            "206",
            "512",
            "718",
            "646",
            "305",
            "404",
            "213",
            "702",
            "503",
            "919",
            "612",
            "808",
        ]
    )
    exch = _nz(rng) + _digits(rng, 2)
    while exch[1:] == "11" or exch == "555":
        exch = _nz(rng) + _digits(rng, 2)
    return [area, exch, _digits(rng, 4)]


def _gb(rng: random.Random) -> tuple[list[str], bool]:
    choice = rng.randrange(4)
    if choice == 0:
        return ["20", rng.choice("378") + _digits(rng, 3), _digits(rng, 4)], False
    if choice == 1:
        return [
            rng.choice(["161", "121", "131", "113", "117"]),
            _nz(rng) + _digits(rng, 2),
            _digits(rng, 4),
        ], False
    if choice == 2:
        return [
            "7" + rng.choice(["400", "500", "700", "800", "900", "911", "956"]),
            _nz(rng) + _digits(rng, 5),
        ], True
    return ["1223", _nz(rng) + _digits(rng, 5)], False


def _de(rng: random.Random) -> tuple[list[str], bool]:
    if rng.random() < 0.5:
        return [rng.choice(["30", "40", "89", "69", "221"]), _nz(rng) + _digits(rng, 6)], False
    return [
        rng.choice(["151", "160", "170", "171", "176", "152"]),
        _nz(rng) + _digits(rng, 6),
    ], True


def _fr(rng: random.Random) -> tuple[list[str], bool]:
    first = rng.choice("1234567")
    return [first, *(_digits(rng, 2) for _ in range(4))], first in "67"


def _nl(rng: random.Random) -> tuple[list[str], bool]:
    if rng.random() < 0.5:
        return ["6", _nz(rng) + _digits(rng, 3), _digits(rng, 4)], True
    return [
        rng.choice(["20", "10", "30", "70"]),
        _nz(rng) + _digits(rng, 2),
        _digits(rng, 4),
    ], False


def _it(rng: random.Random) -> tuple[list[str], bool]:
    if rng.random() < 0.5:
        return [
            "3" + rng.choice(["20", "28", "33", "35", "38", "40", "47", "49", "66", "92"]),
            _digits(rng, 3),
            _digits(rng, 4),
        ], True
    return ["0" + rng.choice(["6", "2"]), _nz(rng) + _digits(rng, 3), _digits(rng, 4)], False


def _es(rng: random.Random) -> tuple[list[str], bool]:
    if rng.random() < 0.5:
        return ["6" + _digits(rng, 2), _digits(rng, 2), _digits(rng, 2), _digits(rng, 2)], True
    return ["91", _nz(rng) + _digits(rng, 2), _digits(rng, 2), _digits(rng, 2)], False


def _au(rng: random.Random) -> tuple[list[str], bool]:
    if rng.random() < 0.5:
        return [
            "4" + rng.choice(["00", "01", "12", "13", "23", "38"]),
            _digits(rng, 3),
            _digits(rng, 3),
        ], True
    return [
        rng.choice(["2", "3", "7", "8"]),
        rng.choice("89") + _digits(rng, 3),
        _digits(rng, 4),
    ], False


def _ch(rng: random.Random) -> tuple[list[str], bool]:
    return [
        rng.choice(["44", "43", "22", "31", "79", "78"]),
        _nz(rng) + _digits(rng, 2),
        _digits(rng, 2),
        _digits(rng, 2),
    ], False


def _in(rng: random.Random) -> tuple[list[str], bool]:
    return [rng.choice("9876") + _digits(rng, 4), _digits(rng, 5)], True


def _br(rng: random.Random) -> tuple[list[str], bool]:
    return [
        rng.choice(["11", "21", "31", "61"]),
        "9" + _nz(rng) + _digits(rng, 3),
        _digits(rng, 4),
    ], True


def _jp(rng: random.Random) -> tuple[list[str], bool]:
    if rng.random() < 0.5:
        return ["3", _nz(rng) + _digits(rng, 3), _digits(rng, 4)], False
    return [rng.choice(["90", "80", "70"]), _nz(rng) + _digits(rng, 3), _digits(rng, 4)], True


def _be(rng: random.Random) -> tuple[list[str], bool]:
    return [
        "4" + rng.choice(["70", "75", "77", "78", "85", "96"]),
        _digits(rng, 2),
        _digits(rng, 2),
        _digits(rng, 2),
    ], True


def _se(rng: random.Random) -> tuple[list[str], bool]:
    return [
        "7" + rng.choice("0236"),
        _nz(rng) + _digits(rng, 2),
        _digits(rng, 2),
        _digits(rng, 2),
    ], True


def _pl(rng: random.Random) -> tuple[list[str], bool]:
    return [
        rng.choice(["50", "51", "53", "60", "66", "69", "72", "79", "88"]) + _digits(rng, 1),
        _digits(rng, 3),
        _digits(rng, 3),
    ], True


def _ie(rng: random.Random) -> tuple[list[str], bool]:
    return ["8" + rng.choice("35679"), _nz(rng) + _digits(rng, 2), _digits(rng, 4)], True


# country code, trunk ('' when none), generator
PLANS: dict[str, tuple[str, str, Callable[[random.Random], tuple[list[str], bool]]]] = {
    "GB": ("44", "0", _gb),
    "DE": ("49", "0", _de),
    "FR": ("33", "0", _fr),
    "NL": ("31", "0", _nl),
    "IT": ("39", "", _it),
    "ES": ("34", "", _es),
    "AU": ("61", "0", _au),
    "CH": ("41", "0", _ch),
    "IN": ("91", "0", _in),
    "BR": ("55", "0", _br),
    "JP": ("81", "0", _jp),
    "BE": ("32", "0", _be),
    "SE": ("46", "0", _se),
    "PL": ("48", "", _pl),
    "IE": ("353", "0", _ie),
}
EXTENSIONS = [
    " x{n}",
    " ext. {n}",
    " ext {n}",
    " Ext. {n}",
    " x {n}",
    " #{n}",
    ";ext={n}",
    " ext.{n}",
]
PHONE_LABELS = ["Phone", "Tel", "Tel.", "Mobile", "Telefon", "Téléphone", "Cell", "Contact number"]


def _join(groups: list[str], sep: str) -> str:
    return sep.join(groups)


def phone(rng: random.Random) -> Value:
    label = None
    if rng.random() < 0.3:
        groups = _us(rng)
        shape = rng.randrange(8)
        text = [
            f"({groups[0]}) {groups[1]}-{groups[2]}",
            "-".join(groups),
            ".".join(groups),
            "+1 " + " ".join(groups),
            "+1-" + "-".join(groups),
            "1-" + "-".join(groups),
            "+1" + "".join(groups),
            f"+1 ({groups[0]}) {groups[1]}-{groups[2]}",
        ][shape]
        kind = f"phone-US-{shape}"
    else:
        region = rng.choice(sorted(PLANS))
        cc, trunk, make = PLANS[region]
        groups, _mobile = make(rng)
        shape = rng.randrange(7)
        sep = rng.choice([" ", " ", "-", "."])
        if shape == 0:  # +CC groups
            text = f"+{cc} " + _join(groups, sep)
        elif shape == 1:  # +CC (0) groups: the trunk prefix in parentheses
            if not trunk:
                text = f"+{cc} " + _join(groups, sep)
            else:
                text = f"+{cc} ({trunk})" + rng.choice(["", " "]) + _join(groups, sep)
        elif shape == 2:  # 00CC groups
            text = f"00{cc} " + _join(groups, " ")
        elif shape == 3:  # compact E.164
            text = f"+{cc}" + "".join(groups)
        else:  # national, with its trunk prefix: the context says phone
            first = trunk + groups[0]
            if region in ("DE", "GB") and rng.random() < 0.3:
                text = f"({first}) " + _join(groups[1:], " ")
            elif region == "DE" and rng.random() < 0.3:
                text = f"{first}/" + "".join(groups[1:])
            else:
                text = _join([first, *groups[1:]], sep)
            label = rng.choice(PHONE_LABELS)
        kind = f"phone-{region}-{min(shape, 4)}"
    if rng.random() < 0.15:
        text += rng.choice(EXTENSIONS).format(n=_digits(rng, rng.randint(2, 4)))
        kind += "-ext"
    return Value(text, "phone", kind, label=label)


def phone_national_us(rng: random.Random) -> Value:
    """A North American number without +1, in a phone column or after a phone label."""
    groups = _us(rng)
    text = rng.choice([" ".join(groups), "".join(groups), f"{groups[0]} {groups[1]}-{groups[2]}"])
    return Value(text, "phone", "phone-US-national", label=rng.choice(PHONE_LABELS))


# --- IBANs --------------------------------------------------------------------------
# country: BBAN pattern ('n' digit, 'a' upper letter, 'c' letter or digit)
IBAN_FORMATS = {
    "DE": "n" * 18,
    "GB": "aaaa" + "n" * 14,
    "FR": "n" * 10 + "c" * 11 + "nn",
    "ES": "n" * 20,
    "IT": "a" + "n" * 10 + "c" * 12,
    "NL": "aaaa" + "n" * 10,
    "BE": "n" * 12,
    "CH": "n" * 5 + "c" * 12,
    "AT": "n" * 16,
    "PL": "n" * 24,
    "SE": "n" * 20,
    "IE": "aaaa" + "n" * 14,
    "PT": "n" * 21,
    "DK": "n" * 14,
    "NO": "n" * 11,
    "FI": "n" * 14,
    "LU": "nnn" + "c" * 13,
    "GR": "n" * 7 + "c" * 16,
    "CZ": "n" * 20,
    "SA": "nn" + "c" * 18,
    "AE": "n" * 19,
    "TR": "n" * 5 + "0" + "c" * 16,
    "HU": "n" * 24,
    "RO": "aaaa" + "c" * 16,
    "HR": "n" * 17,
    "LT": "n" * 16,
}


def _mod97(s: str) -> int:
    digits = "".join(str(int(ch, 36)) for ch in s)
    return int(digits) % 97


def _iban_raw(rng: random.Random, wrong: bool = False) -> str:
    country = rng.choice(sorted(IBAN_FORMATS))
    bban = ""
    for p in IBAN_FORMATS[country]:
        if p == "n":
            bban += rng.choice(string.digits)
        elif p == "a":
            bban += rng.choice(string.ascii_uppercase)
        elif p == "c":
            bban += rng.choice(string.ascii_uppercase + string.digits * 3)
        else:
            bban += p
    check = 98 - _mod97(bban + country + "00")
    if wrong:
        check = rng.choice([c for c in range(2, 99) if c != check])
    return f"{country}{check:02d}{bban}"


def _group4(s: str) -> str:
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


def iban(rng: random.Random) -> Value:
    raw = _iban_raw(rng)
    return Value(_group4(raw) if rng.random() < 0.5 else raw, "iban", "iban")


# --- cards --------------------------------------------------------------------------


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + _digits(rng, length - len(prefix) - 1)
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return body + str((10 - total % 10) % 10)


CARD_BRANDS: list[tuple[str, Callable[[random.Random], str], int, tuple[int, ...]]] = [
    ("visa", lambda r: "4", 16, (4, 4, 4, 4)),
    ("mastercard", lambda r: str(r.randint(51, 55)), 16, (4, 4, 4, 4)),
    ("mastercard2", lambda r: str(r.randint(2221, 2720)), 16, (4, 4, 4, 4)),
    ("amex", lambda r: r.choice(["34", "37"]), 15, (4, 6, 5)),
    ("discover", lambda r: "6011", 16, (4, 4, 4, 4)),
    ("jcb", lambda r: str(r.randint(3528, 3589)), 16, (4, 4, 4, 4)),
    ("diners", lambda r: "36", 14, (4, 6, 4)),
    ("unionpay", lambda r: "62", 16, (4, 4, 4, 4)),
]


def _spell_card(rng: random.Random, number: str, groups: tuple[int, ...]) -> str:
    sep = rng.choice(["", " ", "-"])
    if not sep:
        return number
    parts, i = [], 0
    for g in groups:
        parts.append(number[i : i + g])
        i += g
    return sep.join(parts)


def card(rng: random.Random) -> Value:
    brand, prefix, length, groups = rng.choice(CARD_BRANDS)
    number = _luhn_complete(prefix(rng), length, rng)
    return Value(_spell_card(rng, number, groups), "credit_card", f"card-{brand}")


# --- credentials --------------------------------------------------------------------

PASSWORD_SPECIALS = "#^%)@!$&*(~-_.+=[]{}?/"
URL_PASSWORD_SPECIALS = "#^%)@!$&*(~-_.+=;,'"


def _password(
    rng: random.Random, must: str | None = None, specials: str = PASSWORD_SPECIALS
) -> str:
    alphabet = string.ascii_letters + string.digits
    chars = [rng.choice(alphabet) for _ in range(rng.randint(8, 20))]
    for _ in range(rng.randint(1, 3)):
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(specials))
    if must:
        chars.insert(rng.randrange(1, len(chars)), must)
    return "".join(chars)


def credential_url(rng: random.Random) -> Value:
    scheme = rng.choice(
        [
            "postgres",
            "postgresql",
            "mysql",
            "mongodb+srv",
            "redis",
            "amqp",
            "https",
            "mariadb",
            "sqlserver",
            "postgresql+psycopg",
        ]
    )
    user = rng.choice(["app", "admin", "svc_orders", "deploy", "readonly", "root"])
    password = _password(
        rng, rng.choice(["#", "^", "%", ")", "@", None, None]), URL_PASSWORD_SPECIALS
    )
    host = rng.choice(
        [
            "db.internal",
            "10.0.3.7",
            "prod-db.example.com",
            "localhost",
            "cluster0.abcde.mongodb.net",
            "mq.example.org",
        ]
    )
    port = rng.choice(["", ":5432", ":3306", ":6379", ":5672"])
    path = rng.choice(["", "/orders", "/app?sslmode=require", "/0"])
    head = f"{scheme}://" + ("" if scheme == "redis" and rng.random() < 0.3 else user) + ":"
    text = f"{head}{password}@{host}{port}{path}"
    special = next((c for c in "#^%)@" if c in password), "plain")
    extra = []
    if host[0].isdigit():  # an IP address host is an ipv4 value of its own
        at = len(head) + len(password) + 1
        extra.append((at, at + len(host), "ipv4"))
    return Value(
        text, "secret", f"url-{special}", span=(len(head), len(head) + len(password)), extra=extra
    )


def _b64(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def token(rng: random.Random) -> Value:
    choice = rng.randrange(7)
    if choice == 0:
        return Value("ghp_" + _b64(rng, 36), "secret", "token-github")
    if choice == 1:
        return Value(
            "github_pat_" + _b64(rng, 22) + "_" + _b64(rng, 59), "secret", "token-github-pat"
        )
    if choice == 2:
        return Value(
            "AKIA" + _b64(rng, 16, string.ascii_uppercase + "234567"), "secret", "token-aws"
        )
    if choice == 3:
        return Value(
            f"xoxb-{_digits(rng, 12)}-{_digits(rng, 13)}-{_b64(rng, 24)}", "secret", "token-slack"
        )
    if choice == 4:
        return Value(
            rng.choice(["sk_live_", "rk_live_", "sk_test_"]) + _b64(rng, 24),
            "secret",
            "token-stripe",
        )
    if choice == 5:  # a key = value assignment: only the value is the secret
        key = rng.choice(
            [
                "password",
                "DB_PASSWORD",
                "api_key",
                "client_secret",
                "token",
                "secret_key",
                "aws_secret_access_key",
                "passwd",
            ]
        )
        value = _password(rng) if "pass" in key else _b64(rng, rng.randint(20, 40))
        value = value.replace('"', "").replace("'", "").replace(",", "")
        form = rng.randrange(3)
        if form == 0:
            head = f"{key}="
            value = value.replace("&", "").replace(";", "")
        elif form == 1:
            head = f"{key}: "
        else:
            head = f'"{key}": "'
            text = head + value + '"'
            return Value(text, "secret", "assign-json", span=(len(head), len(head) + len(value)))
        return Value(
            head + value, "secret", f"assign-{form}", span=(len(head), len(head) + len(value))
        )
    # a bearer token
    head = "Authorization: Bearer "
    value = _b64(rng, 40, string.ascii_letters + string.digits + "-._")
    return Value(head + value, "secret", "bearer", span=(len(head), len(head) + len(value)))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(rng: random.Random) -> Value:
    header = {"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    payload = {
        "sub": str(rng.randint(1, 10**6)),
        "iat": rng.randint(1_600_000_000, 1_800_000_000),
        "role": rng.choice(["user", "admin"]),
    }
    sig = bytes(rng.randrange(256) for _ in range(32))
    text = ".".join(
        [_b64url(json.dumps(header).encode()), _b64url(json.dumps(payload).encode()), _b64url(sig)]
    )
    return Value(text, "jwt", "jwt")


# --- hard negatives -----------------------------------------------------------------


def _isbn13(rng: random.Random) -> str:
    body = "978" + _digits(rng, 9)
    total = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(body))
    return body + str((10 - total % 10) % 10)


def _isbn10(rng: random.Random) -> str:
    body = _digits(rng, 9)
    check = (11 - sum(int(d) * (10 - i) for i, d in enumerate(body)) % 11) % 11
    return body + ("X" if check == 10 else str(check))


def _luhn_fail(rng: random.Random) -> str:
    brand, prefix, length, groups = rng.choice(CARD_BRANDS)
    good = _luhn_complete(prefix(rng), length, rng)
    bad = good[:-1] + str((int(good[-1]) + rng.randint(1, 9)) % 10)
    return _spell_card(rng, bad, groups)


def _uuid(rng: random.Random) -> str:
    h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


def _date(rng: random.Random) -> str:
    y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice(
        [
            f"{y}-{m:02d}-{d:02d}",
            f"{d:02d}/{m:02d}/{y}",
            f"{m:02d}/{d:02d}/{y}",
            f"{d:02d}.{m:02d}.{y}",
            f"{y}-{m:02d}-{d:02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
            f"{y}-{m:02d}-{d:02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{_digits(rng, 6)}+00",
            f"{['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun'][m % 6]} {d}, {y}",
            f"{y}{m:02d}{d:02d}",
        ]
    )


def _version(rng: random.Random) -> str:
    a, b, c = rng.randint(0, 20), rng.randint(0, 40), rng.randint(0, 300)
    return rng.choice(
        [
            f"{a}.{b}.{c}",
            f"v{a}.{b}.{c}",
            f"{a}.{b}.{c}-rc{rng.randint(1, 5)}",
            f"{a}.{b}",
            f"10.0.{rng.randint(10000, 22999)}.{rng.randint(1000, 4000)}",
            f"{a}.{b}.{c}+build.{_digits(rng, 4)}",
            f"release-{a}.{b}",
            f"{rng.randint(2019, 2026)}.{rng.randint(1, 12)}.{rng.randint(0, 9)}",
        ]
    )


def _price(rng: random.Random) -> str:
    amount = rng.randint(1, 10**7) / 100
    return rng.choice(
        [
            f"${amount:,.2f}",
            f"€{amount:,.2f}".replace(",", "X").replace(".", ",").replace("X", "."),
            f"{amount:,.2f} EUR",
            f"£{amount:.2f}",
            f"{amount:,.2f}".replace(",", " ") + " zł",
            f"USD {amount:,.2f}",
            f"{amount:.2f}",
            f"CHF {amount:,.2f}".replace(",", "'"),
        ]
    )


def _order(rng: random.Random) -> str:
    return rng.choice(
        [
            f"ORD-{rng.randint(2018, 2026)}-{_digits(rng, 6)}",
            f"INV/{rng.randint(2018, 2026)}/{_digits(rng, 5)}",
            f"#{_digits(rng, 9)}",
            f"PO{_digits(rng, 10)}",
            f"SO-{_digits(rng, 8)}-{_digits(rng, 2)}",
            f"{rng.choice(string.ascii_uppercase)}{rng.choice(string.ascii_uppercase)}-{_digits(rng, 12)}",
            f"order {_digits(rng, 7)}",
            f"RMA{_digits(rng, 6)}",
        ]
    )


def _tracking(rng: random.Random) -> str:
    return rng.choice(
        [
            f"1Z{_b64(rng, 6, string.ascii_uppercase + string.digits)}{_digits(rng, 10)}",
            f"94{_digits(rng, 20)}",
            f"{_digits(rng, 12)}",
            f"JD{_digits(rng, 16)}",
            f"{_b64(rng, 2, string.ascii_uppercase)}{_digits(rng, 9)}GB",
        ]
    )


def _misc(rng: random.Random) -> str:
    return rng.choice(
        [
            "".join(rng.choice("0123456789abcdef") for _ in range(40)),  # a git SHA
            "".join(rng.choice("0123456789abcdef") for _ in range(64)),  # sha256
            str(rng.randint(1_500_000_000, 1_800_000_000)),  # epoch seconds
            str(rng.randint(1_500_000_000_000, 1_800_000_000_000)),  # epoch ms
            f"{rng.uniform(-90, 90):.6f}, {rng.uniform(-180, 180):.6f}",  # coordinates
            f"{rng.randint(1, 999)} {rng.choice(['Main St', 'Rue de Rivoli', 'Hauptstraße'])}",
            f"SKU-{_b64(rng, 4, string.ascii_uppercase)}-{_digits(rng, 4)}",
            f"pod/api-{_b64(rng, 10, string.ascii_lowercase + string.digits)}-{_b64(rng, 5, string.ascii_lowercase)}",
            f"{rng.randint(1, 50)} x {rng.randint(1, 999)} g",
            f"room {rng.randint(100, 999)}, floor {rng.randint(1, 30)}",
            f"{rng.randint(10, 99)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}",
            str(rng.randint(1, 10**9)),
            f"{rng.uniform(0, 100000):.4f}",
            f"build {_digits(rng, 5)} ({_date(rng)})",
            f"EAN {_digits(rng, 13)}",
            f"ticket JIRA-{rng.randint(1, 99999)}",
            "password reset requested",
            "token expired",
            "api_key rotation scheduled",
            f"https://example.com/orders/{_digits(rng, 8)}?page={rng.randint(1, 50)}",
            f"user {rng.choice(FIRST)} logged in from the mobile app",
        ]
    )


NEGATIVES: dict[str, Callable[[random.Random], str]] = {
    "neg-isbn": lambda r: r.choice(
        [
            _isbn13(r),
            _isbn10(r),
            "ISBN " + _isbn13(r),
            "978-"
            + _digits(r, 1)
            + "-"
            + _digits(r, 3)
            + "-"
            + _digits(r, 5)
            + "-"
            + _digits(r, 1),
        ]
    ),
    "neg-luhn-fail": _luhn_fail,
    "neg-iban-wrong-check": lambda r: (lambda s: _group4(s) if r.random() < 0.5 else s)(
        _iban_raw(r, wrong=True)
    ),
    "neg-uuid": _uuid,
    "neg-date": _date,
    "neg-version": _version,
    "neg-price": _price,
    "neg-order": _order,
    "neg-tracking": _tracking,
    "neg-misc": _misc,
}

POSITIVES: dict[str, tuple[Callable[[random.Random], Value], int]] = {
    "email": (email, 3),
    "phone": (phone, 6),
    "phone-national-us": (phone_national_us, 1),
    "iban": (iban, 3),
    "credit_card": (card, 3),
    "credential_url": (credential_url, 3),
    "token": (token, 3),
    "jwt": (jwt, 1),
}

LABELS = {
    "email": ["Email", "E-mail", "Contact", "mail"],
    "iban": ["IBAN", "Account", "Konto"],
    "credit_card": ["Card", "Card number", "PAN"],
    "secret": ["dsn", "value", "config"],
    "jwt": ["jwt", "header"],
    None: ["Order", "Ref", "Note", "Value", "Date", "Version", "Amount"],
}
SENTENCES = [
    "Please contact {v} before Friday.",
    "Customer wrote: my details are {v}, thanks!",
    "Updated record -> {v} (see ticket).",
    "{v} was added to the account on Monday.",
]


def _place(rng: random.Random, values: list[Value]) -> Sample:
    """Put one or two values in a context and compute the gold spans."""
    context = rng.randrange(6)
    pieces: list[tuple[str, Value | None]] = []  # literal text or a value

    def labelled(v: Value) -> list[tuple[str, Value | None]]:
        label = v.label or rng.choice(LABELS.get(v.entity, LABELS[None]))
        return [(f"{label}: ", None), ("", v)]

    if context == 0 or (len(values) == 1 and values[0].label and context in (2, 3)):
        v = values[0]
        pieces = labelled(v) if v.label else [("", v)]
    elif context == 1:
        pieces = labelled(values[0])
    elif context == 2:
        before, after = rng.choice(SENTENCES).split("{v}")
        inner = labelled(values[0]) if values[0].label else [("", values[0])]
        pieces = [(before, None), *inner, (after, None)]
    elif context == 3:  # JSON object
        key = {"secret": "dsn", None: "ref"}.get(values[0].entity, values[0].entity)
        key = "phone" if values[0].label else key
        pieces = [
            (f'{{"id": {rng.randint(1, 9999)}, "{key}": "', None),
            ("", values[0]),
            ('", "active": true}', None),
        ]
    elif context == 4:  # a CSV row, with a second value maybe
        pieces = [(f"{rng.randint(1, 99999)},{rng.choice(FIRST).capitalize()},", None)]
        for i, v in enumerate(values):
            if i:
                pieces.append((",", None))
            if v.label:
                pieces.extend(labelled(v))
            else:
                pieces.append(("", v))
        pieces.append((f",{_date(rng)}", None))
    else:  # a log line
        pieces = [
            (
                f"2025-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T10:22:01Z INFO req={_digits(rng, 6)} ",
                None,
            )
        ]
        for i, v in enumerate(values):
            if i:
                pieces.append((" ", None))
            pieces.extend(labelled(v) if v.label else [("", v)])
        pieces.append((" status=200", None))
    text, gold = "", []
    for literal, v in pieces:
        text += literal
        if v is not None:
            start = len(text)
            text += v.text
            if v.entity:
                a, b = v.span or (0, len(v.text))
                gold.append((start + a, start + b, v.entity))
                gold.extend((start + a, start + b, e) for a, b, e in v.extra)
    kinds = ",".join(v.kind for _, v in pieces if v is not None)
    return Sample(text, gold, kinds)


def generate(seed: int = 7, count: int = 6000, negative_share: float = 0.35) -> list[Sample]:
    rng = random.Random(seed)
    makers = [m for m, w in POSITIVES.values() for _ in range(w)]
    negs = sorted(NEGATIVES)
    samples = []
    for _ in range(count):
        values: list[Value] = []
        if rng.random() < negative_share:
            values.append(_negative(rng, negs))
        else:
            values.append(rng.choice(makers)(rng))
        if rng.random() < 0.25:  # a second value in the same cell (CSV or log contexts)
            extra = _negative(rng, negs) if rng.random() < 0.6 else rng.choice(makers)(rng)
            values.append(extra)
        samples.append(_place(rng, values))
    return samples


def _negative(rng: random.Random, negs: list[str]) -> Value:
    kind = rng.choice(negs)
    return Value(NEGATIVES[kind](rng), None, kind)
