"""Pass 1: text -> one sqlglot SELECT tree (or, for :mod:`gateway.query.compound`, a
set operation of SELECTs), or a rejection.

sqlglot parses recursively and overflows Python's stack on a few dozen nested
parentheses, so nesting is measured *before* parsing, on sqlglot's own tokens
(a text scanner of our own would disagree with the tokenizer about where
strings end: ``$$'$$`` or ``E'\\''`` hide parentheses from it).  Long chains
without parentheses (``- - - x``, ``x::INT::INT...``, ``a + b + ...``) build
deep trees too, which the later passes walk recursively, so the depth of the
parsed tree is bounded as well.  Statement kinds are decided on the parsed
tree, never by keyword matching.
"""

from __future__ import annotations

import re

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from gateway.errors import QueryRejected, Span

MAX_NESTING = 24
# Deepest parsed tree accepted: every operator (AND/OR included), cast or function
# adds a level.  The later passes recurse per level (sqlglot spends about five
# frames per level to print SQL, and the rewrite can double a level: a cast becomes
# TRY_CAST(ROUND(x))), Python stops at 1000 frames and DuckDB's parser at 1000 levels.
MAX_TREE_DEPTH = 64
_PY_CLASS = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")
_OPEN = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE, TokenType.CASE})
_CLOSE = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE, TokenType.END})
# What may come right before T-SQL's TOP: SELECT, SELECT DISTINCT, SELECT ALL.
_BEFORE_TOP = frozenset({TokenType.SELECT, TokenType.DISTINCT, TokenType.ALL})


def mark_top(tokens: list[Token]) -> int:
    """T-SQL's ``SELECT TOP n ...`` (also ``TOP (n)``) as ``... LIMIT n``.

    The DuckDB and PostgreSQL tokenizers read TOP as a plain word, so their parsers
    refuse it; marked as the TOP keyword here, sqlglot's parser reads it as that
    SELECT's LIMIT (post-processing on the noisy result, like LIMIT).  Only a TOP
    right after SELECT [DISTINCT | ALL] and followed by a number or a parenthesis is
    marked, so a column named ``top`` keeps its meaning.  Returns how many were marked.
    """
    marked = 0
    for i in range(1, len(tokens) - 1):
        tok = tokens[i]
        if tok.token_type == TokenType.VAR and tok.text.upper() == "TOP" and \
                tokens[i - 1].token_type in _BEFORE_TOP and \
                tokens[i + 1].token_type in (TokenType.NUMBER, TokenType.L_PAREN):
            tok.token_type = TokenType.TOP
            marked += 1
    return marked


def token_depth(tokens: list[Token]) -> int:
    """Deepest nesting of (), [], {} and CASE ... END in a token list."""
    depth = best = 0
    for tok in tokens:
        if tok.token_type in _OPEN:
            depth += 1
            best = max(best, depth)
        elif tok.token_type in _CLOSE:
            depth -= 1
    return best


