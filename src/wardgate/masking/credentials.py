"""Secrets: vendor tokens, private keys, and values assigned to secret-sounding keys.

Each scanner returns the span of the secret *value* only, so
``password=hunter2`` keeps ``password=`` and ``postgres://app:pw@db/x`` keeps
everything but ``pw``.
"""

from __future__ import annotations

import re

# Vendor tokens whose prefix says what they are. The character class after the
# prefix is the vendor's, so a pseudonym that keeps prefix and classes still matches.
TOKEN = re.compile(
    r"(?<![A-Za-z0-9_])(?:"
    r"(?:AKIA|ASIA)[A-Z0-9]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,255}"
    r"|github_pat_[A-Za-z0-9_]{50,255}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,250}"
    r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}"
    r")(?![A-Za-z0-9_])"
)
TOKEN_PREFIX = re.compile(r"AKIA|ASIA|gh[pousr]_|github_pat_|xox[abprs]-|(?:sk|rk)_(?:live|test)_")

PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----")
# The body may hold "Proc-Type: 4,ENCRYPTED" style headers and literal "\\n"
# escapes (a key inside a JSON string); it stops at the "-----END" footer.
_PEM_BODY = re.compile(r"(?:[A-Za-z0-9+/=\s\\:,.]|-(?!----)){0,16384}")
# Without a footer (a truncated log line) only the base64 lines that follow count.
_PEM_TRUNCATED = re.compile(r"(?:(?:\s|\\n)*[A-Za-z0-9+/=]{16,})*")
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/]")
MIN_PEM_BODY = 16

_KEY = (
    r"(?:[A-Za-z0-9]+[_.\-])*"
    r"(?:password|passwd|passphrase|pwd|pass|secret|token|api[_\-]?key|apikey"
    r"|access[_\-]?key|private[_\-]?key|(?:secret|signing|encryption|master)[_\-]?key|credentials?)"
)
ASSIGNMENT = re.compile(
    rf"(?ai)(?<![A-Za-z0-9])[\"']?{_KEY}(?![A-Za-z0-9])[\"']?[ \t]*(?:=>|[:=])[ \t]*"
    r"(?:\"(?P<dq>(?:[^\"\\\n]|\\.){1,512})\""
    r"|'(?P<sq>[^'\n]{1,512})'"
    r"|(?P<bare>(?:[^\s\"'<>&;,]|[&;,](?![A-Za-z0-9_.\-]+=)){1,512}))"
)
# The password runs to the *last* "@" before the host: people paste passwords with "@",
# "#", "%", "^", ")" unencoded, and a parser that stops at the first "@" or "#" leaves
# the rest in clear (and reads it as an email). "/" and "?" end it: they start the path.
URL_PASSWORD = re.compile(
    r"(?ai)(?<![A-Za-z0-9+.\-])[a-z][a-z0-9+.\-]{1,30}://[^\s:/@?#]*:(?P<pw>[^\s/?]{1,512})@[^\s/?#@]+"
)
# SQL: ALTER ROLE app PASSWORD 'x', CREATE USER u IDENTIFIED BY 'x'.
SQL_PASSWORD = re.compile(
    r"(?ai)(?<![A-Za-z0-9_])(?:password|identified[ \t]+by)[ \t]+'(?P<pw>(?:[^'\n]|''){1,512})'"
)
BEARER = re.compile(r"(?ai)(?<![A-Za-z0-9])bearer[ \t]+(?P<tok>[A-Za-z0-9\-._~+/]{16,4096}=*)")

# Text that is already a mask; in a URL nothing else is skipped ("TRUE" is a
# password there, and would otherwise read as an email's local part).
_MASK_OUTPUT = re.compile(r"\[[a-z_]+\]|h:[0-9a-f]{16}|\*+")
# Text that is already a mask, or a reference to a secret rather than the secret.
_NOT_A_SECRET = re.compile(
    r"\[[a-z_]+\]|h:[0-9a-f]{16}|\*+|(?i:null|none|nil|true|false|undefined|redacted)"
    r"|(?:env|file|vault):\S*|\$\{[A-Za-z_][A-Za-z0-9_]*\}|\$[A-Z_][A-Z0-9_]*|<[^<>]*>"
)

# Cheap test: can this text contain any secret at all? Every key word of
# ASSIGNMENT, SQL_PASSWORD and BEARER contains one of HINT_WORDS (in lower
# case), and every token, key block and URL one of HINT_MARKS.
HINT_WORDS = ("pass", "pwd", "secret", "token", "key", "credential", "bearer", "identified")
HINT_MARKS = (
    "://", "AKIA", "ASIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox",
    "k_live_", "k_test_", "-----BEGIN",
)  # fmt: skip


def may_hold_secret(text: str, lowered: str) -> bool:
    for word in HINT_WORDS:
        if word in lowered:
            return True
    for mark in HINT_MARKS:
        if mark in text:
            return True
    return False


def not_a_secret(value: str) -> bool:
    return _NOT_A_SECRET.fullmatch(value) is not None


def _pem_blocks(text: str, out: list[tuple[int, int]]) -> None:
    for m in PEM_BEGIN.finditer(text):
        body = _PEM_BODY.match(text, m.end())
        end = body.end() if body else m.end()
        footer = f"-----END {m.group(1)}-----"
        if text.startswith(footer, end):
            close, stop = end, end + len(footer)
        else:
            truncated = _PEM_TRUNCATED.match(text, m.end())
            close = stop = truncated.end() if truncated else m.end()
        if len(_BASE64_CHARS.findall(text, m.end(), close)) >= MIN_PEM_BODY:
            out.append((m.start(), stop))


def find_secrets(text: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    if "-----BEGIN" in text:
        _pem_blocks(text, out)
    for m in TOKEN.finditer(text):
        out.append(m.span())
    for m in ASSIGNMENT.finditer(text):
        group = "dq" if m.group("dq") is not None else "sq" if m.group("sq") is not None else "bare"
        if not not_a_secret(m.group(group)):
            out.append(m.span(group))
    if "://" in text:
        for m in URL_PASSWORD.finditer(text):
            if not _MASK_OUTPUT.fullmatch(m.group("pw")):
                out.append(m.span("pw"))
    for m in SQL_PASSWORD.finditer(text):
        if not not_a_secret(m.group("pw")):
            out.append(m.span("pw"))
    for m in BEARER.finditer(text):
        out.append(m.span("tok"))
    return out
