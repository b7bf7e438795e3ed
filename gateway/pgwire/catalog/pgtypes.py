"""PostgreSQL's built-in types, as drivers expect to find them in ``pg_type``.

Npgsql (Power BI) loads every type at connect and pgjdbc resolves names and
OIDs here, so the OIDs are PostgreSQL's own (``src/include/catalog/pg_type.dat``).
Only base and pseudo types are listed; each base type's array type is derived.
Columns: oid typname typlen typbyval typtype typcategory typispreferred typelem
typarray typinput typalign typstorage typcollation typdelim.
"""

from __future__ import annotations

from dataclasses import dataclass

_BASE = """
16 bool 1 t b B t 0 1000 boolin c p 0 ,
17 bytea -1 f b U f 0 1001 byteain i x 0 ,
18 char 1 t b Z f 0 1002 charin c p 0 ,
19 name 64 f b S f 18 1003 namein c p 950 ,
20 int8 8 t b N f 0 1016 int8in d p 0 ,
21 int2 2 t b N f 0 1005 int2in s p 0 ,
22 int2vector -1 f b A f 21 1006 int2vectorin i p 0 ,
23 int4 4 t b N f 0 1007 int4in i p 0 ,
24 regproc 4 t b N f 0 1008 regprocin i p 0 ,
25 text -1 f b S t 0 1009 textin i x 100 ,
26 oid 4 t b N t 0 1028 oidin i p 0 ,
27 tid 6 f b U f 0 1010 tidin s p 0 ,
28 xid 4 t b U f 0 1011 xidin i p 0 ,
29 cid 4 t b U f 0 1012 cidin i p 0 ,
30 oidvector -1 f b A f 26 1013 oidvectorin i p 0 ,
114 json -1 f b U f 0 199 json_in i x 0 ,
142 xml -1 f b U f 0 143 xml_in i x 0 ,
194 pg_node_tree -1 f b Z f 0 0 pg_node_tree_in i x 100 ,
600 point 16 f b G f 701 1017 point_in d p 0 ,
601 lseg 32 f b G f 600 1018 lseg_in d p 0 ,
602 path -1 f b G f 0 1019 path_in d x 0 ,
603 box 32 f b G f 600 1020 box_in d p 0 ;
604 polygon -1 f b G f 0 1027 poly_in d x 0 ,
628 line 24 f b G f 701 629 line_in d p 0 ,
650 cidr -1 f b I f 0 651 cidr_in i m 0 ,
700 float4 4 t b N f 0 1021 float4in i p 0 ,
701 float8 8 t b N t 0 1022 float8in d p 0 ,
705 unknown -2 f p X f 0 0 unknownin c p 0 ,
718 circle 24 f b G f 0 719 circle_in d p 0 ,
774 macaddr8 8 f b U f 0 775 macaddr8_in i p 0 ,
790 money 8 t b N f 0 791 cash_in d p 0 ,
829 macaddr 6 f b U f 0 1040 macaddr_in i p 0 ,
869 inet -1 f b I t 0 1041 inet_in i m 0 ,
1033 aclitem 12 f b U f 0 1034 aclitemin i p 0 ,
1042 bpchar -1 f b S f 0 1014 bpcharin i x 100 ,
1043 varchar -1 f b S f 0 1015 varcharin i x 100 ,
1082 date 4 t b D f 0 1182 date_in i p 0 ,
1083 time 8 t b D f 0 1183 time_in d p 0 ,
1114 timestamp 8 t b D f 0 1115 timestamp_in d p 0 ,
1184 timestamptz 8 t b D t 0 1185 timestamptz_in d p 0 ,
1186 interval 16 f b T t 0 1187 interval_in d p 0 ,
1266 timetz 12 f b D f 0 1270 timetz_in d p 0 ,
1560 bit -1 f b V f 0 1561 bit_in i x 0 ,
1562 varbit -1 f b V t 0 1563 varbit_in i x 0 ,
1700 numeric -1 f b N f 0 1231 numeric_in i m 0 ,
1790 refcursor -1 f b U f 0 2201 textin i x 0 ,
2202 regprocedure 4 t b N f 0 2207 regprocedurein i p 0 ,
2203 regoper 4 t b N f 0 2208 regoperin i p 0 ,
2204 regoperator 4 t b N f 0 2209 regoperatorin i p 0 ,
2205 regclass 4 t b N f 0 2210 regclassin i p 0 ,
2206 regtype 4 t b N f 0 2211 regtypein i p 0 ,
2249 record -1 f p P f 0 2287 record_in d x 0 ,
2275 cstring -2 f p P f 0 1263 cstring_in c p 0 ,
2276 any 4 t p P f 0 0 any_in i p 0 ,
2277 anyarray -1 f p P f 0 0 anyarray_in d x 0 ,
2278 void 4 t p P f 0 0 void_in i p 0 ,
2279 trigger 4 t p P f 0 0 trigger_in i p 0 ,
2280 language_handler 4 t p P f 0 0 language_handler_in i p 0 ,
2281 internal 8 t p P f 0 0 internal_in d p 0 ,
2283 anyelement 4 t p P f 0 0 anyelement_in i p 0 ,
2776 anynonarray 4 t p P f 0 0 anynonarray_in i p 0 ,
2950 uuid 16 f b U f 0 2951 uuid_in c p 0 ,
2970 txid_snapshot -1 f b U f 0 2949 txid_snapshot_in d x 0 ,
3220 pg_lsn 8 t b U f 0 3221 pg_lsn_in d p 0 ,
3500 anyenum 4 t p P f 0 0 anyenum_in i p 0 ,
3614 tsvector -1 f b U f 0 3643 tsvectorin i x 0 ,
3615 tsquery -1 f b U f 0 3645 tsqueryin i p 0 ,
3734 regconfig 4 t b N f 0 3735 regconfigin i p 0 ,
3769 regdictionary 4 t b N f 0 3770 regdictionaryin i p 0 ,
3802 jsonb -1 f b U f 0 3807 jsonb_in i x 0 ,
3831 anyrange -1 f p P f 0 0 anyrange_in d x 0 ,
3838 event_trigger 4 t p P f 0 0 event_trigger_in i p 0 ,
4072 jsonpath -1 f b U f 0 4073 jsonpath_in i x 0 ,
4089 regnamespace 4 t b N f 0 4090 regnamespacein i p 0 ,
4096 regrole 4 t b N f 0 4097 regrolein i p 0 ,
4191 regcollation 4 t b N f 0 4192 regcollationin i p 0 ,
5069 xid8 8 t b U f 0 271 xid8in d p 0 ,
5077 anycompatible 4 t p P f 0 0 anycompatible_in i p 0 ,
5078 anycompatiblearray -1 f p P f 0 0 anycompatiblearray_in d x 0 ,
"""

