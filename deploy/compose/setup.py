"""The Compose quick start's one-shot setup, run with the wardgate image's Python.

1. SSH keys, made once and kept in the ssh-keys volume: the demo host's host key, the
   key the gateway logs in to it with (the host trusts only that key), and the gateways'
   own SSH host key, copied into each replica's data volume: a fleet shows one host key.
2. The gateways' configuration: wardgate.yaml.tmpl with the demo host's public host key
   pinned in place of @SSH_TARGET_HOST_KEY@, written to the config volume.

Nothing secret is printed. Run again, it keeps the keys and rewrites the configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

# Where the volumes are mounted (compose.yaml); tests point these elsewhere.
KEYS = Path(os.environ.get("SETUP_KEYS", "/keys"))
CONFIG = Path(os.environ.get("SETUP_CONFIG", "/etc/wardgate/wardgate.yaml"))
TEMPLATE = Path(os.environ.get("SETUP_TEMPLATE", "/setup/wardgate.yaml.tmpl"))
DATA = [Path(p) for p in os.environ.get("SETUP_DATA", "/data/a:/data/b").split(":")]
GATEWAY_UID = 10001  # the image's user: it reads its private key


def key_pair(path: Path, owner: int) -> asyncssh.SSHKey:
    if not path.exists():
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(path))
        key.write_public_key(f"{path}.pub")
        print(f"setup: generated {path.name}")
    os.chown(path, owner, owner)
    path.chmod(0o600)
    return asyncssh.read_private_key(str(path))


def main() -> None:
    host = key_pair(KEYS / "target" / "ssh_host_ed25519_key", 0)
    gateway = key_pair(KEYS / "gateway_ed25519", GATEWAY_UID)
    fleet_key = KEYS / "gateway_host_ed25519_key"
    key_pair(fleet_key, 0)
    for data in DATA:
        os.chown(data, GATEWAY_UID, GATEWAY_UID)
        data.chmod(0o700)
        copy = data / "ssh_host_ed25519_key"
        copy.write_bytes(fleet_key.read_bytes())
        os.chown(copy, GATEWAY_UID, GATEWAY_UID)
        copy.chmod(0o600)
    authorized = KEYS / "target" / "authorized_keys"
    authorized.write_bytes(gateway.export_public_key("openssh"))
    authorized.chmod(0o644)
    host_key = host.export_public_key("openssh").decode().split()
    template = TEMPLATE.read_text()
    config = template.replace("@SSH_TARGET_HOST_KEY@", f"{host_key[0]} {host_key[1]}")
    out = CONFIG
    partial = out.with_suffix(".partial")
    partial.write_text(config)
    partial.chmod(0o644)
    partial.replace(out)
    print(f"setup: wrote {out} (demo SSH host key {host.get_fingerprint()})")


if __name__ == "__main__":
    main()
