"""The emulated catalog's shape: pg_catalog tables and views, information_schema.

Column lists follow PostgreSQL 16 so that ``SELECT c.*`` and hand-written
driver queries find what they name.  Types are PostgreSQL's; :data:`DUCK`
says how each is stored in DuckDB (an ``oid`` is a UINTEGER so it goes back to
clients as type ``oid``).  Columns take PostgreSQL-like defaults (false, 0,
NULL) unless a row says otherwise.  Statistics columns exist but never hold
real numbers: ``reltuples`` is -1 ("unknown"), ``relpages`` 0, and the
``pg_stat*`` / ``pg_stats`` views are empty.
"""

from __future__ import annotations

DUCK = {
    "oid": "UINTEGER", "regproc": "UINTEGER", "xid": "UINTEGER", "name": "VARCHAR",
    "text": "VARCHAR", "char": "VARCHAR", "pg_node_tree": "VARCHAR", "int2": "SMALLINT",
    "int4": "INTEGER", "int8": "BIGINT", "float4": "FLOAT", "float8": "DOUBLE",
    "bool": "BOOLEAN", "timestamptz": "TIMESTAMPTZ", "bytea": "BLOB",
    "int2vector": "SMALLINT[]", "oidvector": "UINTEGER[]", "aclitem[]": "VARCHAR[]",
    "oid[]": "UINTEGER[]", "text[]": "VARCHAR[]", "char[]": "VARCHAR[]",
    "int2[]": "SMALLINT[]", "name[]": "VARCHAR[]",
}

PG_TYPE_OIDS = {
    "oid": 26, "regproc": 24, "xid": 28, "name": 19, "text": 25, "char": 18,
    "pg_node_tree": 194, "int2": 21, "int4": 23, "int8": 20, "float4": 700, "float8": 701,
    "bool": 16, "timestamptz": 1184, "bytea": 17, "int2vector": 22, "oidvector": 30,
    "aclitem[]": 1034, "oid[]": 1028, "text[]": 1009, "char[]": 1002, "int2[]": 1005,
    "name[]": 1003,
}

