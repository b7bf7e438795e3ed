"""Pass 1: text -> one sqlglot SELECT tree, or a rejection.

sqlglot parses recursively and overflows Python's stack on a few dozen nested
parentheses, so nesting is measured with a small scanner *before* parsing;
statement kinds are decided on the parsed tree, never by keyword matching.
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from gateway.errors import QueryRejected, Span

MAX_NESTING = 24
_CASE_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def nesting_depth(sql: str) -> int:
    """Deepest nesting of parentheses and CASE ... END outside strings and comments."""
    depth = best = 0
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            end = sql.find(ch, i + 1)
            while end != -1 and end + 1 < n and sql[end + 1] == ch:  # doubled quote
                end = sql.find(ch, end + 2)
            i = n if end == -1 else end + 1
            continue
        if sql.startswith("--", i):
            nl = sql.find("\n", i)
            i = n if nl == -1 else nl + 1
            continue
        if sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            i = n if close == -1 else close + 2
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch.isalpha() or ch == "_":
            m = _CASE_WORD.match(sql, i)
            assert m is not None
            word = m.group(0).upper()
            if word == "CASE":
                depth += 1
            elif word == "END":
                depth -= 1
            i = m.end()
            best = max(best, depth)
            continue
        best = max(best, depth)
        i += 1
    return best


def parse(sql: str, *, max_length: int = 20_000, dialect: str = "duckdb") -> exp.Select:
    """Parse exactly one SELECT statement (WITH ... SELECT included)."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryRejected("the query is empty", hint="send one SELECT statement", rule="parse")
    if len(sql) > max_length:
        raise QueryRejected(
            f"the query is {len(sql)} characters long; the limit is {max_length}",
            hint="shorten it", rule="too_long",
        )
    if "\x00" in sql:
        raise QueryRejected("the query contains a NUL character", rule="parse")
    depth = nesting_depth(sql)
    if depth > MAX_NESTING:
        raise QueryRejected(
            f"the query nests parentheses or CASE expressions {depth} deep; the limit is "
            f"{MAX_NESTING}",
            hint="flatten the expression", rule="too_deep",
        )
    try:
        statements = sqlglot.parse(sql, dialect=dialect)
    except (ParseError, TokenError) as e:
        raise _parse_rejection(sql, e) from None
    except RecursionError:
        raise QueryRejected("the query is nested too deeply to analyse", rule="too_deep") from None
    statements = [s for s in statements if s is not None]
    if len(statements) != 1:
        raise QueryRejected(
            f"send exactly one statement (found {len(statements)})",
            hint="split the text and send each SELECT on its own", rule="multiple_statements",
        )
    tree = statements[0]
    if not isinstance(tree, exp.Select):
        kind = type(tree).__name__.upper()
        if isinstance(tree, exp.SetOperation):
            raise QueryRejected(
                f"{kind} of queries is not supported",
                hint="run each SELECT separately (each is charged on its own)",
                rule="statement_kind",
            )
        raise QueryRejected(
            f"only SELECT queries are allowed; this is a {kind} statement",
            hint="the gateway answers aggregate SELECT queries; it cannot change data, "
            "settings or the catalog", rule="statement_kind",
        )
    return tree


def _parse_rejection(sql: str, e: Exception) -> QueryRejected:
    span = None
    errors = getattr(e, "errors", None) or []
    if errors:
        first = errors[0]
        line, col = first.get("line"), first.get("col")
        if isinstance(line, int) and isinstance(col, int):
            offset = _offset(sql, line, col)
            hl = str(first.get("highlight") or "")
            span = Span(max(0, offset - len(hl)), offset, hl)
        desc = str(first.get("description") or "syntax error")
    else:
        desc = "syntax error"
    return QueryRejected(f"the SQL does not parse: {desc}", hint="fix the syntax", rule="parse",
                         span=span)


def _offset(sql: str, line: int, col: int) -> int:
    lines = sql.split("\n")
    return sum(len(x) + 1 for x in lines[: max(0, line - 1)]) + col
