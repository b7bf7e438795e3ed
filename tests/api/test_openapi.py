"""The OpenAPI document and docs/http.md cannot go stale.

Every route of the contract is in the schema with its request and response
models, examples and documented problem+json errors; every route, problem type
and `gateway serve` flag is in docs/http.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.api import create_app
from gateway.api.problems import PROBLEM_CLASSES
from gateway.cli.main import build_parser
from gateway.service import Gateway
from tests.api.live import ROOT, write_policy

CONTRACT = {("POST", "/v1/query"), ("POST", "/v1/explain"), ("GET", "/v1/budget"),
            ("GET", "/v1/schema"), ("POST", "/v1/models"), ("GET", "/v1/models"),
            ("GET", "/v1/models/{model_id}"), ("POST", "/v1/models/{model_id}/predict"),
            ("GET", "/v1/audit"), ("GET", "/healthz")}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    folder = tmp_path_factory.mktemp("openapi")
    with Gateway.open(write_policy(folder), folder / "state.db") as gw:
        yield create_app(gw).openapi()


def test_contract_routes_are_documented(spec: dict[str, Any]) -> None:
    ops = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert ops == CONTRACT


def test_errors_are_problem_json_and_bodies_have_examples(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    for path, item in spec["paths"].items():
        for method, op in item.items():
            codes = {int(c) for c in op["responses"]}
            if path != "/healthz":
                assert {401, 500} <= codes, (method, path)
                assert op["security"] == [{"HTTPBearer": []}]
            if method == "post":
                assert {413, 422} <= codes
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                body = schemas[ref.rsplit("/", 1)[1]]
                assert body["additionalProperties"] is False  # unknown fields refused
                assert body.get("examples"), ref
            for code, resp in op["responses"].items():
                if int(code) >= 400:
                    content = resp["content"]
                    assert list(content) == ["application/problem+json"], (path, code)
                    assert content["application/problem+json"]["schema"]["$ref"].endswith(
                        "/Problem")
                    assert content["application/problem+json"]["example"]["status"] == int(code)
    assert schemas["QueryResponse"].get("examples")
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail"}


def test_docs_mention_every_route_problem_type_and_flag() -> None:
    doc = (ROOT / "docs" / "http.md").read_text()
    for method, path in CONTRACT:
        assert f"{method} {path}" in doc, f"docs/http.md misses {method} {path}"
    for code in PROBLEM_CLASSES:
        if code != "gateway_error":
            assert f"`{code}`" in doc, f"docs/http.md misses problem type {code}"
    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction))
    for action in commands.choices["serve"]._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert f"`{flag}`" in doc, f"docs/http.md misses serve flag {flag}"


def test_docs_file_exists() -> None:
    assert Path(ROOT / "docs" / "http.md").is_file()
