"""Whether code the server runs on its own (a trigger function, a rule's actions, a
trigger's WHEN condition) may run DDL, read from its text. Pure.

PostgreSQL runs a table's triggers and rules with every write to it, and no statement
the gate judges names them. If one of them may make a function (``EXECUTE 'create
function ...'``, a call of a user routine that does), each write to that database may
change the catalogue the gate judges by, and counts as DDL for the commit barrier and
the window after DDL (`Gate.changes_catalogue`, attack14n). Most triggers only write
an audit row with built-ins; for those nothing changes.

The reading is lexical and errs towards "may": the text is scanned with PostgreSQL's
own scanner (pglast), and any of these is a reason: a keyword that starts DDL or runs a
string as SQL (``EXECUTE``, ``CREATE``, ``ALTER``, ``DROP``, ``CALL``, ``DO`` ...), a
call of anything but a known read or write built-in (a user function may do anything;
an admin built-in such as ``query_to_xml`` or ``dblink_exec`` runs a string), a cast to
a type or an operator the catalogue says runs user code. Code in a language other than
PL/pgSQL and SQL cannot be read, so it may.
"""

from __future__ import annotations

from collections.abc import Collection

from pglast.parser import ParseError, scan

from wardgate.policy.functions import function_class

# Keywords after which the code may change the catalogue, or runs SQL from a string.
_DDL_KEYWORDS = frozenset(
    {
        "EXECUTE", "CREATE", "ALTER", "DROP", "COMMENT", "GRANT", "REVOKE", "CALL", "DO",
        "IMPORT_P", "SECURITY", "REINDEX", "CLUSTER", "LOAD", "COPY", "PREPARE", "REASSIGN",
    }
)  # fmt: skip
# PL/pgSQL's statements that the SQL scanner sees as names, and which a parenthesis
# may follow (`IF (x) THEN`, `RETURN (y)`): not calls.
_PLPGSQL_WORDS = frozenset(
    {
        "if", "elsif", "elseif", "while", "return", "raise", "exit", "continue", "loop",
        "foreach", "perform", "assert", "get", "open", "fetch", "move", "close", "query",
        "next",
    }
)  # fmt: skip
_NAME_KINDS = frozenset({"UNRESERVED_KEYWORD", "TYPE_FUNC_NAME_KEYWORD"})  # and IDENT


def _is_name(word: tuple[str, str, str]) -> bool:
    return word[0] == "IDENT" or word[1] in _NAME_KINDS


def ddl_reason(
    text: str,
    *,
    user_types: Collection[str] = (),
    user_operators: Collection[str] = (),
    user_routines: Collection[str] = (),
    part: str = "all",
) -> str | None:
    """Why SQL or PL/pgSQL ``text`` may run DDL, or None when it cannot (as far as its
    words show). ``user_types``: type names (bare and qualified, lower-cased) whose
    casts run user code; ``user_operators``: operator names that do; ``user_routines``:
    names (lower-cased) of routines outside the system schemas, which an unqualified
    call may reach before a built-in of that name (search_path). ``part``: "all";
    "rule", a rule's definition (``pg_get_ruledef``), whose code follows its ``DO``;
    "when", a trigger's (``pg_get_triggerdef``), whose code is its ``WHEN``
    condition (the function it executes is read on its own)."""
    try:
        tokens = scan(text)
    except ParseError:
        return "its text could not be read"
    words = [
        (tok.name, tok.kind, text[tok.start : tok.end + 1]) for tok in tokens
    ]  # name: the token type (IDENT, a keyword's name, ASCII_40 for "(")
    names = [w[0] for w in words]
    if part == "rule":
        # Its WHERE condition runs with every write as its actions do.
        do = names.index("DO") if "DO" in names else len(names)
        where = names.index("WHERE") if "WHERE" in names[:do] else do
        words = words[where + 1 : do] + words[do + 1 :]
    elif part == "when":
        if "WHEN" not in names:
            return None
        end = len(names) - 1 - names[::-1].index("EXECUTE") if "EXECUTE" in names else len(names)
        words = words[names.index("WHEN") + 1 : end]
    for i, (name, kind, word) in enumerate(words):
        if kind != "NO_KEYWORD" and name in _DDL_KEYWORDS:
            return f"it runs {name}"
        if (name == "Op" or name.startswith("ASCII_")) and word in user_operators:
            return f"it uses operator {word}, which runs user code"
        if not _is_name(words[i]) or (i and words[i - 1][0] == "ASCII_46"):
            continue
        called = _qualified(words, i)
        schema, _, bare = called.rpartition(".")
        if called in user_types or (not schema and bare in user_types):
            # A cast (`::t`, `CAST(x AS t)`, `t 'x'`) or a variable of it: converting
            # a value to it runs its input function or its domain's CHECK.
            return f"it names type {called}, which runs user code"
        end = i + 2 * called.count(".") + 1
        if end >= len(words) or words[end][0] != "ASCII_40":
            continue
        if not schema and bare in user_routines:
            return f"it calls {called}()"  # a user routine, whatever the word
        before = words[i - 1][0] if i else ""
        if before in ("INTO", "AS", "TYPECAST") or called in _PLPGSQL_WORDS:
            continue  # INSERT INTO t (columns), AS t (columns), ::numeric(10, 2)
        if function_class(schema or None, bare) not in ("read", "write"):
            return f"it calls {called}()"
    return None


