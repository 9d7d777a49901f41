"""The shell classifier under arbitrary text: it never raises, always answers with
StatementInfos of a known class and kinds, answers the same way every time, and a
destructive command appended on its own line is never lost."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from wardgate.actions import StatementInfo
from wardgate.policy.shell import SHELL_CLASSES, SHELL_KINDS, _classify, classify_command

# Characters that steer a shell parser: quotes, expansions, operators, redirections.
SHELLISH = "abcrmls -/._~*?[]|&;()<>{}$`'\"\\=!#\n\t0123456789"
TOKENS = [
    "ls", "rm", "-rf", "/", "sudo", "bash", "sh", "-c", "'", '"', "$(", ")", "`", "|", "||",
    "&&", ";", "&", ">", ">>", "<", "<<", "EOF", "<<<", "2>&1", "/etc/x", "/dev/sda", "{",
    "}", "(", "$X", "${X:-", "}", "eval", "env", "xargs", "find", "-exec", "\\;", "curl",
    "x", "\n", "#", "dd", "of=/dev/sda", "<(", "nc", "-l", "\\", "=", "A=1", "$'", "*",
]  # fmt: skip

texts = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=SHELLISH, max_size=200),
    st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join),
    st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
)


def _check(infos: tuple[StatementInfo, ...]) -> None:
    assert isinstance(infos, tuple)
    for info in infos:
        assert isinstance(info, StatementInfo)
        assert info.klass in SHELL_CLASSES
        assert set(info.kinds) <= SHELL_KINDS, set(info.kinds) - SHELL_KINDS
        if info.klass == "unknown" and "parse_error" in info.kinds:
            assert info.error


@settings(max_examples=600, deadline=None)
@given(texts)
def test_never_raises_and_answers_in_known_terms(text: str) -> None:
    infos = classify_command(text)
    _check(infos)
    assert bool(infos) == bool(text.strip())


@settings(max_examples=300, deadline=None)
@given(texts)
def test_deterministic_and_independent_of_the_cache(text: str) -> None:
    assert classify_command(text) == _classify(text) == _classify(text)


@settings(max_examples=400, deadline=None)
@given(texts)
def test_a_destructive_line_after_anything_is_seen_or_fails_closed(prefix: str) -> None:
    # A blank line ends whatever the prefix started (a continuation, a comment); what
    # the parser still holds open (a quote, a here-document) makes the whole unknown.
    infos = classify_command(prefix + "\n\nrm -rf /")
    kinds = {k for info in infos for k in info.kinds}
    worst = max((i.klass for i in infos), key=SHELL_CLASSES.index)
    assert worst == "unknown" or "rm_rf_broad" in kinds, infos
