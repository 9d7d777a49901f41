"""Text shown to a human who decides on it (terminal or web page): control, bidi and
invisible characters written as escapes, so what an approver reads is what runs."""

from __future__ import annotations

import re

# Escape sequences, carriage returns and bidirectional or invisible format characters
# can make a statement an approver reads differ from the statement that runs. U+2028 and
# U+2029 break the line for a terminal, a browser and str.splitlines, not for SQL: a
# `--` comment runs on past them, so code shown on "the next line" is comment (attack17b).
# Soft hyphen, fillers, variation selectors and tag characters are invisible.
_HIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u034f\u061c\u115f\u1160\u17b4\u17b5"
    "\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\u3164\ufe00-\ufe0f\ufeff"
    "\uffa0\U000e0000-\U000e007f]"
)


def visible(text: object) -> str:
    """``text`` with control and invisible characters written as escapes."""
    return _HIDDEN.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
