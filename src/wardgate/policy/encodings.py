"""Reading SQL as the server does: client encodings and the settings that change the lexer.

PostgreSQL converts a client's bytes from its ``client_encoding`` before parsing, so
the gateway must decode SQL the same way or it would judge a different statement.
Only encodings in which every byte below 0x80 is that ASCII character are accepted:
in them a quote, a semicolon or a keyword cannot hide inside a multibyte character.
The client-only encodings SJIS, BIG5, GBK, UHC, GB18030 and JOHAB break that rule
(their second bytes include ``\\`` and ``'``), so sessions using them are refused
rather than guessed at.
"""

from __future__ import annotations

_CODECS = {
    "UTF8": "utf-8",
    # SQL_ASCII means "no conversion": the server takes any byte as it is. latin-1
    # maps every byte to one character, which keeps the ASCII structure exact.
    "SQL_ASCII": "latin-1",
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "EUC_JP": "euc_jp",
    "EUC_JIS_2004": "euc_jis_2004",
    "EUC_CN": "gb2312",
    "EUC_KR": "euc_kr",
}

# PostgreSQL's aliases for the names above (it reports the canonical name back).
_ALIASES = {
    "UNICODE": "UTF8",
    "LATIN1": "LATIN1",
    "ISO88591": "LATIN1",
    "ISO88592": "LATIN2",
    "ISO88593": "LATIN3",
    "ISO88594": "LATIN4",
    "ISO88599": "LATIN5",
    "ISO885910": "LATIN6",
    "ISO885913": "LATIN7",
    "ISO885914": "LATIN8",
    "ISO885915": "LATIN9",
    "ISO885916": "LATIN10",
    "ISO88595": "ISO_8859_5",
    "ISO88596": "ISO_8859_6",
    "ISO88597": "ISO_8859_7",
    "ISO88598": "ISO_8859_8",
    "WIN": "WIN1251",
    "ALT": "WIN866",
    "KOI8": "KOI8R",
    "TCVN": "WIN1258",
    "TCVN5712": "WIN1258",
    "VSCII": "WIN1258",
    "ABC": "WIN1258",
}


def _key(name: str) -> str:
    # PostgreSQL compares encoding names ignoring case and non-alphanumerics.
    return "".join(ch for ch in name.upper() if ch.isalnum())


_BY_KEY = {_key(n): codec for n, codec in _CODECS.items()}
_BY_KEY.update({_key(alias): _CODECS[canon] for alias, canon in _ALIASES.items()})


def python_codec(pg_name: str) -> str | None:
    """The Python codec for a PostgreSQL encoding name, or None when unsupported."""
    return _BY_KEY.get(_key(pg_name))


def unsupported_message(pg_name: str) -> str:
    return (
        f"wardgate: client_encoding {pg_name!r} is not supported by the gateway: it cannot "
        "read SQL in that encoding safely; use UTF8 (or another ASCII-compatible encoding)"
    )


def reported_setting_problem(name: str, value: str) -> str | None:
    """Why the gateway cannot go on with a session whose server reports ``name = value``
    (in a ParameterStatus message), or None when it can."""
    if name == "client_encoding" and python_codec(value) is None:
        return unsupported_message(value)
    if name == "standard_conforming_strings" and value != "on":
        return (
            "wardgate: the database server reads strings with standard_conforming_strings "
            f"= {value!r}; the gateway parses SQL with it on and cannot judge statements "
            "read otherwise, so the session ends"
        )
    return None
