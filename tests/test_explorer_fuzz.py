"""The Circuit Explorer's API fuzzed with schemathesis from its own /openapi.json: whatever the body, no server error
(bad input is a 4xx with a one-line ``detail``), and every answer is one the schema documents (its status code, its
content type and its body: refusals are ``{"detail": str}``)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from attnsae.serve.app import create_app
from conftest import random_sae


@pytest.fixture(scope="module")
def api(ref_model):
    saes = [random_sae(ref_model, 0, d_sae=64, seed=3, architecture="topk", k=8), random_sae(ref_model, 1, d_sae=64)]
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(ref_model, saes, max_sessions=2),
                                            headers={"Host": "127.0.0.1"})  # the explorer serves only local names
    schema.config.generation.update(modes=list(schemathesis.GenerationMode))  # valid bodies and invalid ones
    return schema


schema = schemathesis.pytest.from_fixture("api")
BASE = "http://127.0.0.1"
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_never_answers_with_a_server_error_nor_off_its_schema(case):
    response = case.call(base_url=BASE)
    assert response.status_code < 500, (case.path, case.body, response.text)
    case.validate_response(response, checks=CONFORMANCE)
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail, detail


def test_the_fuzzer_reaches_both_answers_and_refusals(api):
    """The generated bodies are worth fuzzing with: drawn the same way, valid ones get answers (200) and invalid ones
    refusals (400 from the server's checks, 422 from the schema), so the test above exercises both."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable

    statuses: set[int] = set()
    for result in api.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                      database=None)
            def call(case):
                statuses.add(case.call(base_url=BASE).status_code)

            try:
                call()
            except Unsatisfiable:  # an operation with nothing to make invalid (a GET without parameters)
                assert mode == schemathesis.GenerationMode.NEGATIVE

    assert {200, 400, 422} <= statuses and max(statuses) < 500, sorted(statuses)
