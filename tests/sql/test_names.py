"""Names as users write them (gateway/sql/names.py): schema-qualified tables, quoted and
case-folded identifiers, in queries, explanations and training SQL.

The policy declares a table ``PUMS`` with ``schema: PUMS`` (as SmartNoise SQL users
write ``PUMS.PUMS``), a protected ``visits`` and a public ``devices`` table, in the
dataset ``census``.  ``public.``, ``main.`` and ``census.`` are accepted for every
table, ``PUMS.`` for ``PUMS`` only; quoted names are exact, unquoted ones ignore case.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import Gateway
from gateway.errors import PolicyError, QueryRejected
from gateway.policy import load_policy
from gateway.sql.names import TableNames
from gateway.sql.parse import parse
from gateway.sql.selection import select_training_rows
from gateway.sql.validate import validate
from tests.support import write_policy

DEVICES = ["desktop", "mobile", "tablet"]


def census_policy(folder: Path, **extra_tables: dict[str, object]) -> Path:
    """visits.csv (its ``spend`` column entirely empty), pums.csv, devices.csv and a
    policy over them with budgets that never run out."""
    rng = random.Random(7)
    lines = ["visit_id,user_id,age,device,spend,duration_s,converted"]
    for i in range(1, 601):
        user = i % 150 + 1
        lines.append(f"{i},{user},{18 + user % 60},{rng.choice(DEVICES)},,"
                     f"{rng.uniform(0, 600):.1f},{'true' if rng.random() < 0.3 else 'false'}")
    (folder / "visits.csv").write_text("\n".join(lines) + "\n")
    lines = ["AGE,sex,income,married"]
    for _ in range(400):
        lines.append(f"{rng.randint(18, 90)},{rng.choice('MF')},{rng.uniform(0, 9e4):.0f},"
                     f"{'true' if rng.random() < 0.5 else 'false'}")
    (folder / "pums.csv").write_text("\n".join(lines) + "\n")
    (folder / "devices.csv").write_text(
        "device,family\ndesktop,fixed\nmobile,handheld\ntablet,handheld\n")
    data = {
        "dataset": "census",
        "tables": {
            "visits": {
                "source": str(folder / "visits.csv"), "privacy_unit": "user_id",
                "max_rows_per_unit": 4, "max_groups_per_unit": 2,
                "columns": {
                    "visit_id": {"type": "int", "role": "identifier"},
                    "user_id": {"type": "int", "role": "privacy_unit"},
                    "age": {"type": "int", "bounds": [18, 90]},
                    "device": {"type": "text", "public_values_from": "devices.device"},
                    "spend": {"type": "float", "bounds": [0, 500]},
                    "duration_s": {"type": "float", "bounds": [0, 600]},
                    "converted": {"type": "bool"},
                }},
            "PUMS": {
                "source": str(folder / "pums.csv"), "schema": "PUMS",
                "columns": {
                    "AGE": {"type": "int", "bounds": [0, 100]},
                    "sex": {"type": "text", "public_values": ["M", "F"]},
                    "income": {"type": "float", "bounds": [0, 100000]},
                    "married": {"type": "bool"},
                }},
            "devices": {"source": str(folder / "devices.csv"), "public": True},
            **extra_tables,
        },
        "budget": {"dataset": {"epsilon": 1e9, "delta": 0.01},
                   "per_analyst": {"epsilon": 1e9, "delta": 0.01}},
    }
    return write_policy(folder, data)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("names")
    with Gateway.open(census_policy(folder), state=folder / "state.db") as g:
        yield g


def refused(gw: Gateway, sql: str, rule: str) -> QueryRejected:
    with pytest.raises(QueryRejected) as err:
        gw.plan(sql)
    assert err.value.rule == rule, err.value
    assert err.value.hint
    return err.value


# -- schema-qualified tables --------------------------------------------------------------

VISITS_FORMS = [
    "visits", "VISITS", '"visits"', "public.visits", "PUBLIC.Visits", '"public"."visits"',
    "main.visits", "census.visits", "Census.visits", "census.public.visits",
    'census.main."visits"',
]


@pytest.mark.parametrize("table", VISITS_FORMS)
def test_every_accepted_form_names_the_table(gw: Gateway, table: str) -> None:
    sql = f"SELECT device, COUNT(*) AS n FROM {table} GROUP BY device"
    r = gw.query(sql, analyst="ann", epsilon=50.0)
    assert [c.name for c in r.columns] == ["device", "n"]
    assert sorted(row[0] for row in r.rows) == DEVICES
    assert r.epsilon_spent > 0 or r.cached


@pytest.mark.parametrize("table", ["PUMS.PUMS", '"PUMS"."PUMS"', "pums.pums", "PUMS",
                                   "public.PUMS", "census.PUMS.PUMS", "main.pums"])
def test_a_tables_own_schema(gw: Gateway, table: str) -> None:
    """SmartNoise SQL's PUMS.PUMS: the table declares ``schema: PUMS``."""
    r = gw.query(f'SELECT sex, AVG("AGE") AS a, COUNT(*) AS n FROM {table} GROUP BY sex',
                 analyst="ann", epsilon=50.0)
    assert sorted(row[0] for row in r.rows) == ["F", "M"]
    assert all(0 <= row[1] <= 100 for row in r.rows)


