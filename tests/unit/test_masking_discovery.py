"""Discovery's pure half: scoring sampled values, proposing columns, rendering YAML, and
adding the rule to a configuration file's text without disturbing the rest."""

from __future__ import annotations

import pytest
import yaml

from wardgate.masking.discovery import (
    ApplyError,
    ColumnSample,
    apply_to_config,
    covered_by,
    propose,
    render,
    score,
)


def _proposal(*samples: ColumnSample, **kw: list[str]):  # type: ignore[no-untyped-def]
    return propose("shop", [score(s) for s in samples], rows_per_column=10, **kw)


EMAILS = ColumnSample("public.customers.email", "text", ("a@example.com", "b@example.org"))
PHONES = ColumnSample("public.customers.phone", "text", ("4155552671", "2025550143"))
PLAIN = ColumnSample("public.orders.ref", "text", ("ORD-1", "ORD-2", "ORD-3"))


def test_score_and_hints_from_the_column_name() -> None:
    ev = score(EMAILS)
    assert (ev.entity, ev.share, ev.sampled) == ("email", 1.0, 2)
    # Bare digits are phone numbers in a column called phone, not elsewhere.
    assert score(PHONES).entity == "phone"
    assert score(ColumnSample("public.t.amount", "bigint", ("4155552671",))).entity is None
    assert score(PLAIN).entity is None
    assert score(ColumnSample("public.t.c", "text", ())).share == 0.0


def test_globs_follow_rule_syntax() -> None:
    assert covered_by("public.customers.email", ["email"]) == "email"
    assert covered_by("public.customers.email", ["customers.email"]) == "customers.email"
    assert covered_by("public.customers.email", ["crm.*.email"]) is None


def test_proposal_keeps_silenced_and_covered_apart() -> None:
    p = _proposal(EMAILS, PHONES, PLAIN, sensitive_globs=["*.phone"], silenced_globs=[])
    assert [e.qualified for e in p.proposed] == ["public.customers.email"]
    assert [g for _, g in p.covered] == ["*.phone"]
    p = _proposal(EMAILS, silenced_globs=["customers.email"])
    assert p.proposed == () and [g for _, g in p.silenced] == ["customers.email"]


def test_render_is_yaml_with_the_evidence() -> None:
    data = yaml.safe_load(render(_proposal(EMAILS, PHONES), "redact"))
    (rule,) = data["masking"]["rules"]
    assert rule == {
        "name": "discovered-shop",
        "connections": ["shop"],
        "principal_kinds": ["agent"],
        "strategy": "redact",
        "columns": ["public.customers.email", "public.customers.phone"],
    }
    assert data["discovery"]["columns"][0] == {
        "column": "public.customers.email",
        "type": "text",
        "entity": "email",
        "share": 1.0,
        "sampled": 2,
    }


BASE = "store: sqlite:///x.db\n# a comment that stays\nconnections: {}\n"


def _rules(text: str) -> list[dict[str, object]]:
    return yaml.safe_load(text)["masking"]["rules"]  # type: ignore[no-any-return]


def test_apply_without_masking_appends_a_section() -> None:
    out = apply_to_config(BASE, _proposal(EMAILS))
    assert out.startswith(BASE)
    assert _rules(out)[0]["columns"] == ["public.customers.email"]


def test_apply_to_masking_without_rules() -> None:
    text = BASE + "masking:\n  key: env:K\n  paths: []\n"
    out = apply_to_config(text, _proposal(EMAILS))
    data = yaml.safe_load(out)
    assert data["masking"]["key"] == "env:K" and data["masking"]["paths"] == []
    assert data["masking"]["rules"][0]["name"] == "discovered-shop"


def test_apply_appends_after_existing_rules_and_keeps_what_follows() -> None:
    text = (
        BASE
        + "masking:\n  rules:\n    - name: a\n      entities: [all]\n    # trailing comment\n"
        + "  paths: []\nroles: {}\n"
    )
    out = apply_to_config(text, _proposal(EMAILS))
    assert [r["name"] for r in _rules(out)] == ["a", "discovered-shop"]
    data = yaml.safe_load(out)
    assert data["masking"]["paths"] == [] and data["roles"] == {}
    assert "# trailing comment" in out and "# a comment that stays" in out


def test_apply_refuses_a_second_rule_and_flow_style() -> None:
    once = apply_to_config(BASE, _proposal(EMAILS))
    with pytest.raises(ApplyError, match="exists"):
        apply_to_config(once, _proposal(EMAILS))
    with pytest.raises(ApplyError, match="flow style"):
        apply_to_config(BASE + "masking: {rules: []}\n", _proposal(EMAILS))
    assert apply_to_config(BASE, _proposal(PLAIN)) == BASE  # nothing to add
