"""The Circuit Explorer's API fuzzed with schemathesis from its own /openapi.json: whatever the body, no server error
(bad input is a 4xx with a one-line ``detail``)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from attnsae.serve.app import create_app
from conftest import random_sae


@pytest.fixture(scope="module")
def api(ref_model):
    saes = [random_sae(ref_model, 0, d_sae=64, seed=3, architecture="topk", k=8), random_sae(ref_model, 1, d_sae=64)]
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(ref_model, saes, max_sessions=2))
    schema.config.generation.update(modes=list(schemathesis.GenerationMode))  # valid bodies and invalid ones
    return schema


schema = schemathesis.pytest.from_fixture("api")
STATUSES: list[int] = []


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_never_answers_with_a_server_error(case):
    response = case.call()
    STATUSES.append(response.status_code)
    assert response.status_code < 500, (case.path, case.body, response.text)
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail, detail


def test_the_fuzzing_reached_both_answers_and_refusals():
    """Runs after the fuzz test in this file: it must have seen successes and client errors, not one kind only."""
    assert {200, 422} <= set(STATUSES) and any(s == 400 for s in STATUSES), sorted(set(STATUSES))
