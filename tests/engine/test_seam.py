"""The engine seam: a dialect must express every guard the plan relies on, or the
tree is refused before it is rendered; the policy accepts only engines that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlglot
import yaml

from gateway import Gateway
from gateway.engine.base import CannotExpress, check_expressible
from gateway.engine.duckdb import DuckDBExecutor
from gateway.errors import PolicyError
from tests.support import web_policy

GUARDED = "SELECT TRY(a / b) AS x, TRY_CAST(c AS INT) AS y FROM t WHERE ISNAN(d)"


@pytest.mark.parametrize("missing", ["guard", "try_cast", "isnan"])
def test_a_dialect_without_a_feature_cannot_render_what_needs_it(missing: str) -> None:
    tree = sqlglot.parse_one(GUARDED, dialect="duckdb")
    check_expressible(tree, DuckDBExecutor.features)
    with pytest.raises(CannotExpress, match=missing):
        check_expressible(tree, DuckDBExecutor.features - {missing})


def test_why_the_check_exists() -> None:
    """sqlglot renders the guards away for other dialects, silently."""
    tree = sqlglot.parse_one(GUARDED, dialect="duckdb")
    assert "TRY_CAST" not in tree.sql(dialect="postgres")
    assert "TRY(" not in tree.sql(dialect="spark").replace("TRY_CAST", "")


def test_every_rewritten_query_is_expressible_in_its_engine(tmp_path: Path) -> None:
    with Gateway.open(web_policy(tmp_path), state=tmp_path / "s.db") as gw:
        for sql in ("SELECT country, COUNT(*) FROM visits GROUP BY country",
                    "SELECT AVG(LEAST(duration_s / 60, 30)) FROM visits WHERE age + 1 > 30",
                    "SELECT COUNT(*) FROM visits a JOIN visits b ON a.user_id = b.user_id"):
            tree = gw.prepare(sql, 1.0, 0.0, "laplace").tree
            assert tree is not None
            check_expressible(tree, gw.executor.features)


@pytest.mark.parametrize("kind", ["postgres", "spark"])
def test_the_policy_refuses_engines_that_do_not_exist_yet(tmp_path: Path, kind: str) -> None:
    path = web_policy(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["engine"] = {"kind": kind, "dsn": "postgresql://x/y"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PolicyError, match="not available"):
        Gateway.open(path, state=tmp_path / "s.db")
