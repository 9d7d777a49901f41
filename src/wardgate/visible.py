"""Text shown to a human who decides on it (terminal or web page): control, bidi and
invisible characters written as escapes, so what an approver reads is what runs."""

from __future__ import annotations

import re

# Escape sequences, carriage returns and bidirectional or invisible format characters
# can make a statement an approver reads differ from the statement that runs.
_HIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]"
)


def visible(text: object) -> str:
    """``text`` with control and invisible characters written as escapes."""
    return _HIDDEN.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
