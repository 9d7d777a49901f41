"""Terminal recordings in asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/):
a JSON header line, then one ``[seconds, "o", text]`` line per output chunk and
``[seconds, "r", "WxH"]`` per resize. Pure: the caller says when things happened."""

from __future__ import annotations

import codecs
import json

MAX_CAST = 16 * 1024 * 1024  # characters kept of one session's recording


class Cast:
    def __init__(self, width: int, height: int, started: float, term: str = "") -> None:
        header: dict[str, object] = {
            "version": 2,
            "width": width or 80,
            "height": height or 24,
            "timestamp": int(started),
        }
        if term:
            header["env"] = {"TERM": term}
        self._started = started
        self._lines = [json.dumps(header)]
        self._size = len(self._lines[0])
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.truncated = False
        self._last = started

    def output(self, at: float, data: bytes) -> None:
        self._last = at
        self._event(at, "o", self._decoder.decode(data))

    def resize(self, at: float, width: int, height: int) -> None:
        self._event(at, "r", f"{width}x{height}")

    def _event(self, at: float, code: str, text: str) -> None:
        if not text or self.truncated:
            return
        line = json.dumps([round(max(0.0, at - self._started), 6), code, text])
        if self._size + len(line) > MAX_CAST:
            self.truncated = True
            line = json.dumps([round(max(0.0, at - self._started), 6), "m", "recording truncated"])
        self._lines.append(line)
        self._size += len(line) + 1

    def text(self) -> str:
        """The recording; the end of the stream, so a multibyte character cut off by it
        is written as a replacement character."""
        self._event(self._last, "o", self._decoder.decode(b"", final=True))
        return "\n".join(self._lines) + "\n"


def replay_text(cast: str) -> str:
    """The terminal output a recording holds, in order (what the user saw)."""
    out = []
    for line in cast.splitlines()[1:]:
        event = json.loads(line)
        if event[1] == "o":
            out.append(event[2])
    return "".join(out)
