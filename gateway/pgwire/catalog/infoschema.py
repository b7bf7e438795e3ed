"""information_schema (SQL standard views) over the emulated pg_catalog.

Grafana, Power BI and Tableau browse tables and columns through these rather
than pg_catalog.  They are views over the same rows, so both routes always
agree.  Every table is read-only (``is_insertable_into = 'NO'``); there are no
keys, constraints, routines or privileges beyond SELECT on each table.
"""

from __future__ import annotations

# information_schema.columns type details, by pg_type oid.
_PRECISION = "CASE t.oid WHEN 20 THEN 64 WHEN 23 THEN 32 WHEN 21 THEN 16 WHEN 701 THEN 53 " \
             "WHEN 700 THEN 24 END"

_EMPTY = {
    "table_constraints": (
        "constraint_catalog constraint_schema constraint_name table_catalog table_schema "
        "table_name constraint_type is_deferrable initially_deferred enforced "
        "nulls_distinct"),
    "key_column_usage": (
        "constraint_catalog constraint_schema constraint_name table_catalog table_schema "
        "table_name column_name ordinal_position:INTEGER "
        "position_in_unique_constraint:INTEGER"),
    "referential_constraints": (
        "constraint_catalog constraint_schema constraint_name unique_constraint_catalog "
        "unique_constraint_schema unique_constraint_name match_option update_rule "
        "delete_rule"),
    "constraint_column_usage": (
        "table_catalog table_schema table_name column_name constraint_catalog "
        "constraint_schema constraint_name"),
    "constraint_table_usage": (
        "table_catalog table_schema table_name constraint_catalog constraint_schema "
        "constraint_name"),
    "check_constraints": "constraint_catalog constraint_schema constraint_name check_clause",
    "routines": (
        "specific_catalog specific_schema specific_name routine_catalog routine_schema "
        "routine_name routine_type data_type type_udt_name external_language "
        "routine_definition"),
    "parameters": (
        "specific_catalog specific_schema specific_name ordinal_position:INTEGER "
        "parameter_mode parameter_name data_type udt_name"),
    "sequences": (
        "sequence_catalog sequence_schema sequence_name data_type start_value minimum_value "
        "maximum_value increment cycle_option"),
    "triggers": (
        "trigger_catalog trigger_schema trigger_name event_manipulation "
        "event_object_catalog event_object_schema event_object_table action_statement "
        "action_orientation action_timing"),
    "domains": "domain_catalog domain_schema domain_name data_type",
    "element_types": (
        "object_catalog object_schema object_name object_type collection_type_identifier "
        "data_type"),
    "user_defined_types": "user_defined_type_catalog user_defined_type_schema "
                          "user_defined_type_name user_defined_type_category",
    "attributes": "udt_catalog udt_schema udt_name attribute_name data_type",
    "applicable_roles": "grantee role_name is_grantable",
    "collations": "collation_catalog collation_schema collation_name pad_attribute",
    "foreign_tables": "foreign_table_catalog foreign_table_schema foreign_table_name "
                      "foreign_server_catalog foreign_server_name",
}


def _empty_view(spec: str) -> str:
    cols = []
    for item in spec.split():
        name, _, typ = item.partition(":")
        cols.append(f"CAST(NULL AS {typ or 'VARCHAR'}) AS {name}")
    return "SELECT " + ", ".join(cols) + " WHERE false"


