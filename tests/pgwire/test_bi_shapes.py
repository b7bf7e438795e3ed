"""SQL shapes BI tools generate (issue 5, item 6), sent through the proxy.

These exercise the core's SQL front end through pgwire, DP quantiles included
(Tableau's MIN/MAX range filters, Superset's medians).
"""

from __future__ import annotations

import psycopg
import pytest

SHAPES = [
    pytest.param("SELECT city, COUNT(*) FROM visits GROUP BY 1", id="group-by-ordinal"),
    pytest.param("SELECT COUNT(*) FILTER (WHERE converted) AS c, COUNT(*) AS n FROM visits",
                 id="count-filter"),
    pytest.param('SELECT "city", COUNT(*) AS "n" FROM "visits" GROUP BY "city"',
                 id="quoted-identifiers"),
    pytest.param("SELECT COUNT(*) FROM public.visits", id="public-schema"),
    pytest.param('SELECT "visits"."city" AS "city", SUM("visits"."amount") AS "sum_amount" '
                 'FROM "public"."visits" "visits" GROUP BY 1', id="tableau"),
    pytest.param('SELECT "public"."visits"."city" AS "city", count(*) AS "count" '
                 'FROM "public"."visits" GROUP BY "public"."visits"."city" '
                 'ORDER BY "public"."visits"."city" ASC LIMIT 2000', id="metabase"),
    pytest.param("SELECT city, COUNT(*) AS n FROM visits GROUP BY city LIMIT 1000",
                 id="limit-wrapper"),
    pytest.param("SELECT * FROM (SELECT city, COUNT(*) AS n FROM visits GROUP BY city) AS t "
                 "LIMIT 1000", id="subquery-wrapper"),
    pytest.param("SELECT COUNT(*) AS count FROM (SELECT city, COUNT(*) AS n FROM visits "
                 "GROUP BY city) AS virtual_table LIMIT 1", id="superset-count-wrapper"),
    pytest.param("SELECT DATE_TRUNC('month', visit_date) AS __timestamp, COUNT(*) AS count "
                 "FROM visits GROUP BY DATE_TRUNC('month', visit_date) LIMIT 10000",
                 id="superset-time-grain"),
    pytest.param('SELECT date_trunc(\'day\', visit_date) AS "time", count(*) FROM visits '
                 "WHERE visit_date BETWEEN '2024-01-01' AND '2024-02-01' GROUP BY 1 ORDER BY 1",
                 id="grafana-time-series"),
    pytest.param('select "_"."city", "_"."n" from (select "city", count(*) as "n" '
                 'from "visits" group by "city") "_"', id="powerbi-wrapper"),
    pytest.param('SELECT CAST(date_trunc(\'week\', "visits"."visit_date") AS date) AS '
                 '"visit_date", count(*) AS "count" FROM "visits" GROUP BY 1 ORDER BY 1 '
                 "LIMIT 1048575", id="metabase-date-bucket"),
    pytest.param("SELECT TO_CHAR(visit_date, 'YYYY-MM') AS m, COUNT(*) FROM visits GROUP BY 1",
                 id="to-char-label"),
    # DP quantiles: MIN/MAX as quantiles near 0/1, medians (issue 10)
    pytest.param("SELECT MIN(visit_date), MAX(visit_date) FROM visits",
                 id="tableau-range-filter"),
    pytest.param("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) FROM visits",
                 id="superset-median"),
    pytest.param("SELECT city, percentile_cont(0.5) WITHIN GROUP (ORDER BY amount) AS median "
                 "FROM visits GROUP BY city ORDER BY median DESC LIMIT 10",
                 id="superset-median-by-group"),
]

@pytest.mark.parametrize("sql", SHAPES)
def test_bi_tool_query_shapes(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(sql).fetchall()
    assert rows


def test_approx_quantiles_arrive_as_a_float_array(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute("SELECT APPROX_QUANTILES(amount, 4) AS q FROM visits")
        (q,) = cur.fetchone()
        assert cur.description[0].type_code == 1022  # float8[]
    assert isinstance(q, list) and len(q) == 5 and q == sorted(q)


def test_duckdb_quantile_spellings_over_the_wire(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT QUANTILE_CONT(amount, 0.5), QUANTILE_DISC(amount, 0.9), "
                           "MEDIAN(amount), QUANTILE_CONT(amount, [0.1, 0.9]) FROM visits"
                           ).fetchone()
    assert all(v is not None for v in row) and len(row[3]) == 2
