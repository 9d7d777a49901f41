"""Masking a byte stream (a command's output) line by line, with a bounded buffer.

Detectors work on text, so the stream is cut at newlines; a line longer than
``max_line`` is masked in pieces of that size (a value split across two pieces may then
escape detection: the price of never buffering without bound)."""

from __future__ import annotations

from collections.abc import Callable

MAX_LINE = 64 * 1024


class LineMasker:
    def __init__(self, mask_text: Callable[[str], str], max_line: int = MAX_LINE) -> None:
        self._mask = mask_text
        self._max = max_line
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """The masked bytes of every complete line in what has arrived so far."""
        buffer = self._pending + data
        cut = buffer.rfind(b"\n") + 1
        if cut == 0 and len(buffer) < self._max:
            self._pending = buffer
            return b""
        if cut == 0:
            cut = self._max
        self._pending = buffer[cut:]
        return self._masked(buffer[:cut])

    def flush(self) -> bytes:
        """What is left at the end of the stream."""
        rest, self._pending = self._pending, b""
        return self._masked(rest) if rest else b""

    def _masked(self, chunk: bytes) -> bytes:
        text = chunk.decode("utf-8", "surrogateescape")
        return self._mask(text).encode("utf-8", "surrogateescape")
