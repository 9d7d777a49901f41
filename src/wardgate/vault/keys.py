"""The master key: the one secret the gateway needs to read every other secret it holds.

Where it comes from, first match wins:
1. env ``WARDGATE_MASTER_KEY`` (base64 or base64url of 32 bytes) — containers, fleets;
2. the config's ``master_key`` reference (``env:NAME`` or ``file:PATH``);
3. ``<data_dir>/master.key``, generated on first use (mode 0600, directory 0700).

Every purpose gets its own key derived with HKDF, so the vault key, the fake-salt pepper
and anything added later never reuse the same bytes for two jobs.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from wardgate.config import Config

KEY_BYTES = 32
ENV_VAR = "WARDGATE_MASTER_KEY"
KEY_FILE = "master.key"
TOKEN_PEPPER_INFO = b"wardgate fake salts"
MASKING_KEY_INFO = b"wardgate masking key v1"
VAULT_KEY_INFO = b"wardgate vault aes-256-gcm v1"


class MasterKeyError(Exception):
    """The master key is missing, malformed or unsafely stored. Never contains key bytes."""


def derive_key(master_key: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master_key)


def masking_key(master_key: bytes) -> bytes:
    """The default key for hash and pseudonym masking (``masking.key`` overrides it)."""
    return derive_key(master_key, MASKING_KEY_INFO)


def web_key(master_key: bytes) -> bytes:
    """The key that signs the web UI's short-lived sign-in cookie (OIDC state)."""
    return derive_key(master_key, b"wardgate web sign-in v1")


def token_pepper(master_key: bytes) -> bytes:
    """The pepper for ``TokenService`` (fake salts of unknown principals)."""
    return derive_key(master_key, TOKEN_PEPPER_INFO)


def decode_key(text: str | bytes, origin: str) -> bytes:
    """32 key bytes from base64/base64url text (raw 32-byte files are accepted too)."""
    if isinstance(text, bytes):
        if len(text) == KEY_BYTES and not _looks_like_base64(text):
            return text
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise MasterKeyError(f"{origin}: not a base64 master key") from None
    cleaned = "".join(text.split())
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        raw = base64.b64decode(cleaned.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise MasterKeyError(f"{origin}: not a base64 master key") from None
    if len(raw) != KEY_BYTES:
        raise MasterKeyError(
            f"{origin}: the master key must be {KEY_BYTES} bytes (base64), got {len(raw)}"
        )
    return raw


def _looks_like_base64(data: bytes) -> bool:
    allowed = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=\r\n"
    return all(c in allowed for c in data)


def generate_key_text() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def load_master_key(config: Config) -> bytes:
    env_value = os.environ.get(ENV_VAR)
    if env_value:
        return decode_key(env_value, f"environment variable {ENV_VAR}")
    ref = config.master_key
    if ref:
        scheme, _, rest = ref.partition(":")
        if scheme == "env":
            value = os.environ.get(rest)
            if not value:
                raise MasterKeyError(
                    f"master_key: environment variable {rest} is not set (or empty)"
                )
            return decode_key(value, f"environment variable {rest}")
        if scheme == "file":
            path = config.path(rest)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise MasterKeyError(f"master_key: cannot read {path}: {exc.strerror}") from None
            return decode_key(data, str(path))
        raise MasterKeyError(
            "master_key: use env:NAME or file:PATH (the vault itself is locked by this key)"
        )
    return _key_file(config.data_path / KEY_FILE)


def _key_file(path: Path) -> bytes:
    if not path.exists():
        _create_key_file(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise MasterKeyError(f"cannot read the master key {path}: {exc.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MasterKeyError(
            f"the master key {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MasterKeyError(f"cannot read the master key {path}: {exc.strerror}") from None
    return decode_key(data, str(path))


def _create_key_file(path: Path) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise MasterKeyError(f"cannot create {path.parent}: {exc.strerror}") from None
    # Write a private temporary file, then hard-link it into place: link() fails if the
    # key already exists, so two gateway processes starting at once agree on one key
    # instead of each overwriting the other's.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (generate_key_text() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    except OSError as exc:
        raise MasterKeyError(f"cannot create the master key {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