def views(database: str) -> dict[str, str]:
    """information_schema view name -> DuckDB SQL over the ``pgc`` schema."""
    db = "'" + database.replace("'", "''") + "'"
    out = {
        "schemata": f"""
            SELECT {db} AS catalog_name, n.nspname AS schema_name,
                   r.rolname AS schema_owner,
                   CAST(NULL AS VARCHAR) AS default_character_set_catalog,
                   CAST(NULL AS VARCHAR) AS default_character_set_schema,
                   CAST(NULL AS VARCHAR) AS default_character_set_name,
                   CAST(NULL AS VARCHAR) AS sql_path
            FROM pgc.pg_namespace n LEFT JOIN pgc.pg_roles r ON r.oid = n.nspowner""",
        "tables": f"""
            SELECT {db} AS table_catalog, n.nspname AS table_schema,
                   c.relname AS table_name,
                   CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'f' THEN 'FOREIGN'
                        ELSE 'BASE TABLE' END AS table_type,
                   CAST(NULL AS VARCHAR) AS self_referencing_column_name,
                   CAST(NULL AS VARCHAR) AS reference_generation,
                   CAST(NULL AS VARCHAR) AS user_defined_type_catalog,
                   CAST(NULL AS VARCHAR) AS user_defined_type_schema,
                   CAST(NULL AS VARCHAR) AS user_defined_type_name,
                   'NO' AS is_insertable_into, 'NO' AS is_typed,
                   CAST(NULL AS VARCHAR) AS commit_action
            FROM pgc.pg_class c JOIN pgc.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p', 'v', 'f', 'm')""",
        "columns": f"""
            SELECT {db} AS table_catalog, n.nspname AS table_schema,
                   c.relname AS table_name, a.attname AS column_name,
                   CAST(a.attnum AS INTEGER) AS ordinal_position,
                   CAST(NULL AS VARCHAR) AS column_default,
                   CASE WHEN a.attnotnull THEN 'NO' ELSE 'YES' END AS is_nullable,
                   CASE WHEN t.typcategory = 'A' THEN 'ARRAY'
                        WHEN t.typnamespace <> 11 THEN 'USER-DEFINED'
                        ELSE pgw_format_type(t.oid, -1) END AS data_type,
                   CAST(NULL AS INTEGER) AS character_maximum_length,
                   CASE WHEN t.oid IN (25, 1043) THEN 1073741824 END
                        AS character_octet_length,
                   {_PRECISION} AS numeric_precision,
                   CASE WHEN t.oid IN (20, 21, 23, 700, 701) THEN 2 END
                        AS numeric_precision_radix,
                   CASE WHEN t.oid IN (20, 21, 23) THEN 0 END AS numeric_scale,
                   CASE WHEN t.oid = 1082 THEN 0 WHEN t.oid IN (1114, 1184, 1083) THEN 6
                        END AS datetime_precision,
                   CAST(NULL AS VARCHAR) AS interval_type,
                   CAST(NULL AS INTEGER) AS interval_precision,
                   CAST(NULL AS VARCHAR) AS character_set_catalog,
                   CAST(NULL AS VARCHAR) AS character_set_schema,
                   CAST(NULL AS VARCHAR) AS character_set_name,
                   CAST(NULL AS VARCHAR) AS collation_catalog,
                   CAST(NULL AS VARCHAR) AS collation_schema,
                   CAST(NULL AS VARCHAR) AS collation_name,
                   CAST(NULL AS VARCHAR) AS domain_catalog,
                   CAST(NULL AS VARCHAR) AS domain_schema,
                   CAST(NULL AS VARCHAR) AS domain_name,
                   {db} AS udt_catalog, 'pg_catalog' AS udt_schema, t.typname AS udt_name,
                   CAST(NULL AS VARCHAR) AS scope_catalog,
                   CAST(NULL AS VARCHAR) AS scope_schema,
                   CAST(NULL AS VARCHAR) AS scope_name,
                   CAST(NULL AS INTEGER) AS maximum_cardinality,
                   CAST(a.attnum AS VARCHAR) AS dtd_identifier, 'NO' AS is_self_referencing,
                   'NO' AS is_identity, CAST(NULL AS VARCHAR) AS identity_generation,
                   CAST(NULL AS VARCHAR) AS identity_start,
                   CAST(NULL AS VARCHAR) AS identity_increment,
                   CAST(NULL AS VARCHAR) AS identity_maximum,
                   CAST(NULL AS VARCHAR) AS identity_minimum,
                   CAST(NULL AS VARCHAR) AS identity_cycle, 'NEVER' AS is_generated,
                   CAST(NULL AS VARCHAR) AS generation_expression, 'NO' AS is_updatable
            FROM pgc.pg_attribute a
            JOIN pgc.pg_class c ON c.oid = a.attrelid
            JOIN pgc.pg_namespace n ON n.oid = c.relnamespace
            JOIN pgc.pg_type t ON t.oid = a.atttypid
            WHERE a.attnum > 0 AND NOT a.attisdropped
              AND c.relkind IN ('r', 'p', 'v', 'f', 'm')""",
        "views": f"""
            SELECT {db} AS table_catalog, n.nspname AS table_schema, c.relname AS table_name,
                   CAST(NULL AS VARCHAR) AS view_definition, 'NONE' AS check_option,
                   'NO' AS is_updatable, 'NO' AS is_insertable_into,
                   'NO' AS is_trigger_updatable, 'NO' AS is_trigger_deletable,
                   'NO' AS is_trigger_insertable_into
            FROM pgc.pg_class c JOIN pgc.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'v'""",
        "table_privileges": f"""
            SELECT 'dp_gateway' AS grantor, 'PUBLIC' AS grantee, {db} AS table_catalog,
                   n.nspname AS table_schema, c.relname AS table_name,
                   'SELECT' AS privilege_type, 'NO' AS is_grantable, 'YES' AS with_hierarchy
            FROM pgc.pg_class c JOIN pgc.pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p', 'v')""",
        "character_sets": f"""
            SELECT CAST(NULL AS VARCHAR) AS character_set_catalog,
                   CAST(NULL AS VARCHAR) AS character_set_schema,
                   'UTF8' AS character_set_name, 'UCS' AS character_repertoire,
                   'UTF8' AS form_of_use, {db} AS default_collate_catalog,
                   'pg_catalog' AS default_collate_schema, 'C' AS default_collate_name""",
        "enabled_roles": "SELECT rolname AS role_name FROM pgc.pg_roles",
    }
    out["role_table_grants"] = out["table_privileges"]
    out.update({name: _empty_view(spec) for name, spec in _EMPTY.items()})
    return out
