"""Discovery: which columns hold sensitive values, from a sample of their values.

Pure: the sampling (a read-only session on the target) is the protocol's business
(``wardgate.postgres.discover``); this module scores the sampled values with the
detectors, proposes column rules with their evidence, renders them as YAML, and adds
them to a configuration file's text when asked to (``--apply``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import yaml

from .detect import scan
from .entities import ENTITIES

# A column whose name says what it holds: bare digits count as that entity there (a
# phone column of "4155552671"s), as after a hint word in free text.
_HINTED_NAME = re.compile(
    r"(?i)phone|mobile|social|(?<![a-z])(?:tel|fax|cell|ssn|bsn|sofi)(?![a-z])"
)
MIN_SHARE = 0.2  # of the sampled non-null values, to propose a column


@dataclass(frozen=True, slots=True)
class ColumnSample:
    qualified: str  # schema.table.column
    type_name: str
    values: tuple[str, ...]  # the sampled non-null values, as text


@dataclass(frozen=True, slots=True)
class Evidence:
    qualified: str
    type_name: str
    sampled: int
    entity: str | None  # the entity found in the most values; None: nothing found
    share: float  # of sampled values holding it
    others: tuple[tuple[str, float], ...] = ()  # other entities found, with their share


def score(sample: ColumnSample) -> Evidence:
    """The entities found in a column's sampled values, by share of values."""
    hinted = _HINTED_NAME.search(sample.qualified.rpartition(".")[2]) is not None
    counts: Counter[str] = Counter()
    for value in sample.values:
        counts.update({f.entity for f in scan(value, ENTITIES, assume_hint=hinted)})
    n = len(sample.values)
    ranked = [(e, c / n) for e, c in counts.most_common()] if n else []
    if not ranked:
        return Evidence(sample.qualified, sample.type_name, n, None, 0.0)
    (entity, share), others = ranked[0], tuple(ranked[1:])
    return Evidence(sample.qualified, sample.type_name, n, entity, share, others)


def covered_by(qualified: str, globs: Sequence[str]) -> str | None:
    """The first of ``globs`` (rule syntax: ``c``, ``t.c`` or ``s.t.c``) naming a column."""
    for pattern in globs:
        full = "*." * (2 - pattern.count(".")) + pattern if pattern.count(".") < 2 else pattern
        if fnmatchcase(qualified, full):
            return pattern
    return None


@dataclass(frozen=True, slots=True)
class Proposal:
    connection: str
    rows_per_column: int
    proposed: tuple[Evidence, ...]  # columns to mask
    silenced: tuple[tuple[Evidence, str], ...]  # found, but marked sensitive: false
    covered: tuple[tuple[Evidence, str], ...]  # found, already under a column rule
    sampled_columns: int


def propose(
    connection: str,
    evidence: Sequence[Evidence],
    *,
    rows_per_column: int,
    sensitive_globs: Sequence[str] = (),
    silenced_globs: Sequence[str] = (),
    min_share: float = MIN_SHARE,
) -> Proposal:
    proposed, silenced, covered = [], [], []
    for ev in evidence:
        if ev.entity is None or ev.share < min_share:
            continue
        if (pattern := covered_by(ev.qualified, silenced_globs)) is not None:
            silenced.append((ev, pattern))
        elif (pattern := covered_by(ev.qualified, sensitive_globs)) is not None:
            covered.append((ev, pattern))
        else:
            proposed.append(ev)
    return Proposal(
        connection, rows_per_column, tuple(proposed), tuple(silenced), tuple(covered), len(evidence)
    )


def rule_name(connection: str) -> str:
    return f"discovered-{connection}"


def _evidence_comment(ev: Evidence) -> str:
    parts = [f"{ev.entity} in {ev.share:.0%} of {ev.sampled} sampled values"]
    parts += [f"{entity} {share:.0%}" for entity, share in ev.others]
    return ", ".join(parts)