def test_the_qualifier_never_reaches_the_engine(gw: Gateway) -> None:
    e = gw.explain("SELECT d.family, COUNT(*) AS n FROM census.public.visits v "
                   "JOIN main.devices d ON v.device = d.device GROUP BY d.family",
                   epsilon=1.0)
    text = e.rewritten_sql.lower()
    assert not re.search(r"\b(census|public|main)\.", text), e.rewritten_sql
    e = gw.explain('SELECT AVG(income) AS m FROM "PUMS"."PUMS"', epsilon=1.0)
    assert not re.search(r'"pums"\s*\.\s*"pums"', e.rewritten_sql.lower()), e.rewritten_sql


def test_schema_qualified_columns(gw: Gateway) -> None:
    r = gw.query("SELECT public.visits.device, COUNT(*) AS n FROM public.visits "
                 "GROUP BY public.visits.device", analyst="ann", epsilon=50.0)
    assert len(r.rows) == 3
    # What Metabase sends: everything quoted and schema-qualified.
    r = gw.query('SELECT "public"."visits"."device" AS "device", count(*) AS "count" '
                 'FROM "public"."visits" GROUP BY "public"."visits"."device" '
                 'ORDER BY "public"."visits"."device" ASC', analyst="ann", epsilon=50.0)
    assert [c.name for c in r.columns] == ["device", "count"]
    assert [row[0] for row in r.rows] == DEVICES


@pytest.mark.parametrize("sql,what", [
    ("SELECT COUNT(*) FROM other.visits", "other.visits"),
    ("SELECT COUNT(*) FROM main.main.visits", "main.main.visits"),
    ("SELECT COUNT(*) FROM other.public.visits", "other.public.visits"),
    ("SELECT COUNT(*) FROM census.other.visits", "census.other.visits"),
    ("SELECT COUNT(*) FROM PUMS.visits", "PUMS.visits"),  # PUMS. is PUMS's own schema
    ('SELECT COUNT(*) FROM "Public".visits', '"Public".visits'),
    ('SELECT COUNT(*) FROM "CENSUS".visits', '"CENSUS".visits'),
    ("SELECT COUNT(*) FROM information_schema.visits", "information_schema.visits"),
])
def test_other_qualifiers_are_refused_naming_what_is_accepted(gw: Gateway, sql: str,
                                                               what: str) -> None:
    err = refused(gw, sql, "table")
    assert what.lower() in err.message.lower()
    assert "public.visits" in (err.hint or "") and "census.visits" in (err.hint or "")