# format_type() spellings that differ from typname.
_FORMAT = {
    "bool": "boolean", "bpchar": "character", "varchar": "character varying",
    "int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "real",
    "float8": "double precision", "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone", "time": "time without time zone",
    "timetz": "time with time zone", "varbit": "bit varying", "char": '"char"',
}


@dataclass(frozen=True)
class PgType:
    oid: int
    name: str
    length: int
    byval: bool
    kind: str  # typtype: b base, p pseudo, c composite, a (we use b) array
    category: str
    preferred: bool
    elem: int
    array: int
    input: str  # the input function's name; output/receive/send are derived
    align: str
    storage: str
    collation: int
    delim: str
    relid: int = 0

    @property
    def format_name(self) -> str:
        if self.elem and self.category == "A" and self.name.startswith("_"):
            return base_format(self.name[1:]) + "[]"
        return base_format(self.name)

    def proc(self, kind: str) -> str:
        """The name of the type's in/out/recv/send function (PostgreSQL's naming)."""
        stem = self.input[:-2]
        return {"in": self.input, "out": stem + "out", "recv": stem + "recv",
                "send": stem + "send"}[kind]


def base_format(name: str) -> str:
    return _FORMAT.get(name, name)


def builtin_types() -> list[PgType]:
    """Base and pseudo types, then one array type per base type that has one."""
    out: list[PgType] = []
    for line in _BASE.strip().splitlines():
        f = line.split(" ")
        out.append(PgType(int(f[0]), f[1], int(f[2]), f[3] == "t", f[4], f[5], f[6] == "t",
                          int(f[7]), int(f[8]), f[9], f[10], f[11], int(f[12]), f[13]))
    arrays = [PgType(t.array, "_" + t.name, -1, False, "b", "A", False, t.oid, 0, "array_in",
                     "d" if t.align == "d" else "i", "x", t.collation, t.delim)
              for t in out if t.array]
    return out + arrays
