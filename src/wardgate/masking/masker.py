"""The Masker: one key, one strategy, a set of entities; text, bytes or whole values in."""

from __future__ import annotations

import codecs
from functools import lru_cache

from . import pseudonyms
from .detect import clean_bytes, scan
from .entities import (
    CREDIT_CARD,
    EMAIL,
    ENTITIES,
    IBAN,
    IPV4,
    IPV6,
    JWT,
    NATIONAL_ID,
    PHONE,
    SECRET,
    SSN,
    check_entities,
)
from .strategies import (
    Strategy,
    hash_token,
    is_mask_output,
    normalise,
    partial,
    redact_token,
)


@lru_cache(maxsize=64)
def ascii_compatible(encoding: str) -> bool:
    """Whether every ASCII character is the same single byte in ``encoding``, so
    byte-level prefilters see what the text-level detectors would see."""
    try:
        codecs.lookup(encoding)
        probe = bytes(range(128))
        return probe.decode(encoding) == probe.decode("ascii") and (
            probe.decode("ascii").encode(encoding) == probe
        )
    except (LookupError, UnicodeError):
        return False


class Masker:
    """Masks sensitive values with one strategy under one key.

    ``mask_text`` masks what ``find`` finds inside free text; ``mask_whole``
    masks a whole value a column rule says is sensitive. Both are idempotent:
    redaction tokens, partial masks and hash tokens are never detected again,
    and the masker recognises its own pseudonyms (see ``pseudonyms``).
    """

    __slots__ = ("_key", "_strategy", "_entities")

    def __init__(self, key: bytes, strategy: Strategy, entities: frozenset[str] = ENTITIES) -> None:
        if not isinstance(key, bytes) or not key:
            raise ValueError("the masking key must be non-empty bytes")
        self._key = key
        self._strategy = Strategy(strategy)
        self._entities = check_entities(frozenset(entities))

    @property
    def strategy(self) -> Strategy:
        return self._strategy

    @property
    def entities(self) -> frozenset[str]:
        return self._entities

    # ------------------------------------------------------------ free text

    def mask_text(self, text: str, hinted: bool = False) -> str:
        """``text`` with every finding replaced; the same object when nothing changed.

        ``hinted``: the value's column says what it holds (a ``phone`` column), so bare
        digits count as a phone number (or SSN, BSN) as after a hint word."""
        findings = scan(text, self._entities, assume_hint=hinted)
        if not findings:
            return text
        parts: list[str] = []
        pos = 0
        changed = False
        for f in findings:
            original = text[f.start : f.end]
            masked = self._mask_value(original, f.entity)
            if masked != original:
                changed = True
            parts.append(text[pos : f.start])
            parts.append(masked)
            pos = f.end
        if not changed:
            return text
        parts.append(text[pos:])
        return "".join(parts)

    def mask_bytes(
        self, data: bytes, encoding: str = "utf-8", hinted: bool = False
    ) -> bytes | None:
        """Masked ``data``, or None when there is nothing to mask.

        Bytes that do not decode are carried through unchanged (surrogateescape).
        """
        if not data or (ascii_compatible(encoding) and clean_bytes(data, hinted)):
            return None
        text = data.decode(encoding, errors="surrogateescape")
        masked = self.mask_text(text, hinted)
        if masked is text:
            return None
        return masked.encode(encoding, errors="surrogateescape")

    # --------------------------------------------------------- whole values

    def mask_whole(self, text: str, entity: str | None = None) -> str:
        """Mask all of ``text``: a column rule said the value is sensitive.

        ``entity`` lets partial and pseudonym keep the value's shape when it has
        that shape (an email stays an email); otherwise, or with None, the value
        is masked generically: ``[redacted]``, ``****``, a hash token, or a
        pseudonym of the same length and character classes.
        """
        if entity is not None and entity not in ENTITIES:
            check_entities(frozenset({entity}))
        if not text or is_mask_output(text, entity):
            return text
        if self._strategy is Strategy.PSEUDONYM and (
            pseudonyms.is_generic(self._key, text)
            or (entity is not None and self._is_own_whole_pseudonym(text, entity))
        ):
            return text
        if entity is not None:
            stripped = text.strip()
            findings = scan(stripped, frozenset({entity}), assume_hint=True)
            if len(findings) == 1 and findings[0].end - findings[0].start == len(stripped):
                lead = len(text) - len(text.lstrip())
                end = lead + len(stripped)
                return text[:lead] + self._mask_value(stripped, entity) + text[end:]
        return self._mask_generic(text, entity)

    # ------------------------------------------------------------- helpers

    def _mask_generic(self, text: str, entity: str | None) -> str:
        if self._strategy is Strategy.REDACT:
            return redact_token(entity)
        if self._strategy is Strategy.HASH:
            return hash_token(self._key, text)
        if self._strategy is Strategy.PARTIAL:
            return partial(None, text)
        if entity == SECRET:
            return pseudonyms.secret(self._key, text)  # 20 tagged characters, length hidden
        return pseudonyms.generic(self._key, text)

    def _is_own_whole_pseudonym(self, value: str, entity: str) -> bool:
        """Also the pseudonyms free text never finds again: phone numbers and
        national IDs that fail their check carry a digit tag. The tag counts only
        when the value is *not* a valid number of that entity, so no real one
        can pass for a pseudonym."""
        if entity in (PHONE, NATIONAL_ID):
            if scan(value.strip(), frozenset({entity}), assume_hint=True):
                return False
            return pseudonyms.has_digit_tag(self._key, entity, value) or (
                entity == NATIONAL_ID and pseudonyms.is_national_id(value)
            )
        return self._is_own_pseudonym(value, entity)

    def _mask_value(self, value: str, entity: str) -> str:
        strategy = self._strategy
        if strategy is Strategy.REDACT:
            return redact_token(entity)
        if strategy is Strategy.HASH:
            return hash_token(self._key, normalise(entity, value))
        if strategy is Strategy.PARTIAL:
            return partial(entity, value)
        if self._is_own_pseudonym(value, entity):
            return value
        pseudonym = self._pseudonym(value, entity)
        if pseudonym is None:
            # No same-format value that is safe to emit (a short number in a dense
            # numbering plan is valid whatever its digits): the keyed hash token
            # still joins and groups.
            return hash_token(self._key, normalise(entity, value))
        return pseudonym

    def _detected(self, candidate: str) -> bool:
        """Whether a would-be pseudonym reads as data, even where a hint word (or
        a column rule) vouches for bare digits: then it is drawn again."""
        return bool(scan(candidate, self._entities, assume_hint=True))

    def _only_card(self, candidate: str) -> bool:
        found = scan(candidate, self._entities)
        return [f.entity for f in found] == [CREDIT_CARD]

    def _pseudonym(self, value: str, entity: str) -> str | None:
        key = self._key
        if entity == EMAIL:
            return pseudonyms.email(key, value)
        if entity == CREDIT_CARD:
            return pseudonyms.credit_card(key, value, self._only_card)
        if entity == IBAN:
            return pseudonyms.iban(key, value)
        if entity == PHONE:
            return pseudonyms.phone(key, value, self._detected)
        if entity == SSN:
            return pseudonyms.ssn(key, value)
        if entity == NATIONAL_ID:
            return pseudonyms.national_id(key, value, self._detected)
        if entity == IPV4:
            return pseudonyms.ipv4(key, value)
        if entity == IPV6:
            return pseudonyms.ipv6(key, value)
        if entity == JWT:
            return pseudonyms.jwt(key, value)
        return pseudonyms.secret(key, value)

    def _is_own_pseudonym(self, value: str, entity: str) -> bool:
        key = self._key
        if entity == EMAIL:
            return pseudonyms.is_email(key, value)
        if entity == CREDIT_CARD:
            return pseudonyms.is_credit_card(key, value)
        if entity == IBAN:
            return pseudonyms.is_iban(key, value)
        if entity == SSN:
            return pseudonyms.is_ssn(value)
        if entity == NATIONAL_ID:
            return pseudonyms.is_national_id(value)
        if entity == IPV4:
            return pseudonyms.is_ipv4(value)
        if entity == IPV6:
            return pseudonyms.is_ipv6(value)
        if entity == JWT:
            return pseudonyms.is_jwt(key, value)
        if entity == SECRET:
            return pseudonyms.is_secret(key, value)
        return False  # phones: pseudonyms are invalid numbers, never found again
