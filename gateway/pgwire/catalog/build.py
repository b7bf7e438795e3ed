"""Build the metadata database: the policy's public schema, and not one row of data.

Input is :meth:`gateway.Gateway.schema` (what any analyst may know).  Output is a
DuckDB file holding the ``pgc`` (pg_catalog) and ``pgi`` (information_schema)
schemas and, in ``main``, an *empty* table per policy table with the declared
column types, so a misrouted query can never return a row or a count.  The
file is reopened read-only with external access disabled (see
:class:`gateway.pgwire.catalog.Catalog`), so no query can change or escape it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import duckdb
import pandas as pd

from gateway.pgwire.catalog import infoschema
from gateway.pgwire.catalog.functions import Lookups, macros
from gateway.pgwire.catalog.pgtypes import PgType, builtin_types
from gateway.pgwire.catalog.tables import DUCK, PG_TYPE_OIDS, TABLES, VIEWS
from gateway.pgwire.types import duck_oid

PG_CATALOG, PG_TOAST, PUBLIC, INFO_SCHEMA = 11, 99, 2200, 13000
OWNER_OID, OWNER = 10, "dp_gateway"
DATABASE_OID = 16380
FIRST_USER_OID = 16384
PG_CLASS_OID = 1259

# Policy vocabulary -> (pg type oid, DuckDB type of the empty table column).
POLICY_TYPES = {"int": (20, "BIGINT"), "float": (701, "DOUBLE"), "text": (25, "VARCHAR"),
                "bool": (16, "BOOLEAN"), "date": (1082, "DATE"),
                "timestamp": (1114, "TIMESTAMP")}

# PostgreSQL's own OIDs for catalogs that clients name via 'pg_x'::regclass.
_KNOWN_OIDS = {
    "pg_type": 1247, "pg_attribute": 1249, "pg_proc": 1255, "pg_class": 1259,
    "pg_database": 1262, "pg_authid": 1260, "pg_auth_members": 1261, "pg_tablespace": 1213,
    "pg_namespace": 2615, "pg_constraint": 2606, "pg_description": 2609, "pg_index": 2610,
    "pg_attrdef": 2604, "pg_am": 2601, "pg_inherits": 2611, "pg_depend": 2608,
    "pg_language": 2612, "pg_operator": 2617, "pg_rewrite": 2618, "pg_trigger": 2620,
    "pg_cast": 2605, "pg_opclass": 2616, "pg_collation": 3456, "pg_enum": 3501,
    "pg_range": 3541, "pg_extension": 3079, "pg_policy": 3256, "pg_statistic_ext": 3381,
    "pg_sequence": 2224, "pg_shdescription": 2396, "pg_partitioned_table": 3350,
    "pg_foreign_table": 3118, "pg_event_trigger": 3466, "pg_publication": 6104,
    "pg_publication_rel": 6106, "pg_publication_namespace": 6237,
}


def parse_columns(spec: str) -> list[tuple[str, str, str | None]]:
    """``"a:oid b:bool=true"`` -> [(name, pg type, default SQL or None)]."""
    out = []
    for item in spec.split():
        name, _, rest = item.partition(":")
        typ, _, default = rest.partition("=")
        if not default:
            if typ == "bool":
                default = "false"
            elif DUCK[typ] in ("UINTEGER", "SMALLINT", "INTEGER", "BIGINT", "FLOAT", "DOUBLE"):
                default = "0"
        out.append((name, typ, default or None))
    return out


def insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows (same keys each) by name; absent columns take their defaults."""
    if not rows:
        return
    frame = pd.DataFrame(rows)  # a scan of a frame is ~10x faster than VALUES text
    con.register("__pgw_rows", frame)
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM __pgw_rows")
    finally:
        con.unregister("__pgw_rows")


def _quote(name: str) -> str:
    return name if name.isidentifier() and name == name.lower() else '"' + \
        name.replace('"', '""') + '"'


def _describe_column(col: Mapping[str, Any]) -> str | None:
    role = col.get("role")
    if role == "privacy_unit":
        return f"privacy unit: may only be counted, as COUNT(DISTINCT {col['name']})"
    if role == "identifier":
        return "identifier: may not be selected, grouped or aggregated"
    parts = []
    if col.get("bounds") == "auto":
        lo, hi = col["limits"]
        parts.append(f"bounds tuned per query inside [{lo}, {hi}] (values outside are clamped)")
    elif col.get("bounds") is not None:
        lo, hi = col["bounds"]
        parts.append(f"bounds [{lo}, {hi}] (values outside are clamped)")
    values = col.get("public_values")
    if values:
        shown = ", ".join(str(v) for v in values[:20])
        parts.append(f"public values: {shown}{', ...' if len(values) > 20 else ''}")
    return "; ".join(parts) or None


def _describe_table(name: str, t: Mapping[str, Any]) -> str:
    if t.get("public"):
        return "public table: read, joined and grouped freely"
    unit = t.get("privacy_unit") or "each row"
    return (f"private table (privacy unit: {unit}; at most {t.get('max_rows_per_unit')} rows "
            f"and {t.get('max_groups_per_unit')} groups per unit): answered with "
            "differential privacy, from aggregates only")


