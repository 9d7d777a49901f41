"""asyncssh as wardgate uses it: imported in one place, DSA never used.

Every module (and test) that needs asyncssh imports it from here. asyncssh still
names DSA types at import time, which cryptography 47+ reports with a
``CryptographyDeprecationWarning`` on each touch; wardgate itself never loads, offers
or accepts a DSA key (the algorithm lists below leave ``ssh-dss`` out and
``parse_public_key`` refuses one), so that warning says nothing about this program.
"""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    # Narrow on purpose: only this message, only while asyncssh's modules are imported.
    warnings.filterwarnings("ignore", "DSA is deprecated", CryptographyDeprecationWarning)
    import asyncssh

# Signature algorithms for user keys, host keys and certificates, strongest first.
# Left out on purpose: ssh-dss (DSA, 1024-bit, deprecated by OpenSSH 7.0), ssh-rsa
# (RSA with SHA-1), the ssh.com SHA-2 RSA variants and ecdsa over secp256k1.
SIGNATURE_ALGS: tuple[str, ...] = (
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp521",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp256",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
)

# Host key algorithms the gateway accepts from a target (plain keys and their
# OpenSSH certificates), in the same order.
HOST_KEY_ALGS: tuple[str, ...] = (
    *(f"{alg}-cert-v01@openssh.com" for alg in SIGNATURE_ALGS if not alg.startswith("sk-")),
    *(alg for alg in SIGNATURE_ALGS if not alg.startswith("sk-")),
)

# Key types a principal may register (`wardgate principal add-key`).
USER_KEY_TYPES: frozenset[str] = frozenset(
    {"ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ssh-rsa", "sk-ecdsa-sha2-nistp256@openssh.com"}
    | {f"ecdsa-sha2-nistp{bits}" for bits in (256, 384, 521)}
)

__all__ = ["HOST_KEY_ALGS", "SIGNATURE_ALGS", "USER_KEY_TYPES", "asyncssh"]
