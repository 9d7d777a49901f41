"""Properties of the SSH output pieces: line masking does not depend on how the stream
is cut, its buffer stays bounded, and a recording replays to exactly what was shown."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from wardgate.audit.asciicast import MAX_CAST, Cast, replay_text
from wardgate.masking.stream import LineMasker


def upper(text: str) -> str:
    return text.upper()


def cuts(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=20))
def test_identity_masking_passes_every_byte_whatever_the_chunks(
    data: bytes, points: list[int]
) -> None:
    masker = LineMasker(lambda t: t, max_line=64)
    out = b"".join(masker.feed(piece) for piece in cuts(data, points)) + masker.flush()
    assert out == data


@given(
    st.lists(st.text(alphabet="abcxyz \t@.", max_size=40), max_size=30),
    st.lists(st.integers(min_value=0), max_size=20),
)
def test_masking_is_per_line_whatever_the_chunks(lines: list[str], points: list[int]) -> None:
    data = "".join(line + "\n" for line in lines).encode()
    masker = LineMasker(upper, max_line=1024)
    out = b"".join(masker.feed(piece) for piece in cuts(data, points)) + masker.flush()
    assert out == data.upper()


def test_the_buffer_is_bounded_without_newlines() -> None:
    masker = LineMasker(upper, max_line=100)
    emitted = b"".join(masker.feed(b"x" * 37) for _ in range(100))
    assert len(emitted) >= 3700 - 100  # never more than one line's worth held back
    assert emitted + masker.flush() == b"X" * 3700


@given(st.lists(st.binary(max_size=50), max_size=30))
def test_a_recording_replays_to_what_was_shown(chunks: list[bytes]) -> None:
    cast = Cast(80, 24, 1000.0, "xterm")
    for i, chunk in enumerate(chunks):
        cast.output(1000.0 + i / 10, chunk)
    text = cast.text()
    header = json.loads(text.splitlines()[0])
    assert header["version"] == 2 and header["env"] == {"TERM": "xterm"}
    assert replay_text(text) == b"".join(chunks).decode("utf-8", "replace")


def test_a_recording_stops_growing_at_its_cap() -> None:
    cast = Cast(80, 24, 0.0)
    for i in range(2000):
        cast.output(float(i), b"y" * 10_000)
    assert cast.truncated and len(cast.text()) <= MAX_CAST + 200
