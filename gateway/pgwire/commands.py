"""Session commands answered by the proxy itself, never by the data engine.

SET/SHOW/RESET, transaction control, cursors (DECLARE/FETCH/MOVE/CLOSE, which
Tableau uses for every query), DISCARD/DEALLOCATE, EXPLAIN and COPY ... TO
STDOUT.  A cursor's query goes through the same routing as any other query, so
a data query in ``DECLARE ... FOR`` is noised and charged once, when the cursor
is declared; FETCH then pages through the released answer for free.  ROLLBACK
undoes settings but never budget: a released answer cannot be taken back.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.pgwire import sqltext
from gateway.pgwire.errors import (
    ACTIVE_TRANSACTION,
    FEATURE_NOT_SUPPORTED,
    INVALID_CURSOR_NAME,
    INVALID_SQL_STATEMENT_NAME,
    NO_ACTIVE_TRANSACTION,
    PgError,
)
from gateway.pgwire.result import Result
from gateway.pgwire.settings import DESCRIPTIONS, display_name
from gateway.pgwire.types import FLOAT8, TEXT, Field

if TYPE_CHECKING:
    from gateway.pgwire.session import Session


@dataclass
class Cursor:
    name: str
    fields: list[Field]
    rows: list[tuple[Any, ...]]
    hold: bool
    binary: bool
    in_tx: bool
    pos: int = 0  # rows[pos] is the next one


def allowed_in_failed(kind: str, sql: str) -> bool:
    return kind in ("ROLLBACK", "ABORT", "COMMIT", "END")


# -- settings ---------------------------------------------------------------------------

async def do_set(s: Session, sql: str) -> Result:
    res = Result("SET")
    for cmd in sqltext.parse_set(sql):
        if cmd.local and s.tx == "I":
            res.notices.append("SET LOCAL can only be used in transaction blocks")
            continue
        res.reported += s.settings.set(cmd.name, cmd.value, local=cmd.local)
    return res


async def do_reset(s: Session, sql: str) -> Result:
    name = sqltext.parse_reset(sql)
    reported = s.settings.reset_all() if name == "all" else s.settings.set(name, None)
    return Result("RESET", reported=reported)


async def do_show(s: Session, sql: str) -> Result:
    name = sqltext.parse_show(sql)
    if name == "all":
        rows = [(n, v, DESCRIPTIONS.get(n, "")) for n, v in s.settings.all()]
        return Result("SHOW", [Field("name", TEXT), Field("setting", TEXT),
                               Field("description", TEXT)], rows)
    if name == "dp.budget":
        return await budget(s)
    return Result("SHOW", [Field(display_name(name), TEXT)], [(s.settings.show(name),)])


async def budget(s: Session) -> Result:
    b = await s.run(s.gateway.budget_of, s.analyst)
    cols = ("epsilon_remaining", "delta_remaining", "epsilon_spent", "delta_spent",
            "epsilon_total", "delta_total")
    return Result("SHOW", [Field(c, FLOAT8) for c in cols],
                  [tuple(float(b[c]) for c in cols)])


# -- transactions -----------------------------------------------------------------------

def _close_cursors(s: Session, commit: bool) -> None:
    for name, cur in list(s.cursors.items()):
        if not cur.hold or (not commit and cur.in_tx):
            del s.cursors[name]
        else:
            cur.in_tx = False


async def do_begin(s: Session, sql: str) -> Result:
    tag = "START TRANSACTION" if sql.lstrip()[:5].upper() == "START" else "BEGIN"
    res = Result(tag)
    if s.tx != "I":
        res.notices.append("there is already a transaction in progress")
        return res
    s.tx, s.tx_epsilon = "T", 0.0
    s.settings.begin()
    m = re.search(r"ISOLATION\s+LEVEL\s+(READ\s+\w+|REPEATABLE\s+READ|SERIALIZABLE)", sql, re.I)
    if m:
        s.settings.set("transaction_isolation", " ".join(m.group(1).split()), local=True)
    return res


async def do_commit(s: Session, sql: str) -> Result:
    if s.tx == "I":
        return Result("COMMIT", notices=["there is no transaction in progress"])
    failed = s.tx == "E"
    res = Result("ROLLBACK" if failed else "COMMIT")
    res.reported = s.settings.end(commit=not failed)
    _close_cursors(s, commit=not failed)
    s.tx = "I"
    return res


async def do_rollback(s: Session, sql: str) -> Result:
    m = re.match(r"\s*(?:ROLLBACK|ABORT)(?:\s+(?:WORK|TRANSACTION))?\s+TO\s+(?:SAVEPOINT\s+)?"
                 r"(\S+)\s*$", sql, re.I | re.S)
    if m:
        if s.tx == "I":
            raise PgError(NO_ACTIVE_TRANSACTION,
                          "ROLLBACK TO SAVEPOINT can only be used in transaction blocks")
        reported = s.settings.rollback_to(sqltext.unquote_ident(m.group(1)))
        s.tx = "T"
        return Result("ROLLBACK", reported=reported)
    if s.tx == "I":
        return Result("ROLLBACK", notices=["there is no transaction in progress"])
    res = Result("ROLLBACK", reported=s.settings.end(commit=False))
    if s.tx_epsilon > 0:
        res.notices.append(f"privacy budget is not refunded by ROLLBACK: the epsilon="
                           f"{s.tx_epsilon:.6g} spent in this transaction paid for answers "
                           "that were already released")
    _close_cursors(s, commit=False)
    s.tx = "I"
    return res


def _in_block(s: Session, what: str) -> None:
    if s.tx == "I":
        raise PgError(NO_ACTIVE_TRANSACTION, f"{what} can only be used in transaction blocks")


async def do_savepoint(s: Session, sql: str) -> Result:
    _in_block(s, "SAVEPOINT")
    s.settings.savepoint(sqltext.parse_name_after(sql, 1) or "")
    return Result("SAVEPOINT")


async def do_release(s: Session, sql: str) -> Result:
    _in_block(s, "RELEASE SAVEPOINT")
    words = 2 if re.match(r"\s*RELEASE\s+SAVEPOINT\b", sql, re.I) else 1
    s.settings.release(sqltext.parse_name_after(sql, words) or "")
    return Result("RELEASE")


# -- cursors ----------------------------------------------------------------------------

async def do_declare(s: Session, sql: str) -> Result:
    decl = sqltext.parse_declare(sql)
    if not decl.hold and s.tx == "I":
        raise PgError(NO_ACTIVE_TRANSACTION,
                      "DECLARE CURSOR can only be used in transaction blocks")
    if decl.name in s.cursors:
        raise PgError("42P03", f'cursor "{decl.name}" already exists')
    if sqltext.classify(decl.query) != "query":
        raise PgError("42601", "a cursor can only be declared for a query")
    res = await s.query(decl.query)
    s.cursors[decl.name] = Cursor(decl.name, res.fields or [], res.rows, decl.hold,
                                  decl.binary, s.tx != "I")
    return Result("DECLARE CURSOR", notices=res.notices)


def _cursor(s: Session, name: str) -> Cursor:
    cur = s.cursors.get(name)
    if cur is None:
        raise PgError(INVALID_CURSOR_NAME, f'cursor "{name}" does not exist')
    return cur


def fetch_fields(s: Session, sql: str) -> list[Field] | None:
    f = sqltext.parse_fetch(sql)
    return None if sql.lstrip()[:4].upper() == "MOVE" else _cursor(s, f.name).fields


def _move(cur: Cursor, how: str, count: int | None) -> list[tuple[Any, ...]]:
    n = len(cur.rows)
    if how == "forward":
        end = n if count is None else min(n, cur.pos + count)
        out, cur.pos = cur.rows[cur.pos:end], end
        return out
    if how == "backward":
        start = 0 if count is None else max(0, cur.pos - 1 - count)
        out = list(reversed(cur.rows[start:max(0, cur.pos - 1)]))
        cur.pos = start + 1 if out else 0
        return out
    target = count or 0
    if how == "relative":
        target = cur.pos + target
    elif target < 0:
        target = n + 1 + target
    if 1 <= target <= n:
        cur.pos = target
        return [cur.rows[target - 1]]
    cur.pos = 0 if target < 1 else n
    return []


async def do_fetch(s: Session, sql: str) -> Result:
    f = sqltext.parse_fetch(sql)
    cur = _cursor(s, f.name)
    rows = _move(cur, f.how, f.count)
    if sql.lstrip()[:4].upper() == "MOVE":
        return Result(f"MOVE {len(rows)}")
    return Result(f"FETCH {len(rows)}", cur.fields, rows)


async def do_close(s: Session, sql: str) -> Result:
    name = sqltext.parse_name_after(sql, 1)
    if name is None:
        s.cursors.clear()
        return Result("CLOSE CURSOR ALL")
    _cursor(s, name)
    del s.cursors[name]
    return Result("CLOSE CURSOR")


# -- session reset ----------------------------------------------------------------------

async def do_discard(s: Session, sql: str) -> Result:
    what = (sqltext.parse_name_after(sql, 1) or "ALL").upper()
    if what in ("PLANS", "SEQUENCES", "TEMP", "TEMPORARY"):
        return Result(f"DISCARD {what}")
    if s.tx != "I":
        raise PgError(ACTIVE_TRANSACTION, "DISCARD ALL cannot run inside a transaction block")
    s.cursors.clear()
    s.statements.clear()  # portals end at the next Sync, as transactions do
    return Result("DISCARD ALL", reported=s.settings.reset_all())


async def do_deallocate(s: Session, sql: str) -> Result:
    words = 2 if re.match(r"\s*DEALLOCATE\s+PREPARE\b", sql, re.I) else 1
    name = sqltext.parse_name_after(sql, words)
    if name is None:
        s.statements.clear()
        return Result("DEALLOCATE ALL")
    key = name if name in s.statements else sql.split()[-1].strip('"')
    if key not in s.statements:
        raise PgError(INVALID_SQL_STATEMENT_NAME, f'prepared statement "{name}" does not exist')
    del s.statements[key]
    return Result("DEALLOCATE")


async def do_noop(s: Session, sql: str) -> Result:
    return Result(sqltext.first_words(sql, 1)[0])


async def do_unsupported(s: Session, sql: str) -> Result:
    word = sqltext.first_words(sql, 1)[0]
    raise PgError(FEATURE_NOT_SUPPORTED, f"{word} is not supported by the gateway's "
                  "PostgreSQL proxy", hint="use the extended query protocol for prepared "
                  "statements (every driver does)")


# -- EXPLAIN and COPY -------------------------------------------------------------------

async def do_explain(s: Session, sql: str) -> Result:
    m = re.match(r"\s*EXPLAIN\s+(?:\([^)]*\)\s*)?(?:(?:ANALYZE|VERBOSE)\s+)*(.*)$", sql,
                 re.I | re.S)
    inner = m.group(1) if m else ""
    route, _ = s.route(inner)
    if route == "catalog":
        lines = ["Catalog query: answered from the policy's public schema; no data is read "
                 "and nothing is charged"]
    else:
        st = s.settings
        e = await s.run(s.gateway.explain, inner, dialect="postgres", **st.spend())
        lines = [f"Differentially private query: epsilon={e.epsilon_cost:.6g} "
                 f"delta={e.delta_cost:.6g} (charged when run; a repeat is free)"]
        if e.target_ci95 is not None:  # SET dp.ci95: the ε chosen, and why
            lines += ["  " + n for n in e.notes]
        for a in e.accuracy:
            ci = "" if a.ci95 is None else f", 95% interval +/- {a.ci95:.6g}"
            lines.append(f"  {a.column}: {a.mechanism} noise, scale {a.noise_scale:.6g}{ci}")
        if e.partition_selection:
            lines.append("  groups without public values are released by DP partition "
                         "selection")
        lines.append("Rewritten query:")
        lines += ["  " + line for line in e.rewritten_sql.splitlines()]
    return Result("EXPLAIN", [Field("QUERY PLAN", TEXT)], [(line,) for line in lines])


_COPY = re.compile(r"\s*COPY\s+(\(.*\)|[\w.\"]+(?:\s*\([^)]*\))?)\s+TO\s+STDOUT\b(.*)$",
                   re.I | re.S)


async def do_copy(s: Session, sql: str) -> Result:
    m = _COPY.match(sql)
    if not m:
        raise PgError(FEATURE_NOT_SUPPORTED, "only COPY (query) TO STDOUT is supported",
                      hint="the gateway is read-only; COPY FROM and files are not available")
    source, opts = m.group(1).strip(), m.group(2).upper()
    query = source[1:-1] if source.startswith("(") else f"SELECT * FROM {source}"
    fmt = "binary" if "BINARY" in opts else "csv" if "CSV" in opts else "text"
    res = await s.query(query)
    res.copy, res.copy_header = fmt, "HEADER" in opts and fmt == "csv"
    res.tag = f"COPY {len(res.rows)}"
    return res


Handler = Callable[["Session", str], Awaitable[Result]]

HANDLERS: dict[str, Handler] = {
    "SET": do_set, "RESET": do_reset, "SHOW": do_show, "BEGIN": do_begin,
    "START": do_begin, "COMMIT": do_commit, "END": do_commit, "ROLLBACK": do_rollback,
    "ABORT": do_rollback, "SAVEPOINT": do_savepoint, "RELEASE": do_release,
    "DECLARE": do_declare, "FETCH": do_fetch, "MOVE": do_fetch, "CLOSE": do_close,
    "DISCARD": do_discard, "DEALLOCATE": do_deallocate, "LISTEN": do_noop,
    "UNLISTEN": do_noop, "NOTIFY": do_noop, "PREPARE": do_unsupported,
    "EXECUTE": do_unsupported, "EXPLAIN": do_explain, "COPY": do_copy,
}