def test_refused_column_qualifiers(gw: Gateway) -> None:
    err = refused(gw, "SELECT AVG(other.visits.age) FROM visits", "column")
    assert "public." in (err.hint or "")
    refused(gw, "SELECT AVG(public.v.age) FROM visits v", "column")
    refused(gw, "SELECT AVG(nowhere.public.visits.age) FROM visits", "column")


def test_unknown_table_lists_the_policy_names(gw: Gateway) -> None:
    err = refused(gw, "SELECT COUNT(*) FROM public.nosuch", "table")
    assert "PUMS" in (err.hint or "") and "visits" in (err.hint or "")


# -- quoted and case-folded identifiers ------------------------------------------------------

def test_quoted_names_are_exact(gw: Gateway) -> None:
    err = refused(gw, 'SELECT COUNT(*) FROM "Visits"', "table")
    assert '"visits"' in (err.hint or "")
    err = refused(gw, 'SELECT COUNT(*) FROM "pums"', "table")
    assert '"PUMS"' in (err.hint or "")
    err = refused(gw, 'SELECT AVG("age") AS a FROM PUMS', "column")
    assert '"AGE"' in (err.hint or "")
    refused(gw, 'SELECT AVG("Age") AS a FROM visits', "column")
    refused(gw, 'SELECT AVG(t."AGE") AS a FROM (SELECT * FROM visits) t', "column")


def test_unquoted_names_ignore_case(gw: Gateway) -> None:
    for sql in ("SELECT AVG(age) AS a FROM pums", "SELECT AVG(Age) AS a FROM Pums",
                'SELECT AVG("AGE") AS a FROM PUMS', "SELECT AVG(AGE) AS a FROM VISITS",
                'SELECT AVG(p."AGE") AS a FROM PUMS AS P'):
        plan = gw.plan(sql)
        assert plan.aggs and plan.public_query is None


def test_output_names_fold_like_postgresql(gw: Gateway) -> None:
    """Unquoted aliases fold to lower case (as before); quoted ones keep their spelling."""
    r = gw.query('SELECT COUNT(*) AS "Visits", COUNT(*) AS Total FROM visits', analyst="ann",
                 epsilon=50.0)
    assert [c.name for c in r.columns] == ["Visits", "total"]
    r = gw.query('SELECT "N" FROM (SELECT COUNT(*) AS "N" FROM visits) t', analyst="ann",
                 epsilon=50.0)
    assert [c.name for c in r.columns] == ["N"]


def test_names_the_query_defines_match_a_quoted_reference_exactly(gw: Gateway) -> None:
    gw.plan('SELECT AVG(t."Years") AS a FROM (SELECT age AS "Years" FROM visits) t')
    gw.plan("SELECT AVG(t.years) AS a FROM (SELECT age AS \"Years\" FROM visits) t")
    refused(gw, 'SELECT AVG(t."years") AS a FROM (SELECT age AS "Years" FROM visits) t',
            "column")


def test_validate_accepts_bare_names_too() -> None:
    tree = validate(parse("SELECT COUNT(*) FROM public.visits"),
                    "SELECT COUNT(*) FROM public.visits", {"visits"})
    assert tree.sql() == "SELECT COUNT(*) FROM visits"


# -- the policy key and the resolver ------------------------------------------------------------

def test_schema_is_part_of_the_public_schema(gw: Gateway) -> None:
    tables = gw.schema()["tables"]
    assert tables["PUMS"]["schema"] == "PUMS"
    assert "schema" not in tables["visits"]
    names = TableNames.from_schema(gw.schema())
    assert names == gw.policy.names


