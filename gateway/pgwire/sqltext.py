"""SQL text handling that must not need a full parse: split, classify, bind.

* A simple Query may hold several statements; sqlglot's PostgreSQL tokenizer
  finds the semicolons that are outside strings, comments and dollar quotes.
* Each statement is classified by its leading keywords, only to decide whether
  it is a session command we answer locally (SET, BEGIN, FETCH, ...) or a query;
  whether a query is safe is decided later, on a parse tree, by the core.
* Bind parameters are rendered as SQL literals and put where the ``$n`` tokens
  were, so the core sees ordinary SQL (and caches repeats of the same values).
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import TokenError
from sqlglot.tokens import Token, TokenType

from gateway.pgwire.errors import SYNTAX_ERROR, PgError

_TOKENIZER = Postgres().tokenizer_class()


def tokens(sql: str) -> list[Token] | None:
    try:
        return list(_TOKENIZER.tokenize(sql))
    except (TokenError, ValueError, IndexError):
        return None


def split_statements(sql: str) -> list[str]:
    """The statements of a simple Query, without separators or empty ones."""
    toks = tokens(sql)
    if toks is None:
        return [sql.strip()] if sql.strip() else []
    out, start = [], None
    last = None
    for tok in toks:
        if tok.token_type == TokenType.SEMICOLON:
            if start is not None and last is not None:
                out.append(sql[start:last.end + 1])
            start = last = None
            continue
        if start is None:
            start = tok.start
        last = tok
    if start is not None and last is not None:
        out.append(sql[start:last.end + 1].rstrip())
    return out


_QUERY_WORDS = frozenset({"SELECT", "WITH", "VALUES", "TABLE", "(", "FROM"})
_LOCAL_WORDS = frozenset({
    "SET", "RESET", "SHOW", "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT",
    "SAVEPOINT", "RELEASE", "DISCARD", "DEALLOCATE", "DECLARE", "FETCH", "MOVE", "CLOSE",
    "LISTEN", "UNLISTEN", "NOTIFY", "PREPARE", "EXECUTE", "EXPLAIN", "COPY",
})


def first_words(sql: str, n: int = 3) -> list[str]:
    return [w.upper() for w in re.findall(r"[A-Za-z_]+|\(", sql[:200])[:n]]


def classify(sql: str) -> str:
    """'query', 'empty', a session command keyword ('SET', 'FETCH', ...) or 'other'."""
    words = first_words(sql)
    if not words:
        return "empty"
    head = words[0]
    if head in _QUERY_WORDS:
        return "query"
    if head in _LOCAL_WORDS:
        if head == "PREPARE" and len(words) > 1 and words[1] == "TRANSACTION":
            return "other"
        return head
    return "other"


# -- parameters -------------------------------------------------------------------------

def _param_positions(sql: str) -> list[tuple[int, int, int]]:
    """(start, end exclusive, number) of each ``$n`` outside strings and comments."""
    toks = tokens(sql)
    if toks is None:
        return [(m.start(), m.end(), int(m.group(1)))
                for m in re.finditer(r"\$(\d+)", sql)]
    out = []
    for a, b in itertools.pairwise(toks):
        if (a.token_type == TokenType.PARAMETER and b.token_type == TokenType.NUMBER
                and b.start == a.end + 1 and b.text.isdigit()):
            out.append((a.start, b.end + 1, int(b.text)))
    return out


def count_params(sql: str) -> int:
    return max((n for _, _, n in _param_positions(sql)), default=0)


def literal(v: Any) -> str:
    """A Python value as a PostgreSQL literal (strings follow standard_conforming_strings)."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int):
        return str(v) if v >= 0 else f"({v})"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            word = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
            return f"CAST('{word}' AS DOUBLE PRECISION)"
        return repr(v) if v >= 0 else f"({v!r})"
    if isinstance(v, decimal.Decimal):
        s = format(v, "f")
        return s if not s.startswith("-") else f"({s})"
    if isinstance(v, dt.datetime):
        return f"CAST('{v.isoformat(sep=' ')}' AS TIMESTAMP)"
    if isinstance(v, dt.date):
        return f"CAST('{v.isoformat()}' AS DATE)"
    if isinstance(v, dt.time):
        return f"CAST('{v.isoformat()}' AS TIME)"
    if isinstance(v, bytes | bytearray):
        return f"'\\x{bytes(v).hex()}'"
    if isinstance(v, list | tuple):
        return "ARRAY[" + ", ".join(literal(x) for x in v) + "]"
    return "'" + str(v).replace("'", "''") + "'"


def bind(sql: str, values: Sequence[Any]) -> str:
    """Replace each ``$n`` with the literal of ``values[n-1]``."""
    positions = _param_positions(sql)
    if not positions:
        return sql
    out = sql
    for start, end, n in sorted(positions, reverse=True):
        if not 1 <= n <= len(values):
            raise PgError("08P01", f"there is no parameter ${n}")
        out = out[:start] + literal(values[n - 1]) + out[end:]
    return out


# -- session command grammar ------------------------------------------------------------