def _qualified(words: list[tuple[str, str, str]], i: int) -> str:
    """The dotted name starting at word ``i``, lower-cased (quotes dropped)."""
    parts = [_name(words[i][2])]
    # After a dot any keyword is a name (`public.values(...)`).
    while i + 2 < len(words) and words[i + 1][0] == "ASCII_46" and _after_dot(words[i + 2]):
        i += 2
        parts.append(_name(words[i][2]))
    return ".".join(parts)


def _after_dot(word: tuple[str, str, str]) -> bool:
    return word[0] == "IDENT" or word[1] != "NO_KEYWORD"


def _name(word: str) -> str:
    if word.startswith('"') and word.endswith('"') and len(word) >= 2:
        return word[1:-1].replace('""', '"')
    return word.lower()


def trigger_function_reason(
    language: str,
    schema: str,
    source: str,
    *,
    user_types: Collection[str] = (),
    user_operators: Collection[str] = (),
    user_routines: Collection[str] = (),
) -> str | None:
    """Why a trigger function may run DDL (None: it cannot). Built-in trigger functions
    (pg_catalog: ``suppress_redundant_updates_trigger``, ``tsvector_update_trigger``)
    run none."""
    if schema == "pg_catalog":
        return None
    if language not in ("plpgsql", "sql"):
        return f"it is written in {language}, which the gateway cannot read"
    if source.startswith("CREATE"):  # a SQL-standard body (BEGIN ATOMIC): its definition
        at = source.find("BEGIN ATOMIC")
        if at < 0:
            return "its body could not be read"
        source = source[at + len("BEGIN ATOMIC") :]
    return ddl_reason(
        source, user_types=user_types, user_operators=user_operators, user_routines=user_routines
    )


# Write statements, and the words after which their table is named.
_WRITES = {
    "INSERT": ("INTO",), "MERGE": ("INTO",), "DELETE_P": ("FROM",), "UPDATE": (), "COPY": (),
    "TRUNCATE": ("TABLE",),
}  # fmt: skip


def written_tables(text: str) -> set[str]:
    """The tables (bare names, lower-cased) code writes to, as its words show; "*"
    when it writes somewhere its words do not name (a write keyword without a table
    after it, ``TRUNCATE ... CASCADE``, text that cannot be scanned). EXECUTE is
    `ddl_reason`'s business."""
    try:
        tokens = scan(text)
    except ParseError:
        return {"*"}
    words = [(tok.name, tok.kind, text[tok.start : tok.end + 1]) for tok in tokens]
    found: set[str] = set()
    for i, (name, _kind, _word) in enumerate(words):
        if name not in _WRITES:
            continue
        before = words[i - 1][0] if i else ""
        j = i + 1
        for expected in _WRITES[name]:
            if j < len(words) and words[j][0] == expected:
                j += 1
        if j < len(words) and words[j][0] == "ONLY":
            j += 1
        follows = words[j][0] if j < len(words) else ""
        if _is_name(words[j]) if j < len(words) else False:
            if not (follows == "SET" and before in ("DO", "THEN")):  # DO UPDATE SET
                found.add(_qualified(words, j).rpartition(".")[2].lower())
                if name == "TRUNCATE":  # a list, and CASCADE reaches every referencing table
                    found.update(_truncated(words, j))
        elif before not in ("FOR", "ON", "KEY", "THEN", "DO") and follows != "SET":
            # Not FOR UPDATE, ON DELETE, MERGE's THEN DELETE, ON CONFLICT DO UPDATE SET:
            # a write its words do not name the table of.
            found.add("*")
    return found


def _truncated(words: list[tuple[str, str, str]], j: int) -> set[str]:
    """The rest of a TRUNCATE's list from word ``j`` on, and "*" for CASCADE."""
    found: set[str] = set()
    while j < len(words) and words[j][0] not in ("ASCII_59",):
        if words[j][0] == "CASCADE":
            found.add("*")
        elif _is_name(words[j]) and (j == 0 or words[j - 1][0] != "ASCII_46"):
            found.add(_qualified(words, j).rpartition(".")[2].lower())
        j += 1
    return found