# table -> "column:type[=default] ..."; ":bool" defaults to false, numbers to 0.
TABLES: dict[str, str] = {
    "pg_namespace": "oid:oid nspname:name nspowner:oid=10 nspacl:aclitem[]",
    "pg_class": (
        "oid:oid relname:name relnamespace:oid reltype:oid reloftype:oid relowner:oid=10 "
        "relam:oid relfilenode:oid reltablespace:oid relpages:int4 reltuples:float4=-1 "
        "relallvisible:int4 reltoastrelid:oid relhasindex:bool relisshared:bool "
        "relpersistence:char='p' relkind:char='r' relnatts:int2 relchecks:int2 "
        "relhasrules:bool relhastriggers:bool relhassubclass:bool relrowsecurity:bool "
        "relforcerowsecurity:bool relispopulated:bool=true relreplident:char='d' "
        "relispartition:bool relrewrite:oid relfrozenxid:xid relminmxid:xid "
        "relacl:aclitem[] reloptions:text[] relpartbound:pg_node_tree"),
    "pg_attribute": (
        "attrelid:oid attname:name atttypid:oid attlen:int2 attnum:int2 attcacheoff:int4=-1 "
        "atttypmod:int4=-1 attndims:int2 attbyval:bool attalign:char='i' "
        "attstorage:char='p' attcompression:char='' attnotnull:bool atthasdef:bool "
        "atthasmissing:bool attidentity:char='' attgenerated:char='' attisdropped:bool "
        "attislocal:bool=true attinhcount:int2 attstattarget:int2=-1 attcollation:oid "
        "attacl:aclitem[] attoptions:text[] attfdwoptions:text[] attmissingval:text"),
    "pg_type": (
        "oid:oid typname:name typnamespace:oid=11 typowner:oid=10 typlen:int2 typbyval:bool "
        "typtype:char='b' typcategory:char typispreferred:bool typisdefined:bool=true "
        "typdelim:char=',' typrelid:oid typsubscript:regproc typelem:oid typarray:oid "
        "typinput:regproc typoutput:regproc typreceive:regproc typsend:regproc "
        "typmodin:regproc typmodout:regproc typanalyze:regproc typalign:char "
        "typstorage:char typnotnull:bool typbasetype:oid typtypmod:int4=-1 typndims:int4 "
        "typcollation:oid typdefaultbin:pg_node_tree typdefault:text typacl:aclitem[]"),
    "pg_proc": (
        "oid:oid proname:name pronamespace:oid=11 proowner:oid=10 prolang:oid=12 "
        "procost:float4=1 prorows:float4 provariadic:oid prosupport:regproc "
        "prokind:char='f' prosecdef:bool proleakproof:bool proisstrict:bool=true "
        "proretset:bool provolatile:char='i' proparallel:char='s' pronargs:int2 "
        "pronargdefaults:int2 prorettype:oid proargtypes:oidvector proallargtypes:oid[] "
        "proargmodes:char[] proargnames:text[] proargdefaults:pg_node_tree "
        "protrftypes:oid[] prosrc:text probin:text prosqlbody:pg_node_tree "
        "proconfig:text[] proacl:aclitem[]"),
    "pg_database": (
        "oid:oid datname:name datdba:oid=10 encoding:int4=6 datlocprovider:char='c' "
        "datistemplate:bool datallowconn:bool=true datconnlimit:int4=-1 datfrozenxid:xid "
        "datminmxid:xid dattablespace:oid=1663 datcollate:text='C' datctype:text='C' "
        "daticulocale:text daticurules:text datcollversion:text datacl:aclitem[]"),
    "pg_constraint": (
        "oid:oid conname:name connamespace:oid contype:char condeferrable:bool "
        "condeferred:bool convalidated:bool=true conrelid:oid contypid:oid conindid:oid "
        "conparentid:oid confrelid:oid confupdtype:char confdeltype:char "
        "confmatchtype:char conislocal:bool=true coninhcount:int2 connoinherit:bool "
        "conkey:int2[] confkey:int2[] conpfeqop:oid[] conppeqop:oid[] conffeqop:oid[] "
        "confdelsetcols:int2[] conexclop:oid[] conbin:pg_node_tree"),
    "pg_index": (
        "indexrelid:oid indrelid:oid indnatts:int2 indnkeyatts:int2 indisunique:bool "
        "indnullsnotdistinct:bool indisprimary:bool indisexclusion:bool indimmediate:bool "
        "indisclustered:bool indisvalid:bool indcheckxmin:bool indisready:bool "
        "indislive:bool indisreplident:bool indkey:int2vector indcollation:oidvector "
        "indclass:oidvector indoption:int2vector indexprs:pg_node_tree indpred:pg_node_tree"),
    "pg_attrdef": "oid:oid adrelid:oid adnum:int2 adbin:pg_node_tree",
    "pg_description": "objoid:oid classoid:oid objsubid:int4 description:text",
    "pg_shdescription": "objoid:oid classoid:oid description:text",
    "pg_am": "oid:oid amname:name amhandler:regproc amtype:char",
    "pg_collation": (
        "oid:oid collname:name collnamespace:oid=11 collowner:oid=10 collprovider:char='c' "
        "collisdeterministic:bool=true collencoding:int4=-1 collcollate:text "
        "collctype:text colliculocale:text collicurules:text collversion:text"),
    "pg_enum": "oid:oid enumtypid:oid enumsortorder:float4 enumlabel:name",
    "pg_range": ("rngtypid:oid rngsubtype:oid rngmultitypid:oid rngcollation:oid "
                 "rngsubopc:oid rngcanonical:regproc rngsubdiff:regproc"),
    "pg_inherits": "inhrelid:oid inhparent:oid inhseqno:int4 inhdetachpending:bool",
    "pg_depend": ("classid:oid objid:oid objsubid:int4 refclassid:oid refobjid:oid "
                  "refobjsubid:int4 deptype:char"),
    "pg_roles": (
        "rolname:name rolsuper:bool rolinherit:bool=true rolcreaterole:bool "
        "rolcreatedb:bool rolcanlogin:bool=true rolreplication:bool rolconnlimit:int4=-1 "
        "rolpassword:text rolvaliduntil:timestamptz rolbypassrls:bool rolconfig:text[] "
        "oid:oid"),
    "pg_auth_members": ("oid:oid roleid:oid member:oid grantor:oid admin_option:bool "
                        "inherit_option:bool set_option:bool"),
    "pg_tablespace": "oid:oid spcname:name spcowner:oid=10 spcacl:aclitem[] spcoptions:text[]",
    "pg_extension": ("oid:oid extname:name extowner:oid=10 extnamespace:oid=11 "
                     "extrelocatable:bool extversion:text extconfig:oid[] extcondition:text[]"),
    "pg_language": ("oid:oid lanname:name lanowner:oid=10 lanispl:bool lanpltrusted:bool "
                    "lanplcallfoid:oid laninline:oid lanvalidator:oid lanacl:aclitem[]"),
    "pg_policy": ("oid:oid polname:name polrelid:oid polcmd:char polpermissive:bool "
                  "polroles:oid[] polqual:pg_node_tree polwithcheck:pg_node_tree"),
    "pg_statistic_ext": ("oid:oid stxrelid:oid stxname:name stxnamespace:oid stxowner:oid "
                         "stxstattarget:int4 stxkeys:int2vector stxkind:char[] "
                         "stxexprs:pg_node_tree"),
    "pg_publication": ("oid:oid pubname:name pubowner:oid puballtables:bool pubinsert:bool "
                       "pubupdate:bool pubdelete:bool pubtruncate:bool pubviaroot:bool"),
    "pg_publication_rel": ("oid:oid prpubid:oid prrelid:oid prqual:pg_node_tree "
                           "prattrs:int2vector"),
    "pg_publication_namespace": "oid:oid pnpubid:oid pnnspid:oid",
    "pg_trigger": ("oid:oid tgrelid:oid tgparentid:oid tgname:name tgfoid:oid tgtype:int2 "
                   "tgenabled:char tgisinternal:bool tgconstrrelid:oid tgconstrindid:oid "
                   "tgconstraint:oid tgdeferrable:bool tginitdeferred:bool tgnargs:int2 "
                   "tgattr:int2vector tgargs:bytea tgqual:pg_node_tree tgoldtable:name "
                   "tgnewtable:name"),
    "pg_rewrite": ("oid:oid rulename:name ev_class:oid ev_type:char ev_enabled:char "
                   "is_instead:bool ev_qual:pg_node_tree ev_action:pg_node_tree"),
    "pg_sequence": ("seqrelid:oid seqtypid:oid seqstart:int8 seqincrement:int8 seqmax:int8 "
                    "seqmin:int8 seqcache:int8 seqcycle:bool"),
    "pg_partitioned_table": ("partrelid:oid partstrat:char partnatts:int2 partdefid:oid "
                             "partattrs:int2vector partclass:oidvector "
                             "partcollation:oidvector partexprs:pg_node_tree"),
    "pg_operator": ("oid:oid oprname:name oprnamespace:oid oprowner:oid oprkind:char "
                    "oprcanmerge:bool oprcanhash:bool oprleft:oid oprright:oid "
                    "oprresult:oid oprcom:oid oprnegate:oid oprcode:regproc "
                    "oprrest:regproc oprjoin:regproc"),
    "pg_cast": ("oid:oid castsource:oid casttarget:oid castfunc:oid castcontext:char "
                "castmethod:char"),
    "pg_opclass": ("oid:oid opcmethod:oid opcname:name opcnamespace:oid opcowner:oid "
                   "opcfamily:oid opcintype:oid opcdefault:bool opckeytype:oid"),
    "pg_foreign_table": "ftrelid:oid ftserver:oid ftoptions:text[]",
    "pg_event_trigger": ("oid:oid evtname:name evtevent:name evtowner:oid evtfoid:oid "
                         "evtenabled:char evttags:text[]"),
    "pg_replication_slots": (
        "slot_name:name plugin:name slot_type:text datoid:oid database:name "
        "temporary:bool active:bool active_pid:int4 xmin:xid catalog_xmin:xid "
        "restart_lsn:text confirmed_flush_lsn:text wal_status:text safe_wal_size:int8 "
        "two_phase:bool conflicting:bool"),
    "pg_stat_activity": (
        "datid:oid datname:name pid:int4 leader_pid:int4 usesysid:oid usename:name "
        "application_name:text client_addr:text client_hostname:text client_port:int4 "
        "backend_start:timestamptz xact_start:timestamptz query_start:timestamptz "
        "state_change:timestamptz wait_event_type:text wait_event:text state:text "
        "backend_xid:xid backend_xmin:xid query_id:int8 query:text backend_type:text"),
    "pg_locks": ("locktype:text database:oid relation:oid pid:int4 mode:text granted:bool "
                 "fastpath:bool"),
    "pg_stats": (
        "schemaname:name tablename:name attname:name inherited:bool null_frac:float4 "
        "avg_width:int4 n_distinct:float4 most_common_vals:text[] "
        "most_common_freqs:text[] histogram_bounds:text[] correlation:float4"),
    "pg_stat_user_tables": (
        "relid:oid schemaname:name relname:name seq_scan:int8 seq_tup_read:int8 "
        "idx_scan:int8 idx_tup_fetch:int8 n_tup_ins:int8 n_tup_upd:int8 n_tup_del:int8 "
        "n_tup_hot_upd:int8 n_live_tup:int8 n_dead_tup:int8 n_mod_since_analyze:int8 "
        "last_vacuum:timestamptz last_autovacuum:timestamptz last_analyze:timestamptz "
        "last_autoanalyze:timestamptz vacuum_count:int8 autovacuum_count:int8 "
        "analyze_count:int8 autoanalyze_count:int8"),
    "pg_statio_user_tables": ("relid:oid schemaname:name relname:name heap_blks_read:int8 "
                              "heap_blks_hit:int8 idx_blks_read:int8 idx_blks_hit:int8"),
    "pg_settings": (
        "name:text setting:text unit:text category:text short_desc:text extra_desc:text "
        "context:text vartype:text source:text min_val:text max_val:text enumvals:text[] "
        "boot_val:text reset_val:text sourcefile:text sourceline:int4 pending_restart:bool"),
    "pg_prepared_statements": ("name:text statement:text prepare_time:timestamptz "
                               "parameter_types:text[] from_sql:bool"),
    "pg_cursors": ("name:text statement:text is_holdable:bool is_binary:bool "
                   "is_scrollable:bool creation_time:timestamptz"),
    "pg_timezone_names": "name:text abbrev:text utc_offset:text is_dst:bool",
    "pg_available_extensions": ("name:name default_version:text installed_version:text "
                                "comment:text"),
    "pg_sequences": ("schemaname:name sequencename:name sequenceowner:name data_type:text "
                     "start_value:int8 min_value:int8 max_value:int8 increment_by:int8 "
                     "cycle:bool cache_size:int8 last_value:int8"),
    # Present so that deeper browsing (DBeaver, pgAdmin) finds them; always empty.
    "pg_aggregate": ("aggfnoid:regproc aggkind:char aggnumdirectargs:int2 aggtransfn:regproc "
                     "aggfinalfn:regproc aggsortop:oid aggtranstype:oid agginitval:text"),
    "pg_foreign_server": ("oid:oid srvname:name srvowner:oid srvfdw:oid srvtype:text "
                          "srvversion:text srvacl:aclitem[] srvoptions:text[]"),
    "pg_foreign_data_wrapper": ("oid:oid fdwname:name fdwowner:oid fdwhandler:oid "
                                "fdwvalidator:oid fdwacl:aclitem[] fdwoptions:text[]"),
    "pg_user_mappings": ("umid:oid srvid:oid srvname:name umuser:oid usename:name "
                         "umoptions:text[]"),
    "pg_default_acl": ("oid:oid defaclrole:oid defaclnamespace:oid defaclobjtype:char "
                       "defaclacl:aclitem[]"),
    "pg_init_privs": ("objoid:oid classoid:oid objsubid:int4 privtype:char "
                      "initprivs:aclitem[]"),
    "pg_shdepend": ("dbid:oid classid:oid objid:oid objsubid:int4 refclassid:oid "
                    "refobjid:oid deptype:char"),
    "pg_db_role_setting": "setdatabase:oid setrole:oid setconfig:text[]",
    "pg_stat_database": ("datid:oid datname:name numbackends:int4 xact_commit:int8 "
                         "xact_rollback:int8 blks_read:int8 blks_hit:int8 tup_returned:int8 "
                         "tup_fetched:int8 tup_inserted:int8 tup_updated:int8 tup_deleted:int8"),
    "pg_stat_replication": ("pid:int4 usesysid:oid usename:name application_name:text "
                            "client_addr:text state:text sync_state:text"),
    "pg_subscription": ("oid:oid subdbid:oid subname:name subowner:oid subenabled:bool "
                        "subconninfo:text subslotname:name subpublications:text[]"),
    "pg_opfamily": "oid:oid opfmethod:oid opfname:name opfnamespace:oid opfowner:oid",
    "pg_conversion": ("oid:oid conname:name connamespace:oid conowner:oid "
                      "conforencoding:int4 contoencoding:int4 conproc:regproc "
                      "condefault:bool"),
    "pg_ts_config": ("oid:oid cfgname:name cfgnamespace:oid cfgowner:oid cfgparser:oid"),
    "pg_transform": "oid:oid trftype:oid trflang:oid trffromsql:regproc trftosql:regproc",
    "pg_seclabel": "objoid:oid classoid:oid objsubid:int4 provider:text label:text",
    "pg_largeobject_metadata": "oid:oid lomowner:oid lomacl:aclitem[]",
}

