"""Walking bashlex trees: pipelines, lists, compounds, substitutions, redirections,
prefixes, and the scripts of ``bash -c``, ``su -c``, ``watch`` and ``trap`` parsed again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import bashlex
import bashlex.errors
import bashlex.heredoc
import bashlex.subst

from wardgate.actions import StatementInfo
from wardgate.policy.shell.args import (
    _interpreter_mode,
    _is_assignment,
    _scan_prefix,
    _shell_script,
)
from wardgate.policy.shell.inert import active_expansion, expands, shape, unquote
from wardgate.policy.shell.judge import _Facts, _judge
from wardgate.policy.shell.paths import _is_device, _names_stdin
from wardgate.policy.shell.prefixes import _PREFIXES, _SU_VALUES, _prefix_alone
from wardgate.policy.shell.programs import _resolve
from wardgate.policy.shell.readonly import prefix_problem, program_problem, variable_problem
from wardgate.policy.shell.tables import (
    _DECODERS,
    _DOWNLOADERS,
    _HIJACK_VARS,
    _MAX_DEPTH,
    _SHELLS,
    _SINKS,
)


def _patch_bashlex() -> None:
    """Two bashlex 0.18 bugs, fixed where they sit (idempotent):

    - here-document lines are compared with the delimiter *before* quote removal, so
      ``cat <<'EOF'`` never ends; bash uses the quote-removed word;
    - a word holding ``${`` with no ``}`` after it (reachable through ``$'${'``) makes
      the word expander start over forever, eating memory; it is a parse error.
    """
    if getattr(bashlex.heredoc.makeheredoc, "_wardgate", False):
        return
    makeheredoc = bashlex.heredoc.makeheredoc
    paramexpand = bashlex.subst._paramexpand

    def fixed_makeheredoc(tokenizer: Any, redirnode: Any, lineno: int, killleading: bool) -> Any:
        word = redirnode.output.word
        redirnode.output.word = "".join(ch for ch in word if ch not in "'\"\\")
        return makeheredoc(tokenizer, redirnode, lineno, killleading)

    def fixed_paramexpand(parserobj: Any, string: str, sindex: int) -> Any:
        if string[sindex + 1 : sindex + 2] == "{" and string.find("}", sindex + 2) < 0:
            raise bashlex.errors.ParsingError("bad substitution: no closing '}'", string, sindex)
        return paramexpand(parserobj, string, sindex)

    fixed_makeheredoc._wardgate = True  # type: ignore[attr-defined]
    bashlex.heredoc.makeheredoc = fixed_makeheredoc
    bashlex.subst._paramexpand = fixed_paramexpand


_patch_bashlex()


@dataclass(frozen=True, slots=True)
class _Word:
    text: str  # after quote removal; expansions stay as written ($X, $(...))
    dynamic: bool = False  # an expansion decides (part of) it at run time
    hidden: bool = False  # bashlex could not read it: $'...', $(...) inside ${...}
    runs: frozenset[str] = frozenset()  # programs its substitutions run
    fixed: bool = True  # known now: no expansion, no unquoted glob or brace
    shape: str = ""  # what it may become, as an fnmatch glob (inert.shape)


@dataclass(frozen=True, slots=True)
class _Redirect:
    op: str
    fd: int | None  # the descriptor redirected; None: the operator's default
    target: _Word | None = None  # the file; None for 2>&1, >&- and here-documents
    hidden: bool = False


@dataclass(frozen=True, slots=True)
class _Scope:
    """What the enclosing commands impose on the simple commands inside them."""

    depth: int = 0
    floor: str = "read"
    kinds: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    redirects: tuple[_Redirect, ...] = ()
    # Kinds a shell gets when it reads its script from this stdin (the SSH client's
    # stdin by default: an interactive shell the gate never sees).
    stdin: tuple[str, ...] = ("interactive",)
    appended: bool = False  # xargs or find -exec add arguments at run time


_WRITE_REDIRECTS = frozenset({">", ">>", ">|", "&>", "&>>", "<>", ">&"})
_DOCUMENTS = frozenset({"<<", "<<-", "<<<"})


def _apply_redirect(r: _Redirect, facts: _Facts, stdin: tuple[str, ...]) -> tuple[str, ...]:
    """Record what a redirection reads or writes; return the command's stdin."""
    if r.hidden:
        facts.at_least("unknown", "obfuscated")
    if r.op in _DOCUMENTS:
        return ("obfuscated",) if r.fd in (None, 0) else stdin  # literal text fed in
    if r.target is None:
        return stdin
    path = r.target.text
    if path.startswith(("/dev/tcp/", "/dev/udp/")):
        facts.at_least("write", "dev_tcp")  # bash opens a network connection
        return stdin
    if r.op in ("<", "<>"):
        facts.read.append(path)
        stdin = ("source",) if r.fd in (None, 0) else stdin
    if r.op in _WRITE_REDIRECTS and path not in _SINKS:
        facts.at_least("write", "redirect_write")
        facts.written.append(path)
    return stdin