_NAME = r'(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*)(?:\s*\.\s*(?:"(?:[^"]|"")+"|[A-Za-z_][\w$]*))*'


def unquote_ident(s: str) -> str:
    s = s.strip()
    if s.startswith('"') and s.endswith('"'):
        return s[1:-1].replace('""', '"')
    return s.lower()


def _dotted(name: str) -> str:
    parts = re.findall(r'"(?:[^"]|"")+"|[^.\s]+', name)
    return ".".join(unquote_ident(p) for p in parts)


def _values(text: str) -> list[str]:
    """Comma-separated SET values: 'quoted', "identifiers", numbers or words."""
    out, i, text = [], 0, text.strip()
    while i < len(text):
        c = text[i]
        if c in " \t\n,":
            i += 1
            continue
        if c in "'\"":
            j, buf = i + 1, []
            while j < len(text):
                if text[j] == c and j + 1 < len(text) and text[j + 1] == c:
                    buf.append(c)
                    j += 2
                    continue
                if text[j] == c:
                    break
                buf.append(text[j])
                j += 1
            word = "".join(buf)
            # "identifiers" keep their quotes when they need them (search_path's "$user")
            out.append(f'"{word}"' if c == '"' and not re.fullmatch(r"[a-z_][a-z0-9_]*", word)
                       else word)
            i = j + 1
            continue
        m = re.match(r"[^,\s]+(?:\s+[^,\s]+)*", text[i:])
        assert m is not None
        word = m.group(0)
        out.append(word)
        i += len(word)
    return out


@dataclass(frozen=True)
class SetCommand:
    name: str  # lower-case parameter name
    value: str | None  # None: DEFAULT / RESET
    local: bool = False


_SET_SPECIAL = (
    (re.compile(r"TIME\s+ZONE\s+(.+)", re.I | re.S), "timezone"),
    (re.compile(r"SCHEMA\s+(.+)", re.I | re.S), "search_path"),
    (re.compile(r"NAMES\s+(.+)", re.I | re.S), "client_encoding"),
    (re.compile(r"SESSION\s+CHARACTERISTICS\s+AS\s+TRANSACTION\s+ISOLATION\s+LEVEL\s+(.+)",
                re.I | re.S), "default_transaction_isolation"),
    (re.compile(r"TRANSACTION\s+ISOLATION\s+LEVEL\s+(.+)", re.I | re.S),
     "transaction_isolation"),
)


def parse_set(sql: str) -> list[SetCommand]:
    m = re.match(r"\s*SET\s+(?:(SESSION|LOCAL)\s+(?!CHARACTERISTICS|AUTHORIZATION))?(.*)$",
                 sql, re.I | re.S)
    if not m:
        raise PgError(SYNTAX_ERROR, "syntax error in SET")
    local = (m.group(1) or "").upper() == "LOCAL"
    rest = m.group(2).strip()
    for pattern, name in _SET_SPECIAL:
        sm = pattern.fullmatch(rest)
        if sm:
            raw = sm.group(1).strip()
            if name.endswith("isolation"):
                words = raw.replace(",", " ").split()
                two = words[0].upper() in ("READ", "REPEATABLE")
                return [SetCommand(name, " ".join(words[:2] if two else words[:1]).lower(),
                                   local)]
            vals = [v.strip('"') if name != "search_path" else v for v in _values(raw)]
            if not vals or vals[0].upper() in ("DEFAULT", "LOCAL"):
                return [SetCommand(name, None, local)]
            return [SetCommand(name, ", ".join(vals), local)]
    if re.match(r"(SESSION\s+AUTHORIZATION|ROLE)\b", rest, re.I):
        raise PgError("42501", "changing the role or session authorization is not allowed",
                      hint="connect as the analyst whose budget the queries should use")
    if re.match(r"TRANSACTION\b", rest, re.I):
        return []  # SET TRANSACTION READ ONLY / DEFERRABLE: nothing to do
    nm = re.match(rf"({_NAME})\s*(?:=|\bTO\b)\s*(.*)$", rest, re.I | re.S)
    if not nm:
        raise PgError(SYNTAX_ERROR, f"syntax error in SET: {sql.strip()[:80]}")
    name, raw = _dotted(nm.group(1)), nm.group(2).strip()
    vals = _values(raw)
    if not vals:
        raise PgError(SYNTAX_ERROR, f'SET {name} needs a value')
    if len(vals) == 1 and vals[0].upper() == "DEFAULT" and not raw.startswith("'"):
        return [SetCommand(name, None, local)]
    return [SetCommand(name, ", ".join(vals), local)]


_SHOW_SPECIAL = {"TIME ZONE": "timezone", "TRANSACTION ISOLATION LEVEL": "transaction_isolation",
                 "SESSION AUTHORIZATION": "session_authorization"}


def parse_show(sql: str) -> str:
    """The parameter name of SHOW (lower case; 'all' for SHOW ALL)."""
    m = re.match(r"\s*SHOW\s+(.*?)\s*$", sql, re.I | re.S)
    if not m or not m.group(1):
        raise PgError(SYNTAX_ERROR, "syntax error in SHOW")
    rest = " ".join(m.group(1).split())
    special = _SHOW_SPECIAL.get(rest.upper())
    return special if special else _dotted(rest)


