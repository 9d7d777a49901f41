"""Protocol-neutral masking engine: find sensitive values in text and mask them.

Pure Python, no I/O: the proxies call it on every value they return or record.

    >>> masker = Masker(b"key", Strategy.PARTIAL)
    >>> masker.mask_text("write to jane.doe@example.com")
    'write to j****@*****.com'

See docs/masking.md for the entities, how each is validated, the strategies
and what idempotency holds.
"""

from .detect import find
from .entities import ENTITIES, Finding
from .masker import Masker
from .strategies import Strategy

__all__ = ["ENTITIES", "Finding", "Masker", "Strategy", "find"]
