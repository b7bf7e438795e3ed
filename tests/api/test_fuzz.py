"""Fuzz the API from its own OpenAPI schema (schemathesis), against a real server.

No input may cause a 5xx, every error must be problem+json, and every response
must match the documented status codes, content types and schemas.  Bounded:
a few dozen examples per operation, no shrinking past a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.checks import positive_data_acceptance  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402

from tests.api.conftest import Live  # noqa: E402
from tests.api.live import PROBLEM_MEMBERS, LiveServer, add_analysts, write_policy  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("fuzz")
    policy = write_policy(folder, dataset=(1e9, 1e-3), per_analyst=(1e6, 1e-4))
    state = folder / "state.db"
    keys = add_analysts(policy, state, {"fuzzer": {"admin": True, "epsilon": 1e6,
                                                   "delta": 1e-4}})
    srv = LiveServer(policy, state, args=["--request-timeout", "20"]).start()
    try:
        yield Live(srv, keys, policy, state)
    finally:
        srv.stop()


OPERATIONS = [
    ("GET", "/healthz"), ("POST", "/v1/query"), ("POST", "/v1/explain"), ("GET", "/v1/budget"),
    ("GET", "/v1/schema"), ("GET", "/v1/audit"), ("POST", "/v1/models"), ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"), ("POST", "/v1/models/{model_id}/predict"),
]


@pytest.fixture(scope="module")
def api_schema(fuzz_live: Live) -> Any:
    schema = schemathesis.openapi.from_url(fuzz_live.url + "/openapi.json")
    # A schema-violating body may be refused for its size first: 413 is a rejection too.
    schema.config.checks.negative_data_rejection.expected_statuses.append("413")
    return schema


def problem_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error answer is RFC 9457 problem+json with the four members."""
    if response.status_code < 400:
        return None
    media = response.headers.get("content-type", [""])
    media = media[0] if isinstance(media, list) else media
    assert media.split(";")[0] == "application/problem+json", (response.status_code, media)
    body = response.json()
    assert set(body) >= PROBLEM_MEMBERS, body
    assert body["status"] == response.status_code
    assert "Traceback" not in response.text
    return None


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    documented = {(m.upper(), p) for p, ops in api_schema.raw_schema["paths"].items()
                  for m in ops}
    assert documented == set(OPERATIONS)


# Schema-violating data for the bodies.  (Negated query parameters are not: the fuzzer
# counts e.g. ``until=[0.0]`` as invalid although it is sent as ``until=0.0``;
# test_errors.py checks the 422s of the audit filters by hand.)
NEGATABLE = [op for op in OPERATIONS if op[0] == "POST"]
CASES = [(m, p, "positive") for m, p in OPERATIONS] + [(m, p, "negative") for m, p in NEGATABLE]


@pytest.mark.parametrize(("method", "path", "mode"), CASES,
                         ids=[f"{m} {p} {mode}" for m, p, mode in CASES])
def test_fuzz(api_schema: Any, fuzz_live: Live, method: str, path: str, mode: str) -> None:
    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=GenerationMode(mode))
    auth = {"Authorization": f"Bearer {fuzz_live.keys['fuzzer']}"}

    @given(case=strategy)
    @settings(max_examples=25, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        # Most schema-valid SQL cannot be answered with DP: its 400 is right, so the
        # check that schema-valid data is accepted does not apply to this API.
        case.call_and_validate(headers=auth, additional_checks=[problem_json],
                               excluded_checks=[positive_data_acceptance])

    run()