def parse_reset(sql: str) -> str:
    m = re.match(r"\s*RESET\s+(.*?)\s*$", sql, re.I | re.S)
    if not m or not m.group(1):
        raise PgError(SYNTAX_ERROR, "syntax error in RESET")
    rest = " ".join(m.group(1).split())
    special = _SHOW_SPECIAL.get(rest.upper())
    return special if special else _dotted(rest)


@dataclass(frozen=True)
class Declare:
    name: str
    hold: bool
    binary: bool
    query: str


def parse_declare(sql: str) -> Declare:
    m = re.match(rf"\s*DECLARE\s+({_NAME})\s+((?:\w+\s+)*?)CURSOR\s+"
                 r"(?:(WITH|WITHOUT)\s+HOLD\s+)?FOR\s+(.+)$", sql, re.I | re.S)
    if not m:
        raise PgError(SYNTAX_ERROR, "syntax error in DECLARE ... CURSOR FOR query")
    opts = m.group(2).upper().split()
    return Declare(unquote_ident(m.group(1)), (m.group(3) or "").upper() == "WITH",
                   "BINARY" in opts, m.group(4).strip())


@dataclass(frozen=True)
class Fetch:
    name: str
    how: str  # 'forward', 'backward', 'absolute', 'relative'
    count: int | None  # None: ALL


def parse_fetch(sql: str) -> Fetch:
    m = re.match(r"\s*(?:FETCH|MOVE)\s+(.*?)\s*$", sql, re.I | re.S)
    if not m:
        raise PgError(SYNTAX_ERROR, "syntax error in FETCH")
    body = m.group(1)
    nm = re.search(rf"(?:^|\s)(?:(?:FROM|IN)\s+)?({_NAME})$", body, re.I)
    if not nm:
        raise PgError(SYNTAX_ERROR, "FETCH needs a cursor name")
    name = unquote_ident(nm.group(1))
    words = body[:nm.start(1)].split()
    words = [w.upper() for w in words if w.upper() not in ("FROM", "IN")]
    if not words or words == ["NEXT"]:
        return Fetch(name, "forward", 1)
    head = words[0]
    arg = words[1] if len(words) > 1 else None
    if head == "PRIOR":
        return Fetch(name, "backward", 1)
    if head == "FIRST":
        return Fetch(name, "absolute", 1)
    if head == "LAST":
        return Fetch(name, "absolute", -1)
    if head in ("ABSOLUTE", "RELATIVE") and arg is not None:
        return Fetch(name, head.lower(), int(arg))
    if head == "ALL":
        return Fetch(name, "forward", None)
    if head in ("FORWARD", "BACKWARD"):
        how = head.lower()
        if arg is None:
            return Fetch(name, how, 1)
        return Fetch(name, how, None if arg == "ALL" else int(arg))
    if re.fullmatch(r"[-+]?\d+", head):
        n = int(head)
        return Fetch(name, "forward" if n >= 0 else "backward", abs(n))
    raise PgError(SYNTAX_ERROR, f"unsupported FETCH direction {head}")


def parse_name_after(sql: str, words: int) -> str | None:
    """The object name after the first ``words`` keywords (CLOSE x, DEALLOCATE PREPARE x)."""
    parts = sql.strip().rstrip(";").split(None, words)
    if len(parts) <= words:
        return None
    rest = parts[words].strip()
    return None if rest.upper() == "ALL" else unquote_ident(rest)


_KEYWORD_ALIASES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TABLE", "FROM",
                              "WHERE", "ORDER", "GROUP", "LIMIT", "OFFSET", "USER"})
_REG_ARRAY = re.compile(r"::\s*(?:pg_catalog\s*\.\s*)?(reg[a-z]+)\s*\[\s*\]", re.I)


def repair_for_sqlglot(sql: str) -> str:
    """Rewrite the few PostgreSQL spellings sqlglot cannot parse into ones it can.

    ``... AS select,`` (a keyword as a column alias) becomes ``AS "select"``, and
    ``x::regtype[]`` becomes ``x::_regtype`` (PostgreSQL's own name for the array
    type).  Only token positions outside strings and comments are touched.
    """
    toks = tokens(sql)
    if toks is None:
        return sql
    edits: list[tuple[int, int, str]] = []
    for prev, tok, nxt in zip(toks, toks[1:], [*toks[2:], None], strict=False):
        if prev.token_type == TokenType.ALIAS and tok.text.upper() in _KEYWORD_ALIASES and (
                nxt is None or nxt.token_type in (TokenType.COMMA, TokenType.R_PAREN)
                or nxt.text.upper() == "FROM"):
            edits.append((tok.start, tok.end + 1, f'"{tok.text.lower()}"'))
    out = sql
    for start, end, text in sorted(edits, reverse=True):
        out = out[:start] + text + out[end:]
    return _REG_ARRAY.sub(lambda m: "::_" + m.group(1).lower(), out)