class _Builder:
    def __init__(self, con: duckdb.DuckDBPyConnection, schema: Mapping[str, Any],
                 database: str) -> None:
        self.con, self.schema, self.database = con, schema, database
        self.lk = Lookups()
        self.types = builtin_types()
        self.classes: list[dict[str, Any]] = []
        self.attributes: list[dict[str, Any]] = []
        self.descriptions: list[dict[str, Any]] = []
        self.rowtypes: list[PgType] = []

    def relation(self, oid: int, name: str, nsp: int, kind: str, rowtype: int,
                 columns: Iterable[tuple[str, int]]) -> None:
        cols = list(columns)
        # Everyone may SELECT, nobody may change anything ("=r/owner" is PUBLIC SELECT).
        self.classes.append({"oid": oid, "relname": name, "relnamespace": nsp,
                             "reltype": rowtype, "relkind": kind, "relnatts": len(cols),
                             "relam": 2 if kind == "r" else 0,
                             "relacl": [f"{OWNER}=r/{OWNER}", f"=r/{OWNER}"]})
        by_oid = {t.oid: t for t in self.types}
        for i, (cname, toid) in enumerate(cols, start=1):
            t = by_oid.get(toid)
            self.attributes.append({
                "attrelid": oid, "attname": cname, "atttypid": toid, "attnum": i,
                "attlen": t.length if t else -1, "attbyval": t.byval if t else False,
                "attalign": t.align if t else "i", "attstorage": t.storage if t else "x",
                "attcollation": t.collation if t else 0})
        self.rowtypes.append(PgType(rowtype, name, -1, False, "c", "C", False, 0, 0,
                                    "record_in", "d", "x", 0, ",", relid=oid))
        nspname = {PG_CATALOG: "pg_catalog", PUBLIC: "public"}.get(nsp, "information_schema")
        visible = nsp in (PG_CATALOG, PUBLIC)
        self.lk.class_names[oid] = _quote(name) if visible else f"{nspname}.{_quote(name)}"
        if visible:
            self.lk.class_oids.setdefault(name, oid)
            self.lk.visible.add(oid)
        self.lk.class_oids[f"{nspname}.{name}"] = oid

    def policy_tables(self) -> None:
        oid = FIRST_USER_OID
        for name, table in self.schema.get("tables", {}).items():
            cols = []
            ddl = []
            for col in table["columns"]:
                toid, duck = POLICY_TYPES.get(col.get("type", "text"), (25, "VARCHAR"))
                cols.append((col["name"], toid))
                ddl.append(f'"{col["name"]}" {duck}')
                desc = _describe_column(col)
                if desc:
                    n = len(cols)
                    self.descriptions.append({"objoid": oid, "classoid": PG_CLASS_OID,
                                              "objsubid": n, "description": desc})
                    self.lk.col_desc[f"{oid}.{n}"] = desc
            self.con.execute(f'CREATE TABLE main."{name}" ({", ".join(ddl)})')
            self.relation(oid, name, PUBLIC, "r", oid + 1, cols)
            desc = _describe_table(name, table)
            self.descriptions.append({"objoid": oid, "classoid": PG_CLASS_OID, "objsubid": 0,
                                      "description": desc})
            self.lk.obj_desc[oid] = desc
            oid += 2

    def catalog_tables(self) -> None:
        self.con.execute("CREATE SCHEMA pgc")
        self.con.execute("CREATE SCHEMA pgi")
        next_oid = 12000
        for i, (name, spec) in enumerate(sorted(TABLES.items())):
            cols = parse_columns(spec)
            ddl = ", ".join(f"{c} {DUCK[t]}" + (f" DEFAULT {d}" if d else "")
                            for c, t, d in cols)
            self.con.execute(f"CREATE TABLE pgc.{name} ({ddl})")
            oid = _KNOWN_OIDS.get(name)
            if oid is None:
                oid, next_oid = next_oid, next_oid + 1
            self.relation(oid, name, PG_CATALOG, "r", 14000 + i,
                          [(c, PG_TYPE_OIDS[t]) for c, t, _ in cols])

    def lookups(self) -> None:
        lk = self.lk
        for t in self.types + self.rowtypes:
            lk.type_names[t.oid] = t.format_name
            lk.type_oids.setdefault(t.name, t.oid)
            lk.type_oids.setdefault(t.format_name, t.oid)
        for alias, target in (("int", "int4"), ("integer", "int4"), ("smallint", "int2"),
                              ("bigint", "int8"), ("real", "float4"), ("float", "float8"),
                              ("double precision", "float8"), ("decimal", "numeric"),
                              ("boolean", "bool"), ("character varying", "varchar"),
                              ("character", "bpchar"), ("timestamp", "timestamp")):
            lk.type_oids[alias] = lk.type_oids[target]
        procs = sorted({t.proc(k) for t in self.types + self.rowtypes
                        for k in ("in", "out", "recv", "send")})
        for i, p in enumerate(procs):
            lk.proc_names[9000 + i] = p
            lk.proc_oids[p] = 9000 + i
        lk.nsp_names = {PG_CATALOG: "pg_catalog", PG_TOAST: "pg_toast", PUBLIC: "public",
                        INFO_SCHEMA: "information_schema"}
        lk.nsp_oids = {v: k for k, v in lk.nsp_names.items()}
        lk.role_names, lk.role_oids = {OWNER_OID: OWNER}, {OWNER: OWNER_OID}
        lk.reserved = [r[0] for r in self.con.execute(
            "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category = 'reserved'"
        ).fetchall()]

    def functions(self) -> None:
        for stmt in macros(self.lk):
            self.con.execute(stmt.replace("CREATE MACRO", "CREATE OR REPLACE MACRO", 1))

    def views(self) -> None:
        for schema, defs, nsp, base in (("pgc", VIEWS, PG_CATALOG, 12500),
                                        ("pgi", infoschema.views(self.database), INFO_SCHEMA,
                                         13100)):
            for i, (name, sql) in enumerate(sorted(defs.items())):
                self.con.execute(f"CREATE VIEW {schema}.{name} AS {sql}")
                cols = self.con.execute(
                    "SELECT column_name, data_type FROM duckdb_columns() "
                    "WHERE schema_name = ? AND table_name = ? ORDER BY column_index",
                    [schema, name]).fetchall()
                self.relation(base + i, name, nsp, "v", base + 400 + i,
                              [(c, duck_oid(str(t))) for c, t in cols])

    def rows(self) -> None:
        lk = self.lk
        insert(self.con, "pgc.pg_namespace", [
            {"oid": o, "nspname": n} for o, n in sorted(lk.nsp_names.items())])
        insert(self.con, "pgc.pg_class", self.classes)
        insert(self.con, "pgc.pg_attribute", self.attributes)
        insert(self.con, "pgc.pg_type", [{
            "oid": t.oid, "typname": t.name, "typnamespace": self._nsp_of_type(t),
            "typlen": t.length, "typbyval": t.byval, "typtype": t.kind,
            "typcategory": t.category, "typispreferred": t.preferred, "typdelim": t.delim,
            "typrelid": t.relid, "typelem": t.elem, "typarray": t.array,
            "typinput": lk.proc_oids[t.proc("in")], "typoutput": lk.proc_oids[t.proc("out")],
            "typreceive": lk.proc_oids[t.proc("recv")], "typsend": lk.proc_oids[t.proc("send")],
            "typalign": t.align, "typstorage": t.storage, "typcollation": t.collation,
        } for t in self.types + self.rowtypes])
        insert(self.con, "pgc.pg_proc", [
            {"oid": o, "proname": n, "pronargs": 1, "prorettype": 2275 if n.endswith("out")
             else 0} for o, n in sorted(lk.proc_names.items())])
        insert(self.con, "pgc.pg_description", self.descriptions)
        insert(self.con, "pgc.pg_database", [{"oid": DATABASE_OID, "datname": self.database}])
        insert(self.con, "pgc.pg_roles", [{"oid": OWNER_OID, "rolname": OWNER,
                                          "rolsuper": False}])
        insert(self.con, "pgc.pg_am", [{"oid": 2, "amname": "heap", "amtype": "t"},
                                       {"oid": 403, "amname": "btree", "amtype": "i"}])
        insert(self.con, "pgc.pg_collation", [
            {"oid": 100, "collname": "default", "collprovider": "d"},
            {"oid": 950, "collname": "C", "collprovider": "c"},
            {"oid": 951, "collname": "POSIX", "collprovider": "c"}])
        insert(self.con, "pgc.pg_tablespace", [{"oid": 1663, "spcname": "pg_default"},
                                               {"oid": 1664, "spcname": "pg_global"}])
        insert(self.con, "pgc.pg_extension", [{"oid": 13500, "extname": "plpgsql",
                                              "extversion": "1.0"}])
        insert(self.con, "pgc.pg_language", [
            {"oid": 12, "lanname": "internal", "lanispl": False, "lanpltrusted": False},
            {"oid": 13, "lanname": "c", "lanispl": False, "lanpltrusted": False},
            {"oid": 14, "lanname": "sql", "lanispl": False, "lanpltrusted": True},
            {"oid": 13540, "lanname": "plpgsql", "lanispl": True, "lanpltrusted": True}])

    def _nsp_of_type(self, t: PgType) -> int:
        if not t.relid:
            return PG_CATALOG
        cls = next(c for c in self.classes if c["oid"] == t.relid)
        return int(cls["relnamespace"])


def build(path: str, schema: Mapping[str, Any], database: str) -> Lookups:
    """Create the metadata database at ``path``; returns its name/OID lookups."""
    con = duckdb.connect(path)
    try:
        con.execute("BEGIN")  # one commit: a file database syncs on each one
        b = _Builder(con, schema, database)
        b.catalog_tables()
        b.policy_tables()
        # information_schema.columns calls format_type(), so the macros exist before
        # the views; they are rebuilt once the views are in pg_class too.
        b.lookups()
        b.functions()
        b.views()
        b.lookups()
        b.functions()
        b.rows()
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
        return b.lk
    finally:
        con.close()
