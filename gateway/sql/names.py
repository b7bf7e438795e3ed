"""Table names as analysts write them: the one resolver every pass uses.

Analysts arrive from PostgreSQL, BI tools, SmartNoise SQL, BigQuery and T-SQL and
write a policy table ``visits`` as ``visits``, ``"visits"``, ``public.visits``,
``main.visits``, ``web.visits`` (the dataset name) or ``web.public.visits``.  The
rules, decided here once (validation, the pgwire router and its catalog all ask
this module):

* **Unquoted names ignore case**: ``VISITS`` and ``Visits`` name the policy table
  ``visits`` (and ``pums`` names a table declared ``PUMS``).  The policy refuses two
  tables (or two columns of one table) that differ only in case, so this is never
  ambiguous.  PostgreSQL folds unquoted names to lower case and then compares
  exactly; for the usual lower-case policy names that is the same thing.
* **Quoted names are exact**, as in PostgreSQL: ``"Visits"`` names only a table (or a
  column, :meth:`gateway.sql.scope.Scope.resolve`) that the policy spells
  ``Visits``; ``"visits"`` names ``visits``.
* **Qualifiers**: ``public.`` and ``main.`` (the schemas PostgreSQL and DuckDB
  look in by default) and the dataset name are accepted for every table, and a
  table's own ``schema:`` (from the policy) for that table.  A three-part name
  ``catalog.schema.table`` is accepted when the catalog is the dataset name (the
  database a PostgreSQL client connects to) and the schema is accepted for the
  table.  Anything else is refused, naming what is accepted.  Qualifiers follow
  the same case rules as names.

Names a query defines itself (table aliases, CTE names, SELECT aliases) are
matched ignoring case, quoted or not.  Every accepted qualifier is removed before
the rewrite renders SQL for the engine, whose tables are the policy's names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlglot import exp

if TYPE_CHECKING:
    from gateway.policy import Policy

# Schemas accepted for every table, as PostgreSQL (public) and DuckDB (main) spell them.
STANDARD_SCHEMAS = ("public", "main")


def same_name(written: str, quoted: bool, declared: str) -> bool:
    """Does a name as written (quoted or not) name ``declared``?"""
    return written == declared if quoted else written.lower() == declared.lower()


def _ident(node: exp.Expr | None) -> tuple[str, bool] | None:
    if isinstance(node, exp.Identifier):
        return node.name, bool(node.quoted)
    return None


@dataclass(frozen=True)
class TableNames:
    """The policy's table names and the qualifiers each may be written with."""

    declared: Mapping[str, str]  # lower-case name -> the name as the policy declares it
    dataset: str | None = None
    # lower-case table name -> the schema the policy declares for it (`schema: NAME`)
    schemas: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_policy(cls, policy: Policy) -> TableNames:
        return cls({n.lower(): n for n in policy.tables}, policy.dataset,
                   {n.lower(): t.schema_ for n, t in policy.tables.items()
                    if t.schema_ is not None})

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any]) -> TableNames:
        """From the public schema document (``Gateway.schema()``, GET /v1/schema)."""
        tables = schema.get("tables", {})
        return cls({n.lower(): n for n in tables}, schema.get("dataset"),
                   {n.lower(): t["schema"] for n, t in tables.items() if t.get("schema")})

    @classmethod
    def coerce(cls, tables: TableNames | Iterable[str]) -> TableNames:
        """A resolver, from a resolver or from bare table names (no dataset, no schemas)."""
        if isinstance(tables, TableNames):
            return tables
        return cls({n.lower(): n for n in tables})

    def __contains__(self, lowered: object) -> bool:
        return isinstance(lowered, str) and lowered.lower() in self.declared

    def __iter__(self) -> Any:
        return iter(self.declared)

    def lookup(self, name: str, quoted: bool = False) -> str | None:
        """The declared name ``name`` (as written) names, or None."""
        declared = self.declared.get(name.lower())
        if declared is None or not same_name(name, quoted, declared):
            return None
        return declared

    def qualifiers(self, table: str) -> list[str]:
        """The schema names accepted before ``table`` (its declared name or any case)."""
        out = list(STANDARD_SCHEMAS)
        if self.dataset:
            out.append(self.dataset)
        own = self.schemas.get(table.lower())
        if own is not None:
            out.append(own)
        return list(dict.fromkeys(out))

    def schema_ok(self, schema: str, quoted: bool, table: str) -> bool:
        return any(same_name(schema, quoted, q) for q in self.qualifiers(table))

    def catalog_ok(self, catalog: str, quoted: bool) -> bool:
        return bool(self.dataset) and same_name(catalog, quoted, self.dataset or "")

    def qualified_ok(self, node: exp.Table | exp.Column, table: str) -> bool:
        """Are the schema (and catalog) of ``node`` accepted for the policy table
        ``table``?  (For a column, its ``db``/``catalog`` qualify its table part.)"""
        db, catalog = _ident(node.args.get("db")), _ident(node.args.get("catalog"))
        if node.args.get("catalog") is not None and (catalog is None or db is None):
            return False
        if node.args.get("db") is not None and db is None:
            return False
        if db is not None and not self.schema_ok(db[0], db[1], table):
            return False
        return catalog is None or self.catalog_ok(catalog[0], catalog[1])

    def accepted(self, table: str) -> str:
        """How ``table`` may be written, for messages: ``visits, public.visits, ...``."""
        declared = self.declared.get(table.lower(), table)
        forms = [declared] + [f"{q}.{declared}" for q in self.qualifiers(declared)]
        if self.dataset:
            forms.append(f"{self.dataset}.public.{declared}")
        return ", ".join(forms)

    def qualifier_words(self) -> str:
        """The qualifiers accepted for every table, for messages."""
        words = [f"{q}." for q in STANDARD_SCHEMAS]
        if self.dataset:
            words.append(f"{self.dataset}. (the dataset)")
        if self.schemas:
            words.append("a table's own `schema:` from the policy")
        return ", ".join(words)