def test_policy_schema_key_is_checked(tmp_path: Path) -> None:
    path = census_policy(tmp_path)
    text = path.read_text().replace("schema: PUMS", "schema: pg_catalog")
    path.write_text(text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert "tables.PUMS" in str(err.value) and "pg_catalog" in str(err.value)
    path.write_text(text.replace("schema: pg_catalog", "schema: 'no spaces'"))
    with pytest.raises(PolicyError):
        load_policy(path)


def test_resolver_rules() -> None:
    names = TableNames({"visits": "visits", "pums": "PUMS"}, "census", {"pums": "PUMS"})
    assert names.lookup("VISITS") == "visits" and names.lookup('visits', quoted=True)
    assert names.lookup("Visits", quoted=True) is None
    assert names.lookup("PUMS", quoted=True) == "PUMS" and names.lookup("pums") == "PUMS"
    assert names.qualifiers("visits") == ["public", "main", "census"]
    assert names.qualifiers("pums") == ["public", "main", "census", "PUMS"]
    assert names.schema_ok("pums", False, "PUMS") and not names.schema_ok("pums", True, "PUMS")
    assert not names.schema_ok("PUMS", False, "visits")


# -- training SQL ----------------------------------------------------------------------------

def test_training_sql_with_qualified_names(gw: Gateway) -> None:
    sel = select_training_rows(
        'SELECT visits.age, d.family, converted FROM census.public.visits '
        'JOIN public."devices" d ON visits.device = d.device WHERE main.visits.age > 20',
        "converted", gw._context, gw._tables)
    assert [f.name for f in sel.features] == ["age", "family"]
    text = sel.query.sql(dialect="duckdb").lower()
    assert "census." not in text and "public." not in text
    with pytest.raises(QueryRejected) as err:
        select_training_rows("SELECT age, converted FROM elsewhere.visits", "converted",
                             gw._context, gw._tables)
    assert err.value.rule == "table"


def test_training_on_a_schema_qualified_table(gw: Gateway) -> None:
    m = gw.train('SELECT "AGE", income, sex, married FROM PUMS.PUMS', label="married",
                 model="logistic", epsilon=1.0, delta=1e-6, analyst="tia", epochs=1)
    assert m.status == "done" and m.epsilon_spent > 0


# -- over HTTP and the Python client --------------------------------------------------------

def test_http_and_client(tmp_path: Path) -> None:
    """The same names through `gateway serve` (HTTP) and the Python client, whose
    parameter binding reads TOP like the core."""
    from gateway.client import QueryRejected as ClientRejected
    from gateway.client import connect
    from tests.api.live import LiveServer, add_analysts

    policy = census_policy(tmp_path)
    state = tmp_path / "state.db"
    keys = add_analysts(policy, state, {"hal": {"epsilon": 1000.0}})
    server = LiveServer(policy, state).start()
    try:
        with server.client(keys["hal"]) as http:
            resp = http.post("/v1/query", json={
                "sql": 'SELECT TOP 2 sex, VAR("AGE") AS v FROM PUMS.PUMS GROUP BY sex '
                       "ORDER BY v * 2 DESC", "epsilon": 5.0})
            assert resp.status_code == 200, resp.text
            assert len(resp.json()["rows"]) == 2
            resp = http.post("/v1/query", json={"sql": 'SELECT COUNT(*) FROM "Visits"',
                                                "epsilon": 1.0})
            assert resp.status_code == 400 and "quoted" in resp.text
        with connect(server.url, keys["hal"], epsilon=5.0) as conn:
            cur = conn.cursor()
            cur.execute("SELECT TOP 2 device, COUNT(*) AS n FROM census.public.visits "
                        "WHERE age > ? GROUP BY device ORDER BY n DESC", [20])
            assert len(cur.fetchall()) == 2
            r = conn.query("SELECT COUNT(*) AS n FROM (SELECT * FROM main.visits)")
            assert [c.name for c in r.columns] == ["n"]
            with pytest.raises(ClientRejected):
                conn.query("SELECT COUNT(*) FROM elsewhere.visits")
    finally:
        server.stop()
