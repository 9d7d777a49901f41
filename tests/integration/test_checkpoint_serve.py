"""`wardgate serve` signs the chain head at shutdown, after its last audit records, and
copies them to the sink first: the exported checkpoint then covers the whole session,
and a bad key stops serve at start with a sentence."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.integration.conftest import base_config, make_gateway
from wardgate.audit.checkpoint import generate_key
from wardgate.store.db import Store
from wardgate.store.models import AuditHead

pytestmark = pytest.mark.integration


def test_shutdown_signs_the_head_and_copies_it(it_database: str, tmp_path: Path) -> None:
    key = tmp_path / "keys" / "cp.key"
    key.parent.mkdir()
    config = base_config(it_database) + (
        f"audit:\n  checkpoint: {{key: {key}, interval: 1h}}\n"
        f"  sink: {{file: {tmp_path / 'copy.jsonl'}, interval: 1h}}\n"
    )
    gw = make_gateway(tmp_path / "gw", config)
    private, public = generate_key()
    key.write_text(private)
    Path(f"{key}.pub").write_text(public)
    gw.start()
    try:
        app = f"cp-{uuid.uuid4().hex[:6]}"
        with psycopg.connect(gw.dsn("dev", application_name=app), autocommit=True) as conn:
            conn.execute("select 1").fetchall()
    finally:
        gw.stop()  # SIGTERM: the recorder writes its last batch, then copy and sign
    exported = json.loads(gw.cli("audit", "checkpoint").stdout)
    store = Store(gw.env["WARDGATE_STORE"])
    try:
        with store.session(write=False) as s:
            head = s.get(AuditHead, 1)
            assert head is not None
            assert (exported["seq"], exported["head_hash"]) == (head.last_id, head.last_hash)
    finally:
        store.dispose()
    lines = [json.loads(x) for x in (tmp_path / "copy.jsonl").read_text().splitlines()]
    assert lines[-1] == {"checkpoint": exported}
    assert [x["id"] for x in lines[:-1]] == list(range(1, exported["seq"] + 1))
    verified = gw.cli(
        "audit", "verify", "--checkpoint", "/dev/stdin", "--public-key", f"{key}.pub",
        input=json.dumps(exported),
    )  # fmt: skip
    assert "match the checkpoint" in verified.stdout

    key.write_text("garbage\n")
    with pytest.raises(AssertionError, match="not an Ed25519 private key"):
        gw.start()
