"""Every HTTP endpoint in the gateway's OpenAPI spec (`/openapi.json` on a running stack),
with schemathesis: cases that fit the spec and cases that do not, with the right API key,
a wrong one or none. No 5xx, an answer within 5 s, and a request without the key never
gets past the key check. New endpoints (the API issue's) are picked up from the spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok

from tests.fuzz.conftest import API_KEY
from tests.fuzz.harness import Count, Finding, assert_clean, batch_settings, pytest_timeout_s, run_target
from voxline.devstack import DevStack

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(pytest_timeout_s())]

KEYS = {"valid": f"Bearer {API_KEY}", "wrong": "Bearer not-the-key", "none": None}


def describe(case: Case[Any], key: str) -> dict[str, Any]:
    return {
        "method": case.method,
        "path": case.formatted_path,
        "query": case.query,
        "headers": case.headers,
        "body": case.body if not isinstance(case.body, bytes) else case.body[:200],
        "key": key,
    }


def api_batch(count: Count, examples: int, base: str, cases: st.SearchStrategy[Case[Any]]) -> Callable[[], None]:
    session = requests.Session()

    @batch_settings(examples)
    @given(cases, st.sampled_from(["valid"] * 6 + ["wrong", "none"]))
    def prop(case: Case[Any], key: str) -> None:
        with count.trying(describe(case, key)):
            headers = {"Authorization": KEYS[key]} if KEYS[key] else {}
            response = case.call(base_url=base, session=session, headers=headers, timeout=5)  # 5 s: the hang bound
            where = f"{case.method} {case.path}"
            try:
                case.validate_response(response, checks=[not_a_server_error], headers=headers)
            except FailureGroup as exc:
                raise Finding(f"{response.status_code} from {where}", str(exc)[:600]) from None
            if key != "valid" and case.path.startswith("/v1/") and response.status_code != 401:
                raise Finding(f"{where} answered {response.status_code} without the key", response.text[:300])

    return prop


def test_fuzz_http_api(fuzz_stack: DevStack) -> None:
    base = fuzz_stack.gateway_url
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=10)
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the gateway's spec has an operation schemathesis cannot read: {result}"
        operations.append(result.ok())
    assert any(op.path.startswith("/v1/") for op in operations), [op.path for op in operations]
    cases = schema.as_strategy(GenerationMode.POSITIVE) | schema.as_strategy(GenerationMode.NEGATIVE)
    count = run_target("http api (openapi)", lambda c, n: api_batch(c, n, base, cases), 200)
    assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
    assert fuzz_stack.processes["gateway"].alive
    assert_clean(count)
