"""An action event's payload written straight as canonical JSON text.

The recorder writes one action event per statement the gateway relays, so this is its
hottest code. The text is exactly what ``canonical_json`` gives for the payload dict the
writer used to build (``tests/store/test_writer_identity.py`` keeps that dict as the
reference and compares): the keys are written in sorted order, each value as
``json_value`` writes it (what the encoder writes for it nested), and the whole text
goes through ``storable_json`` once, which works character by character.

A verdict's part of the payload (its statements and the verdict) is the same for every
execution of a statement the gate has cached, and in a batch it is the same object:
pickle sends an object referenced many times once. So it is encoded once per batch,
keyed by the object's id: valid while the batch holds every record, so no id can be
reused meanwhile, and the object is frozen.
"""

from __future__ import annotations

import math
from json.encoder import encode_basestring

from wardgate.actions import Verdict
from wardgate.audit.chain import json_value, storable_json
from wardgate.audit.records import ActionRecord
from wardgate.audit.responses import response_payload

# The values of "statements" and of "verdict", encoded.
VerdictParts = tuple[str, str]


def verdict_parts(v: Verdict) -> VerdictParts:
    statements = [
        {
            "klass": s.klass,
            "kinds": list(s.kinds),
            "error": s.error,
            "tables_read": list(s.tables_read),
            "tables_written": list(s.tables_written),
            "functions": list(s.functions),
        }
        for s in v.statements
    ]
    verdict = {
        "decision": str(v.decision),
        "rule": v.rule,
        "rules": list(v.rules),
        "reason": v.reason,
        "enforced": v.enforced,
    }
    return json_value(statements), json_value(verdict)


def action_json(record: ActionRecord, verdicts: dict[int, VerdictParts]) -> str:
    """The payload of ``record``'s event; ``verdicts``: the batch's encoded verdicts.

    Who, from where and over which protocol is in the session's start event; an action
    carries only what is its own."""
    a, v = record.action, record.verdict
    parts = verdicts.get(id(v))
    if parts is None:
        parts = verdicts[id(v)] = verdict_parts(v)
    duration = record.duration_ms
    if type(duration) is float and math.isfinite(duration):
        duration_json = float.__repr__(duration)  # what the encoder calls for a float
    else:
        duration_json = json_value(_finite(duration))  # null, or the encoder's answer
    # The fields every action has, most of them a str or None: a call to json_value
    # each cost as much as what it calls.
    command, error, sqlstate = record.command, record.error, record.sqlstate
    kind, resolved, text, status = a.kind, a.resolved, a.text, record.status
    # The keys in sorted order, as canonical_json writes them.
    out = [
        '{"command":', encode_basestring(command) if type(command) is str else json_value(command),
        ',"duration_ms":', duration_json,
        ',"error":', "null" if error is None else json_value(error),
        ',"kind":', encode_basestring(kind) if type(kind) is str else json_value(kind),
    ]  # fmt: skip
    if record.output is not None:
        out += (',"output":', json_value(record.output))
    out += (
        ',"params":[', ",".join([json_value(p) for p in a.params]),
        '],"resolved":', "null" if resolved is None else json_value(resolved),
    )  # fmt: skip
    if record.result is not None:
        result = response_payload(record.result, record.rows, record.command)
        out += (',"result":', json_value(result))
    out += (
        ',"rows":', json_value(record.rows),
        ',"seq":', json_value(record.seq),
        ',"sqlstate":', "null" if sqlstate is None else json_value(sqlstate),
        ',"statements":', parts[0],
        ',"status":', encode_basestring(status) if type(status) is str else json_value(status),
        ',"text":', encode_basestring(text) if type(text) is str else json_value(text),
    )  # fmt: skip
    if record.trace_id is not None:
        out += (',"trace_id":', json_value(record.trace_id))
    out += (',"verdict":', parts[1], "}")
    return storable_json("".join(out))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
