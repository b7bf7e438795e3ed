"""Whole queries for the side-channel test: FROM shapes, query kinds, the gate.

Every query is *gated on the victim*: its protected rows are restricted to unit
``VICTIM`` (in WHERE, inside a CTE or subquery, or in an inner join's ON), so on
D no row survives the gate and on D′ the victim's hostile rows reach every
expression.  Anything observable that differs between the two runs is then the
victim's doing.

Shapes: one protected table; joins to the public table on its unique key, on a
non-unique column, on non-equi conditions, LEFT, and chained; joins of the two
protected tables on the unit (ON, USING, through a subquery that renames the
unit, and through derived tables whose renamed columns make USING equate other
columns); CTEs and subqueries in FROM.  Kinds: plain aggregates, GROUP BY with
aggregates (HAVING, ORDER BY, LIMIT), SELECT DISTINCT and GROUP BY without
aggregates, aggregates only in HAVING / ORDER BY, and wrappers around a DP query;
grouping by a key whose public values include NULL, and public keys whose domains
multiply past ``limits.max_public_groups`` (partition selection with δ, refused without),
and keys without public values with aggregates that steer partition selection to each of
its strategies.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from tests.sidechannel.data import DATASET, T2_SCHEMA, VICTIM
from tests.sidechannel.grammar import FLOAT, INT, TEXT, Col, Gen, table_cols


@dataclass(frozen=True)
class Query:
    """A generated query and what the comparison needs to know about it."""

    sql: str
    shape: str  # source and query kind, for the report
    n_keys: int  # the first n_keys output columns are group keys
    keys_public: bool  # released key set and row count must match on D and D′
    mechanism: str
    delta: float = 1e-6


@dataclass(frozen=True)
class Source:
    """A FROM clause with the columns it brings into scope and where the gate goes."""

    with_: str  # "WITH ... " or ""
    from_: str
    cols: list[Col]
    gate: str | None  # the condition WHERE must add; None: gated inside already
    label: str


def _name(rng: random.Random, table: str) -> str:
    """A policy table as users write it: bare (mostly), quoted, upper case, or qualified
    by a schema the gateway accepts (public., main., the dataset, t2's own ``lake.``).
    Unaliased, it is still referred to as ``table.col``."""
    if rng.random() < 0.6:
        return table
    forms = [f'"{table}"', table.upper(), f"public.{table}", f"main.{table}",
             f"{DATASET}.{table}", f"{DATASET}.public.{table}", f'"public"."{table}"']
    if table == "t2":
        forms += [f"{T2_SCHEMA}.t2", f"{T2_SCHEMA.upper()}.T2"]
    return rng.choice(forms)


def _gate(ref: str, rng: random.Random) -> str:
    return rng.choice([f"{ref} = {VICTIM}", f"{ref} = {VICTIM}", f"{VICTIM} = {ref}",
                       f"{ref} IN ({VICTIM})", f"{ref} BETWEEN {VICTIM} AND {VICTIM}"])


def _derived(rng: random.Random, table: str, alias: str, *, keep_unit: bool, gated: bool,
             keep: list[str] | None = None) -> tuple[str, list[Col]]:
    """``SELECT ... FROM table [WHERE gate]``: renamed columns keep their metadata,
    computed ones are typed and, for public keys and bounded numbers, flagged."""
    base = table_cols(table)
    g = Gen(rng, base)
    items: list[str] = []
    cols: list[Col] = []
    if keep_unit:
        items.append("uid")
        cols.append(Col(f"{alias}.uid", INT, unit=True))
    chosen = rng.sample([c for c in base if not c.unit], rng.randint(2, 5))
    chosen += [c for c in base if c.ref.split(".")[1] in (keep or []) and c not in chosen]
    for c in chosen:
        name = c.ref.split(".")[1]
        new = f"{name}_{alias}" if rng.random() < 0.4 else name
        items.append(name if new == name else f"{name} AS {new}")
        cols.append(replace(c, ref=f"{alias}.{new}"))
    for n in range(rng.randint(0, 2)):
        r = rng.random()
        if r < 0.35:
            key = g.public_key()
            items.append(f"{key.sql} AS pk{n}")
            cols.append(Col(f"{alias}.pk{n}", key.type, public=key.public))
        elif r < 0.7:
            items.append(f"{g.num(1)} AS v{n}")
            cols.append(Col(f"{alias}.v{n}", FLOAT, bounded=True))
        else:
            t = g.any_type()
            items.append(f"{g.expr(t, 2)} AS e{n}")
            cols.append(Col(f"{alias}.e{n}", t))
    where = ""
    if gated:
        where = f" WHERE {_gate('uid', rng)}"
        if rng.random() < 0.5:
            where += f" AND {g.pred(2)}"
    return f"SELECT {', '.join(items)} FROM {_name(rng, table)}{where}", cols


def source(rng: random.Random) -> Source:
    """One of the FROM shapes the gateway accepts (or should refuse consistently)."""
    t, t2, pub = table_cols("t"), table_cols("t2"), table_cols("pub", "p")
    kind = rng.choices(
        ["t", "t2", "pub", "unit_join", "derived", "cte", "cte_pub", "sub_join", "renamed"],
        weights=[22, 6, 14, 12, 12, 12, 6, 10, 4])[0]
    g = Gen(rng, t + t2)
    if kind in ("t", "t2"):
        cols = t if kind == "t" else t2
        return Source("", _name(rng, kind), cols, _gate(f"{kind}.uid", rng), kind)
    if kind == "pub":
        on = rng.choice(["t.code = p.code", "t.code = p.code", "t.cat = p.region",
                         "t.f > p.weight", "t.k = p.rank", "LOWER(t.code) = p.code",
                         f"t.code = p.code AND {Gen(rng, t + pub).pred(1)}"])
        side = rng.choice(["JOIN", "JOIN", "LEFT JOIN"])
        label = "pub:" + ("unique" if on.startswith("t.code = p.code") else "other")
        from_ = f"{_name(rng, 't')} {side} {_name(rng, 'pub')} p ON {on}"
        if rng.random() < 0.25:  # a second public join: fan-out multiplies
            from_ += " JOIN pub p2 ON " + rng.choice(
                ["p.code = p2.code", "p.region = p2.region", "t.cat = p2.region",
                 "t.f > p2.weight"])
            label += "+pub"
        return Source("", from_, t + pub, _gate("t.uid", rng), label)
    if kind == "unit_join":
        form = rng.randrange(4)
        tt, tt2 = _name(rng, "t"), _name(rng, "t2")
        if form == 0:
            return Source("", f"{tt} JOIN {tt2} USING (uid)", t + t2[1:], _gate("t.uid", rng),
                          "t*t2:using")
        on = "t.uid = t2.uid"
        if form == 1:
            on += f" AND {g.pred(1)}"
        if form == 2:  # the gate in an inner join's ON filters both sides
            return Source("", f"{tt} JOIN {tt2} ON {on} AND {_gate('t2.uid', rng)}", t + t2,
                          None, "t*t2:on-gate")
        side = "LEFT JOIN" if form == 3 else "JOIN"
        return Source("", f"{tt} {side} {tt2} ON {on}", t + t2, _gate("t.uid", rng),
                      "t*t2:on")
    if kind in ("derived", "cte", "cte_pub"):
        table = "t" if rng.random() < 0.75 or kind == "cte_pub" else "t2"
        gated = rng.random() < 0.7
        body, cols = _derived(rng, table, "v", keep_unit=not gated or rng.random() < 0.5,
                              gated=gated, keep=["code"] if kind == "cte_pub" else [])
        gate = None if gated else _gate("v.uid", rng)
        if kind == "derived":
            if rng.random() < 0.3:  # no alias: the gateway names it; columns unqualified
                bare = [replace(c, ref=c.ref.split(".", 1)[1]) for c in cols]
                return Source("", f"({body})", bare, None if gated else _gate("uid", rng),
                              f"unaliased-subquery({table})")
            return Source("", f"({body}) v", cols, gate, f"subquery({table})")
        if kind == "cte":
            return Source(f"WITH v AS ({body}) ", "v", cols, gate, f"cte({table})")
        code = next(c.ref for c in cols if c.ref.endswith((".code", ".code_v")))
        on = f"{code} = p.code" if rng.random() < 0.8 else rng.choice([f"{code} > p.code",
                                                                        "TRUE"])
        return Source(f"WITH v AS ({body}) ", f"v JOIN pub p ON {on}", cols + pub, gate,
                      "cte*pub")
    if kind == "sub_join":
        body, cols = _derived(rng, "t2", "q", keep_unit=False, gated=False)
        body = body.replace("SELECT ", "SELECT uid AS id, ", 1)
        cols = [*cols, Col("q.id", INT, unit=True)]
        return Source("", f"t JOIN ({body}) q ON t.uid = q.id", t + cols, _gate("t.uid", rng),
                      "t*subquery(t2)")
    # Derived tables that rename columns so USING equalities need not be unit = unit.
    a_other = rng.choice(["i", "k", "n"])
    b_other = rng.choice(["j", "uid"])
    if rng.random() < 0.5:
        a = f"SELECT uid AS x, {a_other} AS uid, f, cat FROM t"
        b = f"SELECT uid, {b_other} AS x, x AS xv, tag FROM t2"
        real = "a.x"  # the column that carries t.uid: the gate goes there
    else:
        a = f"SELECT uid, {a_other} AS x, f, cat FROM t"
        b = f"SELECT uid AS x, {b_other} AS uid, x AS xv, tag FROM t2"
        real = "a.uid"
    cols = [Col("a.f", FLOAT, bounded=True), Col("a.cat", TEXT, public=True),
            Col("b.xv", FLOAT, bounded=True), Col("b.tag", TEXT, public=True)]
    return Source("", f"({a}) a JOIN ({b}) b USING (uid, x)", cols, _gate(real, rng),
                  "renamed-using")


def null_key_query(rng: random.Random) -> Query:
    """Group by t2.tag, whose public values include NULL: the NULL group is released on
    D (empty, a noisy 0) and on D′ (the victim's NULL tags) alike."""
    key = rng.choice(["tag", "tag", "COALESCE(tag, 'none')", "UPPER(tag)", "tag IS NULL",
                      "CASE WHEN tag = 'p' THEN 'x' END"])
    aggs = ", ".join(f"{Gen(rng, table_cols('t2')).aggregate()} AS a{i}"
                     for i in range(rng.randint(1, 2)))
    gate = _gate("t2.uid", rng)
    table = _name(rng, "t2")
    mechanism = "gaussian" if rng.random() < 0.25 else "laplace"
    if rng.random() < 0.2:
        sql = f"SELECT DISTINCT {key} AS k0 FROM {table} WHERE {gate}"
    else:
        sql = f"SELECT {key} AS k0, {aggs} FROM {table} WHERE {gate} GROUP BY 1"
        if rng.random() < 0.3:
            sql = f"SELECT * FROM ({sql}) w"
    return Query(sql, "t2|null_key", 1, True, mechanism)


def many_groups_query(rng: random.Random) -> Query:
    """Public keys whose domains multiply past limits.max_public_groups: with δ > 0 the
    groups are chosen by partition selection (noted, charged δ), with δ = 0 refused —
    on D and D′ alike."""
    keys = rng.choice([["t.k", "t.cat", "t.code", "t.b"], ["t.d", "t.cat"],
                       ["t.code", "t.k", "t.cat", "(t.k + 1)"], ["t.d", "t.b"]])
    items = ", ".join(f"{k} AS k{i}" for i, k in enumerate(keys))
    group = ", ".join(str(i + 1) for i in range(len(keys)))
    agg = Gen(rng, table_cols("t")).aggregate()
    delta = rng.choice([1e-6, 1e-6, 0.0])
    mechanism = "gaussian" if delta and rng.random() < 0.25 else "laplace"
    sql = (f"SELECT {items}, COUNT(*) AS a0, {agg} AS a1 FROM {_name(rng, 't')} "
           f"WHERE {_gate('t.uid', rng)} GROUP BY {group}")
    return Query(sql, "t|many_groups", len(keys), True, mechanism, delta)


# Aggregates that steer partition selection to each of its strategies (query/noise.py):
# a released count to threshold (units, rows, the row count behind AVG), none (the
# truncated geometric or Gaussian thresholding), or no aggregate at all (DISTINCT).
PARTITION_AGGS = [["COUNT(DISTINCT t.uid)"], ["COUNT(*)"], ["COUNT(t.f)", "SUM(t.f)"],
                  ["AVG(t.f)"], ["SUM(t.f)"], ["MEDIAN(t.f)"],
                  ["COUNT(*)", "COUNT(DISTINCT t.uid)"], []]


def partition_query(rng: random.Random) -> Query:
    """A key without public values, with aggregates that make calibration choose each
    partition-selection strategy in turn (threshold on a released count, truncated
    geometric, Gaussian thresholding), under both mechanisms: the choice and the charge
    come from the plan, so they must be the same on D and D′."""
    key = rng.choice(["t.s", "SUBSTRING(t.s, 1, 2)", "t.i"])
    aggs = list(rng.choice(PARTITION_AGGS))
    if aggs and rng.random() < 0.3:
        aggs[0] += f" FILTER (WHERE {Gen(rng, table_cols('t')).pred(1)})"
    mechanism = rng.choice(["laplace", "gaussian"])
    table, gate = _name(rng, "t"), _gate("t.uid", rng)
    if not aggs:
        sql = f"SELECT DISTINCT {key} AS k0 FROM {table} t WHERE {gate}"
    else:
        items = ", ".join(f"{a} AS a{i}" for i, a in enumerate(aggs))
        sql = f"SELECT {key} AS k0, {items} FROM {table} t WHERE {gate} GROUP BY 1"
    return Query(sql, f"t|partition({len(aggs)} aggs)", 1, False, mechanism)


def union_query(rng: random.Random) -> Query:
    """Several gated DP SELECTs in one statement (UNION ALL mostly; UNION, INTERSECT,
    EXCEPT), ORDER BY / LIMIT over them: planned branch by branch, charged once.  The
    branches' key types may differ (refused at planning, on D and D′ alike)."""
    n_keys, n_aggs = rng.choice([0, 0, 1]), rng.randint(1, 2)
    mechanism = "gaussian" if rng.random() < 0.25 else "laplace"
    parts, labels, public = [], [], True
    for b in range(rng.randint(2, 3)):
        if rng.random() < 0.5:  # every SELECT must be accepted for the statement to run
            table = rng.choice(["t", "t", "t2"])
            src = Source("", _name(rng, table), table_cols(table), _gate(f"{table}.uid", rng),
                         table)
        else:
            src = source(rng)
        g = Gen(rng, src.cols)
        conds = [src.gate] if src.gate else []
        if rng.random() < 0.5:
            conds.append(g.pred(2))
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        keys = [g.key() for _ in range(n_keys)]
        public = public and all(k.public for k in keys)
        items = [f"{k.sql} AS k{i}" for i, k in enumerate(keys)]
        items += [f"{g.aggregate()} AS a{i}" for i in range(n_aggs)] + [f"'b{b}' AS part"]
        group = " GROUP BY " + ", ".join(str(i + 1) for i in range(n_keys)) if keys else ""
        body = f"{src.with_}SELECT {', '.join(items)} FROM {src.from_}{where}{group}"
        parts.append(f"({body})" if src.with_ or rng.random() < 0.2 else body)
        labels.append(src.label)
    op = rng.choice(["UNION ALL", "UNION ALL", "UNION ALL", "UNION", "INTERSECT", "EXCEPT"])
    tail = rng.choice(["", "", " ORDER BY 1", " ORDER BY a0 DESC LIMIT 4", " LIMIT 2"])
    sql = f" {op} ".join(parts) + tail
    comparable = public and op == "UNION ALL" and "LIMIT" not in tail
    return Query(sql, f"{op.lower()}({', '.join(labels)})", n_keys, comparable, mechanism)


def query(rng: random.Random) -> Query:
    """One gated query: aggregates, keys, DISTINCT, HAVING/ORDER BY, wrappers, and
    several of them in one statement (UNION ALL & co)."""
    special = rng.random()
    if special < 0.05:
        return null_key_query(rng)
    if special < 0.09:
        return many_groups_query(rng)
    if special < 0.16:
        return union_query(rng)
    if special < 0.20:
        return partition_query(rng)
    src = source(rng)
    g = Gen(rng, src.cols)
    conds = [src.gate] if src.gate else []
    if rng.random() < 0.75:
        conds.append(g.pred(2))
    rng.shuffle(conds)
    where = f" WHERE {' AND '.join(conds)}" if conds else ""
    head = f"{src.with_}SELECT "
    mechanism = "gaussian" if rng.random() < 0.25 else "laplace"
    kind = rng.choices(["agg", "group", "distinct", "group_only", "hidden_aggs", "wrapped"],
                       weights=[25, 35, 12, 8, 10, 10])[0]
    n_keys = 0 if kind == "agg" else rng.choice([1, 1, 1, 2])
    keys = [g.key() for _ in range(n_keys)]
    key_items = [f"{k.sql} AS k{i}" for i, k in enumerate(keys)]
    public = all(k.public for k in keys)
    label = f"{src.label}|{kind}"
    if kind == "distinct":
        sql = f"{head}DISTINCT {', '.join(key_items)} FROM {src.from_}{where}"
        return Query(sql, label, n_keys, public, mechanism)
    group = " GROUP BY " + ", ".join(
        rng.choice([str(i + 1), f"k{i}", k.sql]) for i, k in enumerate(keys)) if keys else ""
    if kind == "group_only":
        sql = f"{head}{', '.join(key_items)} FROM {src.from_}{where}{group}"
        return Query(sql, label, n_keys, public, mechanism)
    aggs = [f"{g.aggregate()} AS a{i}" for i in range(rng.randint(1, 3))]
    if kind == "hidden_aggs":  # aggregates only in HAVING / ORDER BY
        tail = ""
        if rng.random() < 0.6:
            tail += f" HAVING {g.aggregate()} > {rng.choice(['0', '-1', '2.5'])}"
        if rng.random() < 0.7 or not tail:
            tail += f" ORDER BY {g.aggregate()} {rng.choice(['ASC', 'DESC'])}"
        sql = f"{head}{', '.join(key_items)} FROM {src.from_}{where}{group}{tail}"
        return Query(sql, label, n_keys, public and "HAVING" not in tail, mechanism)
    items = ", ".join(key_items + aggs)
    tail = ""
    if kind == "group" and rng.random() < 0.3:
        tail += f" HAVING {g.aggregate()} {rng.choice(['>', '<'])} 1"
    if kind == "group" and rng.random() < 0.4:
        tail += f" ORDER BY {rng.choice(['a0', 'a0 * 2', '-a0', g.aggregate()])} DESC"
    limited = kind == "group" and rng.random() < 0.15
    if limited:
        if rng.random() < 0.5:
            tail += " LIMIT 3"
        else:  # T-SQL
            head += "TOP 3 "
    sql = f"{head}{items} FROM {src.from_}{where}{group}{tail}"
    comparable = public and "HAVING" not in tail and not limited
    if kind == "wrapped":
        outer = rng.choice(["", " WHERE w.a0 > 0", " ORDER BY w.a0 DESC LIMIT 5",
                            " ORDER BY w.a0 DESC"])
        alias = " w" if outer or rng.random() < 0.7 else ""  # unaliased wrappers too
        top = "TOP 5 " if outer == " ORDER BY w.a0 DESC" else ""  # T-SQL's LIMIT
        if src.with_:  # the WITH clause must lead the whole statement
            sql = f"{src.with_}SELECT {top}* FROM ({sql[len(src.with_):]}){alias}{outer}"
        else:
            sql = f"SELECT {top}* FROM ({sql}){alias}{outer}"
        comparable = comparable and not outer
    return Query(sql, label, n_keys, comparable, mechanism)


def queries(seed: int, count: int) -> list[Query]:
    """``count`` distinct queries from ``seed`` (a repeat would be a free cached answer)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[Query] = []
    while len(out) < count:
        q = query(rng)
        if q.sql not in seen:
            seen.add(q.sql)
            out.append(q)
    return out
