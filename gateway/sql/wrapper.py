"""BI-style wrappers: an outer query over the output of a DP aggregate query.

BI tools wrap queries (``SELECT * FROM (<saved question>) t WHERE ... LIMIT ...``).
When the inner query is a DP aggregate query over protected data, the outer one
only ever reads its noisy output, so it is post-processing: the inner query is
planned as usual and the outer one runs over the noisy result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from sqlglot import exp

from gateway.policy import Policy
from gateway.sql.plan import Plan
from gateway.sql.postprocess_plan import output_name
from gateway.sql.validate import AGGREGATES


def inner_query(tree: exp.Select, policy: Policy) -> tuple[exp.Select, str] | None:
    """The wrapped DP query (with the CTEs it may see) and its alias, or None."""
    from_ = tree.args.get("from_")
    if from_ is None or tree.args.get("joins"):
        return None
    source = from_.this
    with_ = tree.args.get("with_")
    ctes = list(with_.expressions) if with_ is not None else []
    if isinstance(source, exp.Subquery) and isinstance(source.this, exp.Select):
        inner = source.this.copy()
        visible = ctes
    elif isinstance(source, exp.Table) and not source.args.get("db"):
        names = [c.alias_or_name.lower() for c in ctes]
        if source.name.lower() not in names:
            return None
        i = names.index(source.name.lower())
        inner = ctes[i].this.copy()
        visible = ctes[:i]
    else:
        return None
    if not aggregates_protected(inner, visible, policy):
        return None
    if visible:
        if inner.args.get("with_"):
            return None
        inner.set("with_", exp.With(expressions=[c.copy() for c in visible]))
    return inner, source.alias_or_name


def wrap(tree: exp.Select, alias: str, plan: Plan) -> Plan:
    """``plan`` with the outer query as its post-processing."""
    outer = tree.copy()
    outer.set("with_", None)
    outer.set("expressions", [
        e if isinstance(e, exp.Star | exp.Alias) or (isinstance(e, exp.Column) and isinstance(
            e.this, exp.Star)) else exp.alias_(e, output_name(e), quoted=True)
        for e in outer.expressions])
    outer.set("from_", exp.From(this=plan.post.subquery(alias)))
    return replace(plan, post=outer, outer_names=_plain_outputs(outer), wrapped=True,
                   inner_post=plan.post if not plan.wrapped else plan.inner_post)


def plan_wrapped(tree: exp.Select, policy: Policy, analyze: Callable[[exp.Select], Plan]
                 ) -> Plan | None:
    found = inner_query(tree, policy)
    if found is None:
        return None
    inner, alias = found
    plan = analyze(inner)
    if plan.public_query is not None:
        return None
    return wrap(tree, alias, plan)


def aggregates_protected(select: exp.Select, ctes: list[exp.CTE], policy: Policy) -> bool:
    """Is ``select`` (or what it wraps) an aggregate query reading protected data?"""
    aggregating = bool(select.args.get("group") or select.args.get("distinct") or any(
        True for e in select.expressions for _ in e.find_all(*AGGREGATES)))
    if not aggregating:
        from_ = select.args.get("from_")
        if from_ is None or select.args.get("joins"):
            return False
        src = from_.this
        if isinstance(src, exp.Subquery) and isinstance(src.this, exp.Select):
            return aggregates_protected(src.this, ctes, policy)
        if isinstance(src, exp.Table):
            names = [c.alias_or_name.lower() for c in ctes]
            if src.name.lower() in names and not src.args.get("db"):
                i = names.index(src.name.lower())
                return aggregates_protected(ctes[i].this, ctes[:i], policy)
        return False
    cte_names = {c.alias_or_name.lower(): c.this for c in ctes}
    for table in select.find_all(exp.Table):
        spec = policy.table(table.name)
        if spec is not None and not spec.public and table.name.lower() not in cte_names:
            return True
        body = cte_names.get(table.name.lower())
        if body is not None and any(
            (t := policy.table(x.name)) is not None and not t.public
            for x in body.find_all(exp.Table)
        ):
            return True
    return False


def _plain_outputs(outer: exp.Select) -> tuple[tuple[str, str] | None, ...] | None:
    """For each outer output column that is an inner column passed through unchanged,
    (output name, inner name); None when the outer list has a star."""
    out: list[tuple[str, str] | None] = []
    for item in outer.expressions:
        if isinstance(item, exp.Star) or (isinstance(item, exp.Column)
                                          and isinstance(item.this, exp.Star)):
            return None
        inner = item.this if isinstance(item, exp.Alias) else item
        out.append((item.alias_or_name, inner.name) if isinstance(inner, exp.Column) else None)
    return tuple(out)
