"""SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it. Pure: no I/O.

`ScramServer` authenticates clients of the gateway against stored keys, never
the secrets themselves; `ScramClient` authenticates the gateway to an upstream
PostgreSQL server. PostgreSQL conventions followed here:

* the user name in client-first-message is ignored (clients send ``n=``); the
  user is the one from the startup packet;
* channel binding is not offered, so gs2 headers ``n,,`` and ``y,,`` are
  accepted and ``p=...`` is refused; an authorization identity is refused;
* passwords are SASLprep-ed, and, like PostgreSQL, a password SASLprep rejects
  is used as raw UTF-8 so every string still has exactly one key.

Key derivation (PBKDF2) is CPU-bound; callers on an event loop should run
`derive_keys` and `ScramClient.handle_server_first` in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from dataclasses import dataclass

DEFAULT_ITERATIONS = 4096
# A server may choose any count; this only stops an absurd one from pinning a
# CPU for minutes.
MAX_ITERATIONS = 10_000_000
_KEY_BYTES = 32  # SHA-256 output
# Client messages are a few hundred bytes; anything far larger is not SCRAM.
_MAX_MESSAGE_BYTES = 4096


class ScramAuthError(Exception):
    """A wrong proof or a malformed SCRAM message; both are answered the same way."""


@dataclass(frozen=True, slots=True)
class ScramKeys:
    """What is stored for one secret (a token) instead of the secret itself."""

    key_id: str
    stored_key: bytes
    server_key: bytes


@dataclass(frozen=True, slots=True)
class ScramVerifierSet:
    """All valid secrets of one principal; they share the principal's salt.

    For an unknown principal pass no keys and a salt derived from the name and
    a server secret: the exchange then runs to the end and fails there, so the
    server-first-message does not reveal whether the principal exists.
    """

    salt: bytes
    iterations: int
    keys: tuple[ScramKeys, ...]


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ScramAuthError("invalid base64 in SCRAM message") from None


def saslprep(text: str) -> str:
    """RFC 4013 SASLprep for a stored string, or the input unchanged when the
    input is not allowed (PostgreSQL's behaviour, so no password is unusable)."""
    if text.isascii():
        return text  # nothing in the tables maps or forbids printable ASCII
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in text if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if not normalized:
        return text
    prohibited = (
        stringprep.in_table_a1,
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
    )
    if any(check(ch) for ch in normalized for check in prohibited):
        return text
    # RFC 3454 section 6: right-to-left text must be wholly so and start and
    # end with a right-to-left character.
    if any(stringprep.in_table_d1(ch) for ch in normalized):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            return text
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            return text
    return normalized


def _salted_password(secret: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", saslprep(secret).encode("utf-8"), salt, iterations)


def derive_keys(secret: str, salt: bytes, iterations: int, key_id: str = "") -> ScramKeys:
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be between 1 and {MAX_ITERATIONS}")
    salted = _salted_password(secret, salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return ScramKeys(
        key_id=key_id,
        stored_key=hashlib.sha256(client_key).digest(),
        server_key=_hmac(salted, b"Server Key"),
    )


def _decode(data: bytes) -> str:
    if len(data) > _MAX_MESSAGE_BYTES:
        raise ScramAuthError("SCRAM message too long")
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ScramAuthError("SCRAM message is not UTF-8") from None


def _attr(part: str, name: str) -> str:
    if len(part) < 2 or part[0] != name or part[1] != "=":
        raise ScramAuthError(f"expected SCRAM attribute {name!r}")
    return part[2:]


def _check_extensions(parts: list[str]) -> None:
    # Optional extensions are ignored, but each must still be "x=value".
    for part in parts:
        if len(part) < 2 or not part[0].isascii() or not part[0].isalpha() or part[1] != "=":
            raise ScramAuthError("malformed SCRAM attribute")


def _valid_nonce(nonce: str) -> bool:
    # RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII but ','.
    return bool(nonce) and all("!" <= ch <= "~" and ch != "," for ch in nonce)


def _make_nonce(nonce: bytes | None) -> str:
    if nonce is None:
        return secrets.token_urlsafe(18)
    text = nonce.decode("ascii", errors="replace")
    if not _valid_nonce(text):
        raise ValueError("nonce must be printable ASCII without commas")
    return text


class ScramServer:
    """One server-side SCRAM-SHA-256 exchange: client-first, then client-final."""

    def __init__(self, verifiers: ScramVerifierSet, nonce: bytes | None = None) -> None:
        self._verifiers = verifiers
        self._server_nonce = _make_nonce(nonce)
        self._gs2_header: bytes | None = None
        self._nonce = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._done = False
        # (proof, auth message) of a client-final no key matched: see recheck().
        self._unmatched: tuple[bytes, bytes] | None = None

    def handle_client_first(self, data: bytes) -> bytes:
        if self._gs2_header is not None or self._done:
            raise ScramAuthError("unexpected client-first-message")
        text = _decode(data)
        # gs2-header: cbind-flag "," [authzid] ","
        flag, sep, rest = text.partition(",")
        if not sep:
            raise ScramAuthError("malformed gs2 header")
        if flag.startswith("p="):
            raise ScramAuthError("channel binding is not supported")
        if flag not in ("n", "y"):
            raise ScramAuthError("malformed channel binding flag")
        authzid, sep, bare = rest.partition(",")
        if not sep:
            raise ScramAuthError("malformed gs2 header")
        if authzid:
            raise ScramAuthError("authorization identities are not supported")
        parts = bare.split(",")
        if parts[0].startswith("m="):
            raise ScramAuthError("unsupported mandatory SCRAM extension")
        if len(parts) < 2:
            raise ScramAuthError("client-first-message lacks a nonce")
        _attr(parts[0], "n")  # the user name is ignored, as PostgreSQL does
        client_nonce = _attr(parts[1], "r")
        if not _valid_nonce(client_nonce):
            raise ScramAuthError("invalid client nonce")
        _check_extensions(parts[2:])
        self._gs2_header = f"{flag},{authzid},".encode("ascii")
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        v = self._verifiers
        self._server_first = f"r={self._nonce},s={_b64(v.salt)},i={v.iterations}"
        return self._server_first.encode("ascii")

    def handle_client_final(self, data: bytes) -> tuple[str, bytes]:
        if self._gs2_header is None or self._done:
            raise ScramAuthError("unexpected client-final-message")
        self._done = True  # one attempt per exchange, whatever the outcome
        text = _decode(data)
        without_proof, sep, proof_part = text.rpartition(",")
        if not sep:
            raise ScramAuthError("client-final-message lacks a proof")
        proof = _unb64(_attr(proof_part, "p"))
        parts = without_proof.split(",")
        if len(parts) < 2:
            raise ScramAuthError("malformed client-final-message")
        if _unb64(_attr(parts[0], "c")) != self._gs2_header:
            raise ScramAuthError("channel binding data does not match")
        if not hmac.compare_digest(_attr(parts[1], "r").encode(), self._nonce.encode()):
            raise ScramAuthError("nonce mismatch")
        _check_extensions(parts[2:])
        if len(proof) != _KEY_BYTES:
            raise ScramAuthError("client proof has the wrong length")
        auth_message = ",".join(
            (self._client_first_bare, self._server_first, without_proof)
        ).encode("utf-8")
        return self._match(self._verifiers, proof, auth_message)

    def _match(
        self, verifiers: ScramVerifierSet, proof: bytes, auth_message: bytes
    ) -> tuple[str, bytes]:
        matched: ScramKeys | None = None
        # Every key is tried, so the time taken does not say which one matched.
        for keys in verifiers.keys:
            client_key = _xor(proof, _hmac(keys.stored_key, auth_message))
            if hmac.compare_digest(hashlib.sha256(client_key).digest(), keys.stored_key):
                matched = matched or keys
        if matched is None:
            self._unmatched = (proof, auth_message)
            raise ScramAuthError("client proof does not match")
        self._unmatched = None
        signature = _hmac(matched.server_key, auth_message)
        return matched.key_id, b"v=" + _b64(signature).encode("ascii")

    def recheck(self, verifiers: ScramVerifierSet) -> tuple[str, bytes]:
        """The client-final that no key matched, tried once more against ``verifiers``
        read afresh from the store (the first set came from a worker's short-lived
        cache, which may predate a token created since). Only under the salt and count
        announced to the client, from which its proof was derived."""
        unmatched, self._unmatched = self._unmatched, None
        if unmatched is None:
            raise ScramAuthError("nothing to recheck")
        v = self._verifiers
        if verifiers.salt != v.salt or verifiers.iterations != v.iterations:
            raise ScramAuthError("client proof does not match")
        return self._match(verifiers, *unmatched)


class ScramClient:
    """The gateway's side of SCRAM-SHA-256 when it logs in to PostgreSQL."""

    mechanism = "SCRAM-SHA-256"
    _GS2_HEADER = "n,,"

    def __init__(self, password: str, nonce: bytes | None = None) -> None:
        self._password = password
        self._client_nonce = _make_nonce(nonce)
        self._client_first_bare = f"n=,r={self._client_nonce}"
        self._expected_signature: bytes | None = None

    def client_first(self) -> bytes:
        return (self._GS2_HEADER + self._client_first_bare).encode("ascii")

    def handle_server_first(self, data: bytes) -> bytes:
        if self._expected_signature is not None:
            raise ScramAuthError("unexpected server-first-message")
        text = _decode(data)
        parts = text.split(",")
        if parts[0].startswith("m="):
            raise ScramAuthError("unsupported mandatory SCRAM extension")
        if len(parts) < 3:
            raise ScramAuthError("malformed server-first-message")
        nonce = _attr(parts[0], "r")
        if not nonce.startswith(self._client_nonce) or len(nonce) == len(self._client_nonce):
            raise ScramAuthError("server nonce does not extend the client nonce")
        if not _valid_nonce(nonce):
            raise ScramAuthError("invalid server nonce")
        salt = _unb64(_attr(parts[1], "s"))
        count = _attr(parts[2], "i")
        if not (count.isascii() and count.isdigit() and 1 <= int(count) <= MAX_ITERATIONS):
            raise ScramAuthError("invalid iteration count")
        _check_extensions(parts[3:])
        if not salt:
            raise ScramAuthError("empty salt")
        salted = _salted_password(self._password, salt, int(count))
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c={_b64(self._GS2_HEADER.encode())},r={nonce}"
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        self._expected_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={_b64(_xor(client_key, signature))}".encode("ascii")

    def verify_server_final(self, data: bytes) -> None:
        if self._expected_signature is None:
            raise ScramAuthError("unexpected server-final-message")
        text = _decode(data)
        first = text.split(",")[0]
        if first.startswith("e="):
            raise ScramAuthError(f"server rejected authentication: {first[2:]}")
        signature = _unb64(_attr(first, "v"))
        if not hmac.compare_digest(signature, self._expected_signature):
            raise ScramAuthError("server signature does not match")
