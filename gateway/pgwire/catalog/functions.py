"""PostgreSQL's catalog functions as DuckDB macros over the emulated catalog.

Name lookups (``format_type``, ``oid::regclass``, ``obj_description``...) are
constant maps baked into the macros when the catalog is built: the catalog is
read-only afterwards, and a map lookup, unlike a correlated subquery in a
macro, cannot capture a column of the caller's query.  Size and statistics
functions return 0 or NULL, never a number measured on the data.  Functions
that depend on the session (``current_user``, ``current_setting``, ...) are not
here: :mod:`gateway.pgwire.catalog.rewrite` inlines their values per query.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# PostgreSQL function name -> macro name (called with the same arguments).
FUNCTIONS: dict[str, str] = {
    "format_type": "pgw_format_type", "pg_get_userbyid": "pgw_get_userbyid",
    "obj_description": "pgw_obj_description", "col_description": "pgw_col_description",
    "shobj_description": "pgw_null", "pg_table_is_visible": "pgw_table_is_visible",
    "pg_type_is_visible": "pgw_true", "pg_function_is_visible": "pgw_true",
    "pg_collation_is_visible": "pgw_true", "pg_opclass_is_visible": "pgw_true",
    "pg_operator_is_visible": "pgw_true", "pg_conversion_is_visible": "pgw_true",
    "has_table_privilege": "pgw_has_priv", "has_any_column_privilege": "pgw_has_priv",
    "has_column_privilege": "pgw_has_priv", "has_schema_privilege": "pgw_has_priv",
    "has_database_privilege": "pgw_has_priv", "has_function_privilege": "pgw_has_priv",
    "has_sequence_privilege": "pgw_false", "has_tablespace_privilege": "pgw_has_priv",
    "has_type_privilege": "pgw_has_priv", "pg_has_role": "pgw_has_priv",
    "has_foreign_data_wrapper_privilege": "pgw_false", "has_server_privilege": "pgw_false",
    "has_language_privilege": "pgw_has_priv",
    "pg_get_expr": "pgw_null", "pg_get_constraintdef": "pgw_null",
    "pg_get_indexdef": "pgw_null", "pg_get_viewdef": "pgw_null",
    "pg_get_partkeydef": "pgw_null", "pg_get_statisticsobjdef_columns": "pgw_null",
    "pg_get_triggerdef": "pgw_null", "pg_get_functiondef": "pgw_null",
    "pg_get_function_arguments": "pgw_null", "pg_get_function_result": "pgw_null",
    "pg_get_function_identity_arguments": "pgw_null", "pg_get_serial_sequence": "pgw_null",
    "pg_get_ruledef": "pgw_null", "pg_tablespace_location": "pgw_null",
    "pg_get_partition_constraintdef": "pgw_null",
    "pg_relation_size": "pgw_zero", "pg_total_relation_size": "pgw_zero",
    "pg_table_size": "pgw_zero", "pg_indexes_size": "pgw_zero",
    "pg_database_size": "pgw_zero",
    "pg_relation_is_publishable": "pgw_false", "pg_is_other_temp_schema": "pgw_false",
    "pg_is_in_recovery": "pgw_false", "pg_partition_ancestors": "pgw_null_oid",
    "pg_partition_root": "pgw_null_oid", "pg_my_temp_schema": "pgw_zero_oid",
    "pg_encoding_to_char": "pgw_encoding_to_char", "pg_char_to_encoding": "pgw_utf8_id",
    "pg_encoding_max_length": "pgw_four",
    "quote_ident": "pgw_quote_ident", "quote_literal": "pgw_quote_literal",
    "quote_nullable": "pgw_quote_nullable", "parse_ident": "pgw_parse_ident",
    "array_upper": "pgw_array_upper", "array_lower": "pgw_array_lower",
    "array_length": "pgw_array_length", "array_ndims": "pgw_array_ndims",
    "cardinality": "pgw_cardinality",
    "to_regtype": "pgw_to_regtype", "to_regclass": "pgw_to_regclass",
    "to_regproc": "pgw_to_regproc", "to_regprocedure": "pgw_to_regproc",
    "to_regnamespace": "pgw_to_regnamespace", "to_regrole": "pgw_to_regrole",
    "pg_sleep": "pgw_null", "pg_size_pretty": "pgw_size_pretty",
    "pg_typeof": "pgw_typeof", "pg_jit_available": "pgw_false",
    "pg_get_keywords": "pgw_get_keywords",
    "json_build_object": "json_object", "jsonb_build_object": "json_object",
    "json_agg": "json_group_array", "jsonb_agg": "json_group_array",
    "row_to_json": "to_json", "array_to_json": "to_json",
    "_pg_expandarray": "pgw_expandarray",
}
FUNCTIONS.update({f"pg_stat_get_{n}": "pgw_null_int" for n in (
    "numscans", "tuples_returned", "tuples_fetched", "tuples_inserted", "tuples_updated",
    "tuples_deleted", "live_tuples", "dead_tuples", "blocks_fetched", "blocks_hit",
    "last_vacuum_time", "last_analyze_time", "last_autovacuum_time",
    "last_autoanalyze_time")})

# Regular type casts that name PostgreSQL-only types -> a DuckDB type.
CAST_TYPES = {"name": "VARCHAR", "char": "VARCHAR", "bpchar": "VARCHAR",
              "pg_node_tree": "VARCHAR", "oid": "UINTEGER", "xid": "UINTEGER",
              "regrole": "UINTEGER", "int2vector": "SMALLINT[]", "oidvector": "UINTEGER[]",
              "aclitem": "VARCHAR", "cstring": "VARCHAR", "unknown": "VARCHAR"}


@dataclass
class Lookups:
    """Name <-> OID maps of the built catalog (used by macros and by the rewrite)."""

    class_names: dict[int, str] = field(default_factory=dict)
    class_oids: dict[str, int] = field(default_factory=dict)
    type_names: dict[int, str] = field(default_factory=dict)  # format_type spelling
    type_oids: dict[str, int] = field(default_factory=dict)
    proc_names: dict[int, str] = field(default_factory=dict)
    proc_oids: dict[str, int] = field(default_factory=dict)
    nsp_names: dict[int, str] = field(default_factory=dict)
    nsp_oids: dict[str, int] = field(default_factory=dict)
    role_names: dict[int, str] = field(default_factory=dict)
    role_oids: dict[str, int] = field(default_factory=dict)
    obj_desc: dict[int, str] = field(default_factory=dict)
    col_desc: dict[str, str] = field(default_factory=dict)  # "oid.attnum"
    reserved: list[str] = field(default_factory=list)
    visible: set[int] = field(default_factory=set)  # relations on the search path

    def resolve(self, kind: str, text: str) -> int | None:
        """The OID a ``'text'::reg<kind>`` literal denotes (None: no such object)."""
        t = text.strip()
        if t.isdigit():
            return int(t)
        key = _normalize_name(t)
        table = {"regclass": self.class_oids, "regtype": self.type_oids,
                 "regproc": self.proc_oids, "regprocedure": self.proc_oids,
                 "regnamespace": self.nsp_oids, "regrole": self.role_oids}.get(kind)
        if table is None:
            return None
        if kind in ("regproc", "regprocedure"):
            key = key.split("(", 1)[0]
        found = table.get(key)
        if found is None and "." in key:
            found = table.get(key.split(".", 1)[1])
        return found


def _normalize_name(text: str) -> str:
    """``pg_catalog."Foo"`` -> ``pg_catalog.Foo``; unquoted parts fold to lower case."""
    parts, cur, quoted, i = [], [], False, 0
    while i < len(text):
        c = text[i]
        if c == '"':
            if quoted and i + 1 < len(text) and text[i + 1] == '"':
                cur.append('"')
                i += 2
                continue
            quoted = not quoted
        elif c == "." and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c if quoted else c.lower())
        i += 1
    parts.append("".join(cur))
    if parts and parts[0] == "pg_catalog" and len(parts) > 1:
        parts = parts[1:]
    return ".".join(p.strip() for p in parts)


def sql_literal(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(sql_literal(x) for x in v) + "]"
    return "'" + str(v).replace("'", "''") + "'"


def _map(m: Mapping[Any, Any], key_type: str, value_type: str) -> str:
    if not m:
        return f"CAST(MAP {{}} AS MAP({key_type}, {value_type}))"
    body = ", ".join(f"{sql_literal(k)}: {sql_literal(v)}" for k, v in m.items())
    return f"CAST(MAP {{{body}}} AS MAP({key_type}, {value_type}))"


def macros(lk: Lookups) -> list[str]:
    """CREATE MACRO statements for every name in :data:`FUNCTIONS`."""
    names = lambda m: _map(m, "UINTEGER", "VARCHAR")  # noqa: E731
    oids = lambda m: _map(m, "VARCHAR", "UINTEGER")  # noqa: E731
    privileged = "regexp_matches(upper(CAST(p AS VARCHAR)), " \
                 "'SELECT|USAGE|CONNECT|EXECUTE|MEMBER|TEMP')"
    visible = {o: True for o in sorted(lk.visible)}
    reserved = json.dumps(lk.reserved).replace('"', "'")
    unqual = "lower(regexp_replace(trim(CAST(s AS VARCHAR)), '^pg_catalog\\.', ''))"
    defs = {
        "pgw_format_type": f"(t, m) AS CASE WHEN t IS NULL THEN NULL ELSE "
                           f"coalesce({names(lk.type_names)}[t], '???') END",
        "pgw_regclass_name": f"(o) AS coalesce({names(lk.class_names)}[o], CAST(o AS VARCHAR))",
        "pgw_regtype_name": f"(o) AS coalesce({names(lk.type_names)}[o], CAST(o AS VARCHAR))",
        "pgw_regproc_name": f"(o) AS CASE WHEN o = 0 THEN '-' ELSE "
                            f"coalesce({names(lk.proc_names)}[o], CAST(o AS VARCHAR)) END",
        "pgw_regnamespace_name": f"(o) AS coalesce({names(lk.nsp_names)}[o], "
                                 "CAST(o AS VARCHAR))",
        "pgw_regrole_name": f"(o) AS coalesce({names(lk.role_names)}[o], CAST(o AS VARCHAR))",
        "pgw_get_userbyid": f"(o) AS coalesce({names(lk.role_names)}[o], "
                            "'unknown (OID=' || CAST(o AS VARCHAR) || ')')",
        "pgw_obj_description": f"(o) AS {names(lk.obj_desc)}[o], "
                               f"(o, c) AS {names(lk.obj_desc)}[o]",
        "pgw_col_description": f"(o, n) AS {_map(lk.col_desc, 'VARCHAR', 'VARCHAR')}"
                               "[CAST(o AS VARCHAR) || '.' || CAST(n AS VARCHAR)]",
        "pgw_table_is_visible": f"(o) AS coalesce({_map(visible, 'UINTEGER', 'BOOLEAN')}[o], "
                                "false)",
        "pgw_true": "(a) AS true",
        "pgw_false": "() AS false, (a) AS false, (a, b) AS false, (a, b, c) AS false, "
                     "(a, b, c, d) AS false",
        "pgw_has_priv": f"(a, p) AS {privileged}, (u, a, p) AS {privileged}, "
                        f"(u, a, c, p) AS {privileged}",
        "pgw_null": "() AS CAST(NULL AS VARCHAR), (a) AS CAST(NULL AS VARCHAR), "
                    "(a, b) AS CAST(NULL AS VARCHAR), (a, b, c) AS CAST(NULL AS VARCHAR)",
        "pgw_zero": "(a) AS CAST(0 AS BIGINT), (a, b) AS CAST(0 AS BIGINT)",
        "pgw_null_int": "(a) AS CAST(NULL AS BIGINT)",
        "pgw_null_oid": "(a) AS CAST(NULL AS UINTEGER)",
        "pgw_zero_oid": "() AS CAST(0 AS UINTEGER)",
        "pgw_encoding_to_char": "(e) AS CASE WHEN e = 6 THEN 'UTF8' WHEN e = 0 "
                                "THEN 'SQL_ASCII' ELSE '' END",
        "pgw_utf8_id": "(e) AS CAST(6 AS INTEGER)",
        "pgw_four": "(e) AS CAST(4 AS INTEGER)",
        "pgw_quote_ident": f"(s) AS CASE WHEN regexp_full_match(CAST(s AS VARCHAR), "
                           f"'[a-z_][a-z0-9_$]*') AND NOT list_contains({reserved}, s) "
                           "THEN CAST(s AS VARCHAR) ELSE "
                           "'\"' || replace(CAST(s AS VARCHAR), '\"', '\"\"') || '\"' END",
        "pgw_quote_literal": "(s) AS '''' || replace(CAST(s AS VARCHAR), '''', '''''') || ''''",
        "pgw_quote_nullable": "(s) AS CASE WHEN s IS NULL THEN 'NULL' ELSE "
                              "'''' || replace(CAST(s AS VARCHAR), '''', '''''') || '''' END",
        "pgw_parse_ident": "(s) AS list_transform(string_split(CAST(s AS VARCHAR), '.'), "
                           "lambda x: CASE WHEN starts_with(trim(x), '\"') THEN "
                           "replace(trim(trim(x), '\"'), '\"\"', '\"') ELSE lower(trim(x)) "
                           "END)",
        "pgw_array_upper": "(a, d) AS CASE WHEN len(a) = 0 THEN NULL ELSE len(a) END",
        "pgw_array_lower": "(a, d) AS CASE WHEN len(a) = 0 THEN NULL ELSE 1 END",
        "pgw_array_length": "(a, d) AS CASE WHEN len(a) = 0 THEN NULL ELSE len(a) END",
        "pgw_array_ndims": "(a) AS CASE WHEN len(a) = 0 THEN NULL ELSE 1 END",
        "pgw_cardinality": "(a) AS len(a)",
        "pgw_to_regtype": f"(s) AS {oids(lk.type_oids)}[{unqual}]",
        "pgw_to_regclass": f"(s) AS {oids(lk.class_oids)}[{unqual}]",
        "pgw_to_regproc": f"(s) AS {oids(lk.proc_oids)}[{unqual}]",
        "pgw_to_regnamespace": f"(s) AS {oids(lk.nsp_oids)}[{unqual}]",
        "pgw_to_regrole": f"(s) AS {oids(lk.role_oids)}[{unqual}]",
        "pgw_size_pretty": "(x) AS CAST(x AS VARCHAR) || ' bytes'",
        "pgw_typeof": "(x) AS lower(typeof(x))",
        # information_schema._pg_expandarray: one (x, n) row per element (pgjdbc uses it)
        "pgw_expandarray": "(a) AS unnest(list_transform(generate_series(1, len(a)), "
                           "lambda i: {'x': a[i], 'n': i}))",
    }
    out = [f"CREATE MACRO {name}{body}" for name, body in defs.items()]
    out.append(
        "CREATE MACRO pgw_get_keywords() AS TABLE SELECT keyword_name AS word, "
        "CASE keyword_category WHEN 'reserved' THEN 'R' WHEN 'unreserved' THEN 'U' "
        "WHEN 'type_function' THEN 'T' ELSE 'C' END AS catcode, true AS barelabel, "
        "keyword_category AS catdesc, 'can be bare label' AS baredesc "
        "FROM duckdb_keywords()")
    return out
