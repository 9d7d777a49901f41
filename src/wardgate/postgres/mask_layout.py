"""A shortcut for fresh rows through content detection: rows of one result mostly share
their layout (the length of each value), and most of their values have a shape
(``detect.SHAPE``) already known to hold nothing to find. One struct call reads a row's
value lengths and checks them against a layout seen before; a second reads the shapes
of the values the plan scans; their answers are looked up in ``detect.CLEAN_SHAPES``.

It is exactly ``masking._mask_row``'s own first test, done for the whole row at once:
the shortcut says "unchanged" only when every value the plan touches is one that
_mask_row would pass on its shape (a detection-only step, at most SHAPE_MAX bytes, no
bytea hex mark, a shape known clean); anything else takes the row the whole way.
"""

from __future__ import annotations

import struct

from wardgate.masking.detect import CLEAN_SHAPES, SHAPE_MAX

# masking.Plan.steps: what each column asks.
SKIP, PREFILTER, HINTED, MASK = 0, 1, 2, 3
_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
LAYOUTS_MAX = 256  # per plan, by row length


class RowLayout:
    """The value lengths of a DataRow, and where the values a plan scans are."""

    __slots__ = ("lengths", "expected", "shapes", "memos")

    def __init__(self, sizes: list[int], steps: tuple[int, ...]) -> None:
        # Reads (count, length, length, ...) from the row's body, skipping the values.
        self.lengths = struct.Struct("!h" + "".join(f"i{max(s, 0)}x" for s in sizes))
        self.expected = (len(sizes), *sizes)
        # Reads the scanned values, in order, from the row's shape; ``memos``: where
        # each one's answer is remembered (plain or hinted).
        fmt = ["!"]
        memos = []
        at, cursor = 2, 0
        for size, step in zip(sizes, steps, strict=False):
            at += 4
            if size > 0 and step != SKIP:
                fmt.append(f"{at - cursor}x{size}s")
                cursor = at + size
                memos.append(CLEAN_SHAPES[step == HINTED])
            at += max(size, 0)
        self.shapes = struct.Struct("".join(fmt))
        self.memos = tuple(memos)

    def fits(self, row: bytes) -> bool:
        """Whether the DataRow ``row`` has this layout."""
        return (
            len(row) == 5 + self.lengths.size and self.lengths.unpack_from(row, 5) == self.expected
        )

    def clean(self, raw: bytes, shapes: bytes, at: int) -> bool:
        """Whether the DataRow at ``at`` (its type byte) in ``raw`` has this layout and
        every scanned value a shape known clean (``shapes``: ``raw`` translated)."""
        if self.lengths.unpack_from(raw, at + 5) != self.expected:
            return False
        values = self.shapes.unpack_from(shapes, at + 5)
        for shape, known in zip(values, self.memos, strict=True):
            if not known.get(shape):
                return False
        return True


def layout_of(raw: bytes, steps: tuple[int, ...]) -> RowLayout | None:
    """The layout of one whole DataRow (``raw``), when the shortcut can serve rows like
    it: no more values than the plan has steps, each it scans detection-only and of at
    most SHAPE_MAX bytes."""
    (count,) = _INT16.unpack_from(raw, 5)
    if count > len(steps):
        return None
    sizes: list[int] = []
    pos = 7
    for i in range(count):
        (size,) = _INT32.unpack_from(raw, pos)
        if steps[i] == MASK or (steps[i] != SKIP and size > SHAPE_MAX):
            return None
        sizes.append(size)
        pos += 4 + max(size, 0)
    if pos != len(raw):
        return None
    return RowLayout(sizes, steps)
