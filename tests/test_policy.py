"""Policy files: a wrong policy fails at load (or at open, when only the data can tell)
with a PolicyError that names the file, the key path and the fix (DESIGN §1.1)."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import Gateway
from gateway.errors import PolicyError
from gateway.policy import Policy, load_policy

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
WEB_POLICY = ROOT / "policies" / "web.yaml"


def base() -> dict[str, Any]:
    """policies/web.yaml with absolute sources."""
    data = yaml.safe_load(WEB_POLICY.read_text())
    data["tables"]["visits"]["source"] = str(SAMPLE / "visits.parquet")
    data["tables"]["countries"]["source"] = str(SAMPLE / "countries.csv")
    return data


def write(folder: Path, data: Any, name: str = "policy.yaml") -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _visits(d: dict[str, Any]) -> dict[str, Any]:
    return d["tables"]["visits"]


def _col(d: dict[str, Any], name: str) -> dict[str, Any]:
    return d["tables"]["visits"]["columns"][name]


# name -> (edit of the base policy, key path the message must name, fix it must suggest)
LOAD_ERRORS: dict[str, tuple[Callable[[dict[str, Any]], Any], str, str]] = {
    "unknown key (typo)": (
        lambda d: _visits(d).update(max_row_per_unit=5),
        "tables.visits.max_row_per_unit", "fix its spelling"),
    "unknown top-level key": (
        lambda d: d.update(budgets={}), "budgets", "fix its spelling"),
    "unknown column key": (
        lambda d: _col(d, "age").update(bound=[1, 2]),
        "tables.visits.columns.age.bound", "fix its spelling"),
    "bounds reversed": (
        lambda d: _col(d, "age").update(bounds=[90, 18]),
        "tables.visits.columns.age", "[low, high]"),
    "bounds on a text column": (
        lambda d: _col(d, "country").update(bounds=[0, 1]),
        "tables.visits.columns.country", "remove `bounds`"),
    "bounds on a bool column": (
        lambda d: _col(d, "converted").update(bounds=[0, 1]),
        "tables.visits.columns.converted", "remove `bounds`"),
    "fractional bound of an int column": (
        lambda d: _col(d, "age").update(bounds=[18.5, 90]),
        "tables.visits.columns.age", "integer"),
    "infinite bound of a float column": (
        lambda d: _col(d, "spend").update(bounds=[0, float("inf")]),
        "tables.visits.columns.spend", "finite number"),
    "malformed date bound": (
        lambda d: _col(d, "visit_date").update(bounds=["2024-13-01", "2024-12-31"]),
        "tables.visits.columns.visit_date", "YYYY-MM-DD"),
    "public_values_from names a missing table": (
        lambda d: _col(d, "country").update(public_values_from="nations.country"),
        "tables.visits.columns.country.public_values_from", "fix the name"),
    "public_values_from names a protected table": (
        lambda d: _col(d, "device").update(public_values=None, public_values_from="visits.device"),
        "tables.visits.columns.device.public_values_from", "not public"),
    "public_values_from is not table.column": (
        lambda d: _col(d, "country").update(public_values_from="countries"),
        "tables.visits.columns.country", "countries.country"),
    "public_values and public_values_from": (
        lambda d: _col(d, "country").update(public_values=["US"]),
        "tables.visits.columns.country", "not both"),
    "empty public_values": (
        lambda d: _col(d, "device").update(public_values=[]),
        "tables.visits.columns.device", "remove the key"),
    "duplicate public_values": (
        lambda d: _col(d, "device").update(public_values=["tv", "tv"]),
        "tables.visits.columns.device", "list each value once"),
    "unit column missing from the columns": (
        lambda d: _visits(d)["columns"].pop("user_id"),
        "tables.visits", "add `user_id: {type: int, role: privacy_unit}`"),
    "unit role on a column that is not the unit": (
        lambda d: _visits(d).update(privacy_unit="visit_id"),
        "tables.visits", "may have role privacy_unit"),
    "role privacy_unit without privacy_unit": (
        lambda d: _visits(d).pop("privacy_unit"),
        "tables.visits", "add privacy_unit: user_id"),
    "public values on the unit": (
        lambda d: _col(d, "user_id").update(public_values=[1, 2]),
        "tables.visits.columns.user_id", "remove them"),
    "protected table without columns": (
        lambda d: _visits(d).update(columns={}),
        "tables.visits", "add a `columns:` mapping"),
    "public table with a privacy unit": (
        lambda d: d["tables"]["countries"].update(privacy_unit="country"),
        "tables.countries", "remove one of the two"),
    "max_rows_per_unit zero": (
        lambda d: _visits(d).update(max_rows_per_unit=0),
        "tables.visits.max_rows_per_unit", "larger number"),
    "unknown column type": (
        lambda d: _col(d, "age").update(type="integer"),
        "tables.visits.columns.age.type", "allowed values"),
    "unknown engine": (
        lambda d: d.update(engine={"kind": "oracle"}), "engine.kind", "allowed values"),
    "negative budget": (
        lambda d: d["budget"]["dataset"].update(epsilon=-1),
        "budget.dataset.epsilon", "positive number"),
    "missing budget": (lambda d: d.pop("budget"), "budget", "add it"),
    "bad dataset name": (
        lambda d: d.update(dataset="web data!"), "dataset", "letters, digits"),
    "gaussian default with delta 0": (
        lambda d: d.update(defaults={"epsilon": 0.5, "delta": 0.0, "mechanism": "gaussian"}),
        "defaults", "delta > 0"),
    "empty tables": (lambda d: d.update(tables={}), "tables", "declare at least one"),
}


def check_message(err: PolicyError, path: Path, key_path: str, fix: str) -> None:
    msg = err.message
    assert str(path) in msg or path.name in msg, f"file not named: {msg}"
    assert key_path in msg, f"key path {key_path!r} not named: {msg}"
    assert fix.lower() in msg.lower(), f"fix {fix!r} not suggested: {msg}"
    assert "Traceback" not in msg and "pydantic" not in msg.lower()
    assert err.http_status == 500 and err.code == "policy_error"


@pytest.mark.parametrize("name", list(LOAD_ERRORS))
def test_wrong_policy_fails_at_load(tmp_path: Path, name: str) -> None:
    edit, key_path, fix = LOAD_ERRORS[name]
    data = base()
    edit(data)
    path = write(tmp_path, data)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    check_message(err.value, path, key_path, fix)
    with pytest.raises(PolicyError):  # and Gateway.open refuses it the same way
        Gateway.open(path, state=tmp_path / "state.db")


# Mistakes only the data can reveal: they fail when the gateway opens the sources.
OPEN_ERRORS: dict[str, tuple[Callable[[dict[str, Any]], Any], str, str]] = {
    "public_values_from names a missing column": (
        lambda d: _col(d, "country").update(public_values_from="countries.code"),
        "tables.visits.columns.country.public_values_from", "fix the reference"),
    "declared column missing from the source": (
        lambda d: _visits(d)["columns"].update(browser={"type": "text"}),
        "tables.visits.columns.browser", "fix the name or remove the column"),
    "declared type incompatible with the data (text as int)": (
        lambda d: _visits(d)["columns"].update(country={"type": "int"}),
        "tables.visits.columns.country.type", "declare type: text"),
    "declared type incompatible with the data (int as date)": (
        lambda d: _col(d, "age").update(type="date", bounds=None),
        "tables.visits.columns.age.type", "declare type: int"),
    "missing source file": (
        lambda d: _visits(d).update(source="/nonexistent/visits.parquet"),
        "tables.visits.source", "fix the path"),
    "missing relative source file": (
        lambda d: d["tables"]["countries"].update(source="nope/countries.csv"),
        "tables.countries.source", "fix the path"),
}


@pytest.mark.parametrize("name", list(OPEN_ERRORS))
def test_wrong_policy_fails_at_open(tmp_path: Path, name: str) -> None:
    edit, key_path, fix = OPEN_ERRORS[name]
    data = base()
    edit(data)
    path = write(tmp_path, data)
    with pytest.raises(PolicyError) as err:
        Gateway.open(path, state=tmp_path / "state.db")
    check_message(err.value, path, key_path, fix)


def test_source_with_wrong_content_fails_at_open(tmp_path: Path) -> None:
    bogus = tmp_path / "visits.parquet"
    bogus.write_text("this is not parquet")
    data = base()
    _visits(data)["source"] = str(bogus)
    path = write(tmp_path, data)
    with pytest.raises(PolicyError) as err:
        Gateway.open(path, state=tmp_path / "state.db")
    check_message(err.value, path, "tables.visits.source", "valid file")


@pytest.mark.parametrize("text,fix", [
    ("dataset: web\ntables: [\n  - a: b\n  c", "fix the syntax"),
    ("dataset: web\n\ttables: {}\n", "fix the syntax"),
    ("- a\n- b\n", "mapping"),
    ("", "mapping"),
    ("just a string", "mapping"),
])
def test_invalid_yaml(tmp_path: Path, text: str, fix: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(path) in err.value.message and fix in err.value.message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "dataset: web\ntables:\n  visits: {source: [\nbudget: 1\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert "line" in err.value.message


def test_missing_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(path) in err.value.message and "--policy" in err.value.message
    with pytest.raises(PolicyError):
        Gateway.open(path, state=tmp_path / "state.db")


def test_several_mistakes_are_all_reported(tmp_path: Path) -> None:
    data = base()
    _visits(data)["max_row_per_unit"] = 5
    _col(data, "age")["bounds"] = [90, 18]
    path = write(tmp_path, data)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert "max_row_per_unit" in err.value.message
    assert "tables.visits.columns.age" in err.value.message


# -- what loads ---------------------------------------------------------------------------

def test_sample_policy_loads(tmp_path: Path) -> None:
    pol = load_policy(WEB_POLICY)
    assert isinstance(pol, Policy)
    assert pol.dataset == "web" and set(pol.tables) == {"visits", "countries"}
    visits = pol.tables["visits"]
    assert visits.privacy_unit == "user_id" and visits.max_rows_per_unit == 20
    assert pol.tables["countries"].public
    assert pol.path == WEB_POLICY.resolve()
    assert pol.resolve_path(visits.source) == (SAMPLE / "visits.parquet").resolve()
    with Gateway.open(WEB_POLICY, state=tmp_path / "state.db") as gw:
        schema = gw.schema()
        assert schema["tables"]["visits"]["privacy_unit"] == "user_id"
        r = gw.query("SELECT COUNT(*) AS n FROM visits", analyst="alice", epsilon=0.1)
        assert r.epsilon_spent == pytest.approx(0.1)


def test_relative_sources_resolve_against_the_policy_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "conf" / "policies"
    data_dir = tmp_path / "conf" / "data"
    folder.mkdir(parents=True)
    data_dir.mkdir()
    shutil.copy(SAMPLE / "visits.parquet", data_dir / "v.parquet")
    shutil.copy(SAMPLE / "countries.csv", folder / "countries.csv")
    data = base()
    _visits(data)["source"] = "../data/v.parquet"
    data["tables"]["countries"]["source"] = "countries.csv"
    path = write(folder, data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    pol = load_policy(path)
    assert pol.resolve_path("../data/v.parquet") == (data_dir / "v.parquet").resolve()
    with Gateway.open(path, state=tmp_path / "state.db") as gw:
        r = gw.query("SELECT region, COUNT(*) AS n FROM visits JOIN countries USING (country) "
                     "GROUP BY region", analyst="alice", epsilon=1.0)
        assert len(r.rows) == 6
    # Opened through a relative path of the policy itself, too.
    monkeypatch.chdir(folder)
    with Gateway.open("policy.yaml", state=tmp_path / "state2.db") as gw:
        assert gw.query("SELECT COUNT(*) AS n FROM visits", analyst="bob", epsilon=1.0).rows


def test_policy_version_follows_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, base())
    v1 = load_policy(path).version
    assert load_policy(path).version == v1  # stable
    same_elsewhere = write(tmp_path, base(), name="copy.yaml")
    assert load_policy(same_elsewhere).version == v1  # a function of the content
    changed = base()
    _visits(changed)["max_rows_per_unit"] = 10
    write(tmp_path, changed)
    v2 = load_policy(path).version
    assert v2 != v1
    path.write_text(path.read_text() + "\n# a comment\n")
    assert load_policy(path).version not in (v1, v2)


def test_changed_policy_does_not_reuse_cached_answers(tmp_path: Path) -> None:
    """Answers are cached per policy version: after the bounds change, the same SQL is a
    new release (charged), not the old answer."""
    path = write(tmp_path, base())
    state = tmp_path / "state.db"
    sql = "SELECT SUM(spend) AS s FROM visits"
    with Gateway.open(path, state=state) as gw:
        first = gw.query(sql, analyst="alice", epsilon=0.5)
        assert not first.cached
        assert gw.query(sql, analyst="alice", epsilon=0.5).cached
    changed = base()
    _col(changed, "spend")["bounds"] = [0, 100]
    write(tmp_path, changed)
    with Gateway.open(path, state=state) as gw:
        again = gw.query(sql, analyst="alice", epsilon=0.5)
        assert not again.cached and again.epsilon_spent == pytest.approx(0.5)


def test_engine_and_defaults_may_be_omitted(tmp_path: Path) -> None:
    data = base()
    for key in ("engine", "defaults", "limits"):
        data.pop(key, None)
    pol = load_policy(write(tmp_path, data))
    assert pol.model.engine.kind == "duckdb"
    assert pol.model.defaults.epsilon == 0.5 and pol.model.defaults.delta == 0.0
    assert pol.model.defaults.mechanism == "laplace"
    assert pol.model.limits.max_epsilon_per_query is None


def test_loaded_policy_is_immutable(tmp_path: Path) -> None:
    pol = load_policy(write(tmp_path, base()))
    with pytest.raises((TypeError, ValueError)):
        pol.tables["visits"].max_rows_per_unit = 10_000  # type: ignore[misc]


def test_policy_errors_do_not_depend_on_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = base()
    _col(data, "age")["bounds"] = [90, 18]
    path = write(tmp_path, data)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError) as err:
        load_policy(os.path.basename(path))
    assert "policy.yaml" in err.value.message


# -- duplicate and case-insensitive names ----------------------------------------------------

def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    text = WEB_POLICY.read_text().replace("../sample_data/", str(SAMPLE) + "/")
    text = text.replace("max_rows_per_unit: 20",
                        "max_rows_per_unit: 20\n    max_rows_per_unit: 20000")
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert "max_rows_per_unit" in err.value.message


def test_columns_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    data = base()
    _visits(data)["columns"]["SPEND"] = {"type": "float", "bounds": [0, 1e9]}
    path = write(tmp_path, data)
    with pytest.raises(PolicyError) as err:
        Gateway.open(path, state=tmp_path / "state.db")
    assert "SPEND" in err.value.message


def test_tables_differing_only_in_case_are_named(tmp_path: Path) -> None:
    data = base()
    data["tables"]["Visits"] = copy.deepcopy(data["tables"]["countries"])
    path = write(tmp_path, data)
    with pytest.raises(PolicyError) as err:
        Gateway.open(path, state=tmp_path / "state.db")
    assert "Visits" in err.value.message and "column types" not in err.value.message


def test_yaml_syntax_error_shows_the_line_and_its_neighbours(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dataset: x\ntables:\n  t: {source: a.csv\n  bad: [\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    msg = str(err.value)
    assert "line 4" in msg and "fix the syntax" in msg
    assert ">    4 |   bad: [" in msg and "     3 |   t: {source: a.csv" in msg