class _Walker:
    """Visits bashlex trees, appending one StatementInfo per simple command to ``out``."""

    def __init__(self) -> None:
        self.out: list[StatementInfo] = []

    def script(self, source: str, scope: _Scope) -> None:
        if scope.depth > _MAX_DEPTH:
            self.fail(source, scope, "shell scripts nested too deeply")
            return
        try:
            trees = bashlex.parse(source)
        except Exception as exc:  # noqa: BLE001 - whatever bashlex cannot read fails closed
            self.fail(source, scope, str(exc) or type(exc).__name__)
            return
        for tree in trees:
            self.node(tree, source, scope)
        problem = active_expansion(source)
        if problem is not None:
            # Not a read whatever runs: bash would run or evaluate code the list never saw.
            facts = self.facts(source, scope)
            facts.at_least("write", "active_expansion")
            facts.error = f"not provably a read: {problem}"
            self.out.append(facts.info())

    def fail(self, text: str, scope: _Scope, error: str) -> None:
        facts = self.facts(text, scope)
        facts.error = error
        facts.at_least("unknown", "parse_error")
        self.out.append(facts.info())

    @staticmethod
    def facts(text: str, scope: _Scope) -> _Facts:
        return _Facts(text, scope.floor, list(scope.kinds), list(scope.functions))

    def node(self, node: Any, source: str, scope: _Scope) -> None:
        kind = node.kind
        if kind == "command":
            self.command(node, source, scope)
        elif kind == "pipeline":
            self.pipeline(node, source, scope)
        elif kind == "compound":
            own = tuple(self.redirect(r, source, scope) for r in getattr(node, "redirects", ()))
            inner = replace(scope, redirects=scope.redirects + own)
            for part in node.list:
                self.node(part, source, inner)
        elif kind in ("list", "if", "for", "while", "until", "function"):
            self.changes_names(node, source, scope)
            for part in node.parts:
                self.node(part, source, scope)
        elif kind == "word":  # a for loop's words, a function's name
            if self.word(node, source, scope).hidden:
                self.fail(node.word, scope, "expansion the parser cannot read")
        elif kind not in ("reservedword", "operator", "pipe"):
            self.fail(source[node.pos[0] : node.pos[1]], scope, f"unsupported construct {kind}")

    def changes_names(self, node: Any, source: str, scope: _Scope) -> None:
        """A function definition changes what a name runs; a for loop assigns a variable;
        a background job outlives the command."""
        text = source[node.pos[0] : node.pos[1]]
        reason = None
        if node.kind == "function":
            reason = "it defines a shell function, which changes what a name runs"
        elif node.kind == "list" and any(p.kind == "operator" and p.op == "&" for p in node.parts):
            reason = "a background job (&) keeps running on the host after the command ends"
        elif node.kind == "for":
            name = next((p.word for p in node.parts if p.kind == "word"), "")
            reason = variable_problem(name + "=")
        if reason is not None:
            facts = self.facts(text, scope)
            facts.not_read(reason)
            self.out.append(facts.info())

    def pipeline(self, node: Any, source: str, scope: _Scope) -> None:
        feeds: tuple[str, ...] = ()  # kinds of what earlier stages pour into the next
        first = True
        for part in node.parts:
            if part.kind in ("pipe", "reservedword"):
                continue
            start = len(self.out)
            piped = replace(scope, stdin=("pipe_to_shell", *feeds))
            self.node(part, source, scope if first else piped)
            first = False
            ran = {f for info in self.out[start:] for f in info.functions}
            documents = part.kind == "command" and any(
                p.kind == "redirect" and p.type in _DOCUMENTS for p in part.parts
            )
            if (ran & _DECODERS or documents) and "obfuscated" not in feeds:
                feeds = (*feeds, "obfuscated")  # a literal or decoded text, not a fetched file

    def word(self, node: Any, source: str, scope: _Scope) -> _Word:
        """The word, after classifying the commands its substitutions run."""
        dynamic = hidden = False
        runs: set[str] = set()
        for part in getattr(node, "parts", ()):
            if part.kind in ("commandsubstitution", "processsubstitution"):
                dynamic = True
                start = len(self.out)
                self.node(part.command, source, replace(scope, redirects=()))
                runs.update(f for info in self.out[start:] for f in info.functions)
            elif part.kind == "parameter":
                value = getattr(part, "value", None)
                if not value and _plain_dollar(source, node.pos[0], part.pos[0]):
                    continue  # "cost$", "foo$": a dollar sign, not an expansion
                dynamic = True
                # bashlex reads $'..' and $".." as a nameless parameter (and mangles the
                # word), and does not parse the $(...) inside ${X:-$(...)}.
                hidden = hidden or not value or "$(" in value or "`" in value
        raw = source[node.pos[0] : node.pos[1]]
        fixed = not (dynamic or hidden or expands(raw))
        text = unquote(raw) if raw else node.word  # bashlex's own removal is wrong at times
        return _Word(text, dynamic, hidden, frozenset(runs), fixed, shape(raw))

    def redirect(self, node: Any, source: str, scope: _Scope) -> _Redirect:
        fd = node.input if isinstance(node.input, int) else None
        output = node.output
        if node.type in ("<<", "<<-"):
            delimiter = source[output.pos[0] : output.pos[1]]
            body = node.heredoc.value if getattr(node, "heredoc", None) is not None else ""
            # An unquoted delimiter lets the body's $(...) run, unseen by the parser.
            expands = not any(ch in delimiter for ch in "'\"\\")
            return _Redirect(node.type, fd, hidden=expands and ("$(" in body or "`" in body))
        if getattr(output, "kind", None) != "word":
            return _Redirect(node.type, fd)  # 2>&1, >&-
        word = self.word(output, source, scope)
        if node.type == "<<<":
            return _Redirect(node.type, fd, hidden=word.hidden)
        return _Redirect(node.type, fd, word, word.hidden)

    def command(self, node: Any, source: str, scope: _Scope) -> None:
        assigns: list[_Word] = []
        words: list[_Word] = []
        redirects = list(scope.redirects)
        for part in node.parts:
            if part.kind == "assignment":
                assigns.append(self.word(part, source, scope))
            elif part.kind == "word":
                words.append(self.word(part, source, scope))
            elif part.kind == "redirect":
                redirects.append(self.redirect(part, source, scope))
        self.simple(source[node.pos[0] : node.pos[1]], assigns, words, redirects, scope)

    def simple(
        self,
        text: str,
        assigns: Sequence[_Word],
        words: Sequence[_Word],
        redirects: Sequence[_Redirect],
        scope: _Scope,
    ) -> None:
        facts = self.facts(text, scope)
        facts.words.extend(w.shape for w in (*assigns, *words))
        facts.words.extend(r.target.shape for r in redirects if r.target is not None)
        named = [*words[1:], *(r.target for r in redirects if r.target is not None)]
        if any(_is_device(w.text) for w in named):
            # Opening a device can change it (a watchdog arms, a tape rewinds) or dump a disk.
            facts.not_read("a word names a device under /dev")
        stdin = scope.stdin
        for r in redirects:
            stdin = _apply_redirect(r, facts, stdin)
        for a in assigns:
            if a.hidden:
                facts.at_least("unknown", "obfuscated")
            if (problem := variable_problem(a.text)) is not None:
                facts.not_read(problem)
            if a.text.partition("=")[0].rstrip("+") in _HIJACK_VARS:
                facts.at_least("write", "env_override")
        if any(w.hidden for w in words):
            facts.at_least("unknown", "obfuscated")
        if not words:
            if assigns:
                facts.at_least(facts.klass, "assignment")
            self.out.append(facts.info())
            return
        self.program(list(words), facts, replace(scope, redirects=tuple(redirects), stdin=stdin))

    def program(self, words: list[_Word], facts: _Facts, scope: _Scope) -> None:
        """Strip prefixes, then judge the program that runs."""
        replaces_shell = False
        appended = scope.appended
        while True:
            first = words[0]
            globbed = first.text != "[" and any(ch in first.text for ch in "*?[")
            if first.dynamic or first.hidden or globbed:
                # The program is only known at run time: $(echo rm), $CMD, /bin/r?
                facts.functions.append(first.text.lower())
                facts.at_least("unknown", "obfuscated")
                self.out.append(facts.info())
                return
            name, names = _resolve(first.text)
            before = len(facts.functions)
            facts.functions.extend(names)
            rest = words[1:]
            texts = [w.text for w in rest]
            if name in ("su", "runuser"):
                facts.at_least(facts.klass, "sudo")
                target = _su_target(name, rest)
                if target is None:
                    facts.at_least("unknown", "interactive")  # a login shell fed by the client
                elif isinstance(target[1], _Word):
                    self.inline(target[1], facts, scope)
                    return
                else:
                    words = rest[target[1] :]
                    continue
                self.out.append(facts.info())
                return
            prefix = _PREFIXES.get(name or "")
            if prefix is None:
                break
            facts.at_least(facts.klass, prefix.kind)
            opts, start = _scan_prefix(texts, prefix.values, prefix.skip, prefix.assignments)
            own = rest[: len(texts) if start is None else start]
            for text in texts[: len(texts) if start is None else start]:
                if _is_assignment(text) and text.partition("=")[0] in _HIJACK_VARS:
                    facts.at_least("write", "env_override")
            reason = prefix_problem(name or "", opts.flags, [w.text for w in own])
            if reason is None and not all(w.fixed for w in own):
                reason = f"{name}'s options are only known at run time"
            if reason is not None:
                facts.not_read(reason)
            if start is not None and name == "xargs":
                # xargs -I R puts each input line where R occurs, the program name too.
                marks = [r for r in opts.get("-I", "--replace") if r]
                if any(r in rest[start].text for r in marks):
                    facts.functions.append(rest[start].text.lower())
                    facts.at_least("unknown", "obfuscated")
                    self.out.append(facts.info())
                    return
            if start is None and appended:
                # `xargs env`, `xargs xargs`, `find -exec nice {} ;`: the arguments added at
                # run time are the command this prefix runs.
                facts.at_least("unknown", "obfuscated")
                self.out.append(facts.info())
                return
            appended = appended or name == "xargs"
            if name == "command" and opts.has("-v", "-V"):
                start = None  # command -v only says what a name is
            if opts.get(*prefix.outputs):
                facts.at_least("write")
                facts.written.extend(opts.get(*prefix.outputs))
            scripts = opts.get(*prefix.script)
            if scripts:  # env -S 'cmd args', flock /lock -c 'cmd'
                self.inline(_Word(scripts[0], any(w.dynamic for w in rest)), facts, scope)
                return
            if name == "watch" and start is not None and not opts.has("-x", "--exec"):
                joined = rest[start:]  # watch hands its arguments to sh -c
                script = " ".join(w.text for w in joined)
                unseen = any(w.dynamic or w.hidden for w in joined)
                self.inline(_Word(script, unseen), facts, scope)
                return
            if start is None:
                alone = _prefix_alone(prefix, opts)
                facts.at_least(alone, *(("interactive",) if alone == "unknown" else ()))
                self.out.append(facts.info())
                return
            replaces_shell = replaces_shell or name == "exec"
            words = rest[start:]
        self.judge(name, rest, facts, replace(scope, appended=appended), before, replaces_shell)

    def judge(
        self,
        name: str | None,
        rest: list[_Word],
        facts: _Facts,
        scope: _Scope,
        before: int,
        replaces_shell: bool,
    ) -> None:
        texts = [w.text for w in rest]
        # What the program's children inherit: the prefixes, not the program itself.
        inherited = replace(
            scope,
            depth=scope.depth + 1,
            floor=facts.floor(),
            kinds=tuple(facts.kinds),
            functions=tuple(facts.functions[:before]),
        )
        if name == "eval":
            facts.at_least("unknown", "eval", "obfuscated")
        elif name == "source":
            facts.at_least("unknown", "source")
            if rest and rest[0].dynamic:
                facts.at_least("unknown", *_fed_kinds(rest[0]))
            elif rest:
                facts.read.append(rest[0].text)
        elif name in _SHELLS:
            self.shell(name, rest, facts, scope)
            return
        elif name is not None and (
            (mode := _interpreter_mode(name, texts)) == "stdin"
            or (mode == "file" and any(_names_stdin(t) for t in texts))
        ):
            facts.at_least("unknown", name, *scope.stdin)  # its program comes from stdin
        else:
            call = _judge(name, texts, facts)
            facts.flags.extend(call.opts.flags)
            reason = program_problem(name, texts, [w.fixed for w in rest], scope.appended)
            if reason is not None:
                facts.not_read(reason)
            if replaces_shell and name is None:
                facts.at_least("unknown")  # exec of a program we do not know
            self.out.append(facts.info())
            for start, end in call.runs:
                if end > start:
                    ran = rest[start:end]
                    runs = replace(inherited, appended=True)  # find -exec: {} and +
                    self.simple(" ".join(w.text for w in ran), [], ran, [], runs)
            for index in call.scripts:
                self.inline(rest[index], _Facts(rest[index].text), inherited, alone=False)
            return
        self.out.append(facts.info())

    def shell(self, name: str, rest: list[_Word], facts: _Facts, scope: _Scope) -> None:
        facts.at_least(facts.klass, name)
        mode, index = _shell_script([w.text for w in rest])
        if reason := _shell_problem(name, rest, index if mode == "inline" else None):
            facts.not_read(reason)
        if mode == "inline":
            if index is None:
                facts.error = "-c given without a script"
                facts.at_least("unknown", "parse_error")
            else:
                self.inline(rest[index], facts, scope)
                return
        elif mode == "file" and index is not None:
            script = rest[index]
            if script.dynamic:
                facts.at_least("unknown", *_fed_kinds(script))  # bash <(curl ...)
            elif _names_stdin(script.text):  # /proc/self/fd/0, dev/stdin from /
                facts.at_least("unknown", *scope.stdin)
            else:
                facts.read.append(script.text)
                facts.at_least("write", "unknown_program")  # a script we cannot see
        else:
            facts.at_least("unknown", *scope.stdin)
            if "dev_tcp" in facts.kinds:
                facts.at_least("unknown", "remote_shell")  # bash -i >& /dev/tcp/host/port
        self.out.append(facts.info())

    def inline(self, script: _Word, facts: _Facts, scope: _Scope, alone: bool = True) -> None:
        """Classify a script given as text (bash -c, su -c, trap, watch)."""
        if script.dynamic or script.hidden:
            facts.at_least("unknown", "obfuscated")  # the script is only known at run time
            self.out.append(facts.info())
            return
        start = len(self.out)
        if script.text.strip():
            nested = replace(
                scope,
                appended=False,  # what xargs adds are the script's $1..., not its words
                depth=scope.depth + 1,
                floor=facts.floor(),
                kinds=tuple(facts.kinds),
                functions=tuple(facts.functions),
            )
            self.script(script.text, nested)
        if alone and len(self.out) == start:
            self.out.append(facts.info())  # an empty script: only the wrapper ran


