"""The TLS context offered to clients: the configured certificate, or a self-signed one
generated once per data directory. (Dialling PostgreSQL with TLS: postgres/upstream.py.)"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from wardgate.config import Config

log = logging.getLogger("wardgate.tls")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def generate_self_signed(directory: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """A P-256 key and a one-year self-signed certificate for localhost/127.0.0.1/::1."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"wardgate {hostname}")])
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName(hostname),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_pair(config: Config) -> tuple[Path, Path, bool]:
    """The files of the gateway's TLS pair (after server_context made them) and whether
    it is the generated self-signed one (clients then pin that certificate)."""
    if config.tls.cert and config.tls.key:
        return config.path(config.tls.cert), config.path(config.tls.key), False
    directory = config.data_path / "tls"
    return directory / "server.crt", directory / "server.key", True


def server_context(config: Config) -> ssl.SSLContext:
    """The context offered on SSLRequest: the configured pair, or a generated one."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls.cert and config.tls.key:
        ctx.load_cert_chain(config.path(config.tls.cert), config.path(config.tls.key))
        return ctx
    directory = config.data_path / "tls"
    cert, key = directory / "server.crt", directory / "server.key"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # All workers (and replicas sharing data_dir) get here at once: one generates the pair
    # under the lock while the others wait, then load it. Unlocked, two generators interleave
    # their writes and leave a key that does not match the certificate.
    with open(directory / ".generate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cert.exists() and key.exists()):
            cert, key = generate_self_signed(directory)
            log.info("generated a self-signed TLS certificate at %s", cert)
        ctx.load_cert_chain(cert, key)
    return ctx
