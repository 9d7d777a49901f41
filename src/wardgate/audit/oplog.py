"""What an operator reads in the gateway log: who signed in, what was blocked, which
reviews and grants were filed and decided. One INFO line per event, with the principal,
connection and rule as fields (``log.format: json`` turns them into keys). Statement
text is never logged: it may hold a literal the audit log masks; the session id and
sequence number find it in the audit log."""

from __future__ import annotations

import logging

from wardgate.actions import Decision
from wardgate.audit.records import ActionRecord, Record, SessionRecord

# reviews/service.py logs review and grant events under the same name.
log = logging.getLogger("wardgate.events")


def note_record(record: Record) -> None:
    """The events among audit records: a session opened (a sign-in on a protocol) and
    an action the gate refused."""
    if type(record) is ActionRecord and record.status != "blocked":
        return  # nearly every record: nothing to say, and no logger asked
    if not log.isEnabledFor(logging.INFO):
        return
    fields: dict[str, object]
    if isinstance(record, SessionRecord):
        fields = {
            "event": "session.opened",
            "principal": record.principal.name,
            "connection": record.connection,
            "session": record.id,
            "protocol": record.protocol,
            "client": record.client_addr,
        }
        log.info(
            "sign-in: %s on %s (%s) from %s, session %s",
            record.principal.name,
            record.connection or "-",
            record.protocol,
            record.client_addr,
            record.id,
            extra={"fields": fields},
        )
    elif isinstance(record, ActionRecord) and record.status == "blocked":
        verdict, action = record.verdict, record.action
        refused = "blocked" if verdict.decision is Decision.BLOCK else "held"
        fields = {
            "event": f"action.{refused}",
            "principal": action.principal.name,
            "connection": action.connection,
            "rule": verdict.rule,
            "session": record.session_id,
            "seq": record.seq,
            "kind": action.kind,
        }
        log.info(
            "%s: %s %s on %s by rule %s (session %s #%d)",
            refused,
            action.principal.name,
            action.kind,
            action.connection,
            verdict.rule,
            record.session_id,
            record.seq,
            extra={"fields": fields},
        )