# Shells that read no start-up file for `-c` once BASH_ENV and ENV are gone (the gateway
# removes them); zsh reads ~/.zshenv, others their own rc files.
_READ_SHELLS = frozenset({"sh", "bash", "dash"})


def _shell_problem(name: str, rest: Sequence[_Word], script: int | None) -> str | None:
    """Why a shell running a -c script is not part of a read, or None."""
    if name not in _READ_SHELLS:
        return f"{name} reads start-up files the gateway does not see"
    if script is None:
        return f"{name} runs a script from a file or stdin"
    for word in rest[:script]:
        letters = word.text.lstrip("-")
        if not word.fixed or not word.text.startswith("-") or set(letters) - set("ceux"):
            return f"{name} option {word.text} is not on the read allow-list"
    return None


def _plain_dollar(source: str, start: int, dollar: int) -> bool:
    """Whether the "$" at ``source[dollar]`` (in a word starting at ``start``) is a plain
    character rather than the start of $'...' or $"..." quoting."""
    if not start <= dollar < len(source) or source[dollar] != "$":
        return False
    quote = ""
    i = start
    while i < dollar:
        ch = source[i]
        if ch == "\\" and quote != "'":
            i += 2
            continue
        if quote and ch == quote:
            quote = ""
        elif not quote and ch in "'\"":
            quote = ch
        i += 1
    return quote == '"' or source[dollar + 1 : dollar + 2] not in ("'", '"')