def render(proposal: Proposal, strategy: str = "partial") -> str:
    """The proposal as YAML: a ``masking.rules`` entry whose columns carry their evidence
    as comments, and the evidence again as data under ``discovery`` (which the
    configuration does not accept: copy the rule, or use ``--apply``)."""
    lines = [
        f"# wardgate masking discover {proposal.connection}: {proposal.sampled_columns} columns"
        f" sampled, up to {proposal.rows_per_column} rows each",
    ]
    for ev, pattern in proposal.silenced:
        lines.append(
            f"# silenced by sensitive: false ({pattern}): {ev.qualified}: {_evidence_comment(ev)}"
        )
    for ev, pattern in proposal.covered:
        lines.append(
            f"# already masked by column rule {pattern}: {ev.qualified}: {_evidence_comment(ev)}"
        )
    if not proposal.proposed:
        lines.append("# no new sensitive column found")
        return "\n".join(lines) + "\n"
    lines += [
        "masking:",
        "  rules:",
        *_rule_lines(proposal, strategy, indent="    "),
        "discovery:",
        f"  connection: {_scalar(proposal.connection)}",
        "  columns:",
    ]
    for ev in proposal.proposed:
        others = ", ".join(f"{e}: {s:.3f}" for e, s in ev.others)
        lines.append(
            f"    - {{column: {_scalar(ev.qualified)}, type: {_scalar(ev.type_name)},"
            f" entity: {ev.entity}, share: {ev.share:.3f}, sampled: {ev.sampled}"
            + (f", others: {{{others}}}" if others else "")
            + "}"
        )
    return "\n".join(lines) + "\n"


def _scalar(value: str) -> str:
    return yaml.safe_dump(value, default_style='"', width=10_000).strip()


def _rule_lines(proposal: Proposal, strategy: str, indent: str) -> list[str]:
    lines = [
        f"{indent}- name: {rule_name(proposal.connection)}",
        f"{indent}  connections: [{_scalar(proposal.connection)}]",
        f"{indent}  principal_kinds: [agent]",
        f"{indent}  strategy: {strategy}",
        f"{indent}  columns:",
    ]
    for ev in proposal.proposed:
        lines.append(f"{indent}    - {_scalar(ev.qualified)}  # {_evidence_comment(ev)}")
    return lines


class ApplyError(Exception):
    pass


def apply_to_config(text: str, proposal: Proposal, strategy: str = "partial") -> str:
    """The configuration text with the proposed rule added to ``masking.rules``; the rest
    of the file (comments, order, spacing) is kept. Refuses when a rule of that name
    exists, or when ``masking.rules`` is written in flow style."""
    if not proposal.proposed:
        return text
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None and not isinstance(root, yaml.MappingNode):
        raise ApplyError("the configuration is not a mapping")
    masking = _child(root, "masking")
    if not text.endswith("\n") and text:
        text += "\n"
    if masking is None:
        return (
            text
            + "masking:\n  rules:\n"
            + "\n".join(_rule_lines(proposal, strategy, "    "))
            + "\n"
        )
    if not isinstance(masking, yaml.MappingNode) or masking.flow_style:
        raise ApplyError("masking is written in flow style: add the rule by hand")
    rules = _child(masking, "rules")
    lines = text.splitlines(keepends=True)
    if rules is None:
        key_node = masking.value[0][0]
        indent = " " * key_node.start_mark.column
        at = _end_line(masking, lines)
        block = [f"{indent}rules:\n"] + [
            line + "\n" for line in _rule_lines(proposal, strategy, indent + "  ")
        ]
        return "".join(lines[:at] + block + lines[at:])
    if not isinstance(rules, yaml.SequenceNode) or rules.flow_style or not rules.value:
        raise ApplyError("masking.rules is empty or in flow style: add the rule by hand")
    for rule in rules.value:
        name = _child(rule, "name")
        if isinstance(name, yaml.ScalarNode) and name.value == rule_name(proposal.connection):
            raise ApplyError(
                f"a rule named {rule_name(proposal.connection)!r} exists: edit it by hand,"
                " or remove it and apply again"
            )
    indent = " " * (rules.value[0].start_mark.column - 2)
    at = _end_line(rules, lines)
    block = [line + "\n" for line in _rule_lines(proposal, strategy, indent)]
    return "".join(lines[:at] + block + lines[at:])


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v if isinstance(v, yaml.Node) else None
    return None


def _end_line(node: yaml.Node, lines: list[str]) -> int:
    """The line index just after a block node's last content line (its end mark may sit
    on the following key's line, or after trailing comments)."""
    line, column = node.end_mark.line, node.end_mark.column
    before = lines[line][:column] if line < len(lines) else ""
    end = min(line if not before.strip() else line + 1, len(lines))
    while end > 0 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    return end