# Tables whose contents are per-session (rewritten into a derived table per query).
SESSION_TABLES = frozenset({"pg_settings"})

# Relations that stand in for the same PostgreSQL statistics views.
ALIASES = {"pg_stat_all_tables": "pg_stat_user_tables",
           "pg_statio_all_tables": "pg_statio_user_tables", "pg_authid": "pg_roles"}

VIEWS: dict[str, str] = {
    "pg_tables": """
        SELECT n.nspname AS schemaname, c.relname AS tablename,
               r.rolname AS tableowner, CAST(NULL AS VARCHAR) AS tablespace,
               c.relhasindex AS hasindexes, c.relhasrules AS hasrules,
               c.relhastriggers AS hastriggers, c.relrowsecurity AS rowsecurity
        FROM pgc.pg_class c JOIN pgc.pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pgc.pg_roles r ON r.oid = c.relowner
        WHERE c.relkind IN ('r', 'p')""",
    "pg_views": """
        SELECT n.nspname AS schemaname, c.relname AS viewname, r.rolname AS viewowner,
               CAST(NULL AS VARCHAR) AS definition
        FROM pgc.pg_class c JOIN pgc.pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pgc.pg_roles r ON r.oid = c.relowner
        WHERE c.relkind = 'v'""",
    "pg_matviews": """
        SELECT CAST(NULL AS VARCHAR) AS schemaname, CAST(NULL AS VARCHAR) AS matviewname,
               CAST(NULL AS VARCHAR) AS matviewowner, CAST(NULL AS VARCHAR) AS tablespace,
               false AS hasindexes, true AS ispopulated, CAST(NULL AS VARCHAR) AS definition
        WHERE false""",
    "pg_indexes": """
        SELECT CAST(NULL AS VARCHAR) AS schemaname, CAST(NULL AS VARCHAR) AS tablename,
               CAST(NULL AS VARCHAR) AS indexname, CAST(NULL AS VARCHAR) AS tablespace,
               CAST(NULL AS VARCHAR) AS indexdef
        WHERE false""",
    "pg_user": """
        SELECT rolname AS usename, oid AS usesysid, rolcreatedb AS usecreatedb,
               rolsuper AS usesuper, rolreplication AS userepl, rolbypassrls AS usebypassrls,
               '********' AS passwd, rolvaliduntil AS valuntil, rolconfig AS useconfig
        FROM pgc.pg_roles WHERE rolcanlogin""",
}