def _fed_kinds(word: _Word) -> tuple[str, ...]:
    """Kinds for a shell whose script is a process substitution's output."""
    return ("pipe_to_shell",) if word.runs & _DOWNLOADERS else ("pipe_to_shell", "obfuscated")


def _su_target(name: str, words: Sequence[_Word]) -> tuple[str, int | _Word] | None:
    """What su/runuser runs: ("script", word), ("command", index), or None: a login shell."""
    texts = [w.text for w in words]
    if name == "runuser" and any(t in ("-u", "--user") or t.startswith("--user=") for t in texts):
        _, start = _scan_prefix(texts, _SU_VALUES | {"-u", "--user"})
        return None if start is None else ("command", start)
    for i, text in enumerate(texts):
        if text == "--":
            break
        if text.startswith("--command="):
            word = words[i]
            return "script", _Word(text.partition("=")[2], word.dynamic, word.hidden)
        if text == "--command" or (
            text.startswith("-") and not text.startswith("--") and "c" in text
        ):
            letters = text[1:] if text != "--command" else "c"
            rest = letters[letters.index("c") + 1 :]
            before_c = letters[: letters.index("c")]
            if not any("-" + ch in _SU_VALUES for ch in before_c):  # not "-s c"-like values
                if rest:
                    return "script", _Word(rest, words[i].dynamic, words[i].hidden)
                return ("script", words[i + 1]) if i + 1 < len(words) else None
    return None