def tree_depth(tree: exp.Expr, flat: tuple[type[exp.Expr], ...] = ()) -> int:
    """Depth of a parsed tree, measured without recursion; nodes of the ``flat`` types
    add no level (a chain of UNION ALL is as deep as its deepest branch)."""
    best = 0
    stack: list[tuple[exp.Expr, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        best = max(best, depth)
        step = 0 if flat and isinstance(node, flat) else 1
        stack.extend((child, depth + step) for child in node.iter_expressions())
    return best


def _too_deep(depth: int, what: str, limit: int) -> QueryRejected:
    return QueryRejected(
        f"the query nests {what} {depth} deep; the limit is {limit}",
        hint="flatten the expression: fewer nested parentheses, CASE expressions, casts or "
        "chained operators (an IN list instead of many ORs, a CTE for a repeated part)",
        rule="too_deep",
    )


def parse(sql: str, *, max_length: int = 20_000, dialect: str = "duckdb") -> exp.Select:
    """Parse exactly one SELECT statement (WITH ... SELECT included)."""
    tree = parse_statement(sql, max_length=max_length, dialect=dialect)
    if not isinstance(tree, exp.Select):
        kind = type(tree).__name__.upper()
        raise QueryRejected(
            f"{kind} of queries is not supported here",
            hint="send each SELECT on its own (a query, not training, may combine "
            "aggregate SELECTs with UNION ALL)", rule="statement_kind",
        )
    return tree


def parse_statement(sql: str, *, max_length: int = 20_000, dialect: str = "duckdb"
                    ) -> exp.Select | exp.SetOperation:
    """Parse exactly one statement: a SELECT, or a set operation (UNION [ALL],
    INTERSECT, EXCEPT) of SELECTs, which :mod:`gateway.query.compound` answers."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryRejected("the query is empty", hint="send one SELECT statement", rule="parse")
    if len(sql) > max_length:
        raise QueryRejected(
            f"the query is {len(sql)} characters long; the limit is {max_length}",
            hint="shorten it", rule="too_long",
        )
    if "\x00" in sql:
        raise QueryRejected("the query contains a NUL character",
                            hint="remove the NUL (\\0) character from the text", rule="parse")
    try:
        parser_dialect = Dialect.get_or_raise(dialect)
    except ValueError:
        raise QueryRejected(f"unknown SQL dialect {dialect!r}", hint="use duckdb or postgres",
                            rule="parse") from None
    tops = 0
    try:
        tokens = parser_dialect.tokenize(sql)
        depth = token_depth(tokens)
        if depth > MAX_NESTING:
            raise _too_deep(depth, "parentheses or CASE expressions", MAX_NESTING)
        tops = mark_top(tokens)
        statements = parser_dialect.parser().parse(tokens, sql)
    except (ParseError, TokenError) as e:
        rejection = _parse_rejection(sql, e)
        if tops and rejection.span is not None and \
                rejection.span.text.upper() in ("LIMIT", "FETCH"):
            raise QueryRejected("a SELECT has both TOP and LIMIT",
                                hint="keep one of them: TOP n or LIMIT n", rule="parse",
                                span=rejection.span) from None
        raise rejection from None
    except RecursionError:
        raise QueryRejected("the query is nested too deeply to analyse",
                            hint="flatten the expression: fewer nested parentheses, CASE "
                            "expressions, casts or chained operators",
                            rule="too_deep") from None
    statements = [s for s in statements if s is not None and not isinstance(s, exp.Semicolon)]
    if not statements:
        raise QueryRejected("the query is empty", hint="send one SELECT statement",
                            rule="parse")
    if len(statements) != 1:
        raise QueryRejected(
            f"send exactly one statement (found {len(statements)})",
            hint="split the text and send each SELECT on its own", rule="multiple_statements",
        )
    tree = statements[0]
    assert tree is not None
    depth = tree_depth(tree, (exp.SetOperation,))
    if depth > MAX_TREE_DEPTH:
        raise _too_deep(depth, "expressions", MAX_TREE_DEPTH)
    if isinstance(tree, exp.SetOperation):
        return tree
    if not isinstance(tree, exp.Select):
        kind = type(tree).__name__.upper()
        if isinstance(tree, exp.Command):
            kind = tree.name.upper() or kind  # EXPLAIN, CALL, LOAD, RESET, ...
        if isinstance(tree, exp.Column | exp.Identifier | exp.Literal | exp.Paren | exp.Binary |
                      exp.Func):
            what = "not a statement"
        else:
            what = f"{'an' if kind[:1] in 'AEIOU' else 'a'} {kind} statement"
        raise QueryRejected(
            f"only SELECT queries are allowed; this is {what}",
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
        # "missing for <class 'sqlglot.expressions.query.Where'>" -> "missing for WHERE"
        desc = _PY_CLASS.sub(lambda m: m.group(1).upper(), desc)
    else:
        desc = "syntax error"
    return QueryRejected(f"the SQL does not parse: {desc}", hint="fix the syntax", rule="parse",
                         span=span)


def _offset(sql: str, line: int, col: int) -> int:
    lines = sql.split("\n")
    return sum(len(x) + 1 for x in lines[: max(0, line - 1)]) + col
