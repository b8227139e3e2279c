"""Schemathesis over the served OpenAPI document: every operation, with generated (valid and
invalid) input, answers no 5xx and only what the document says, in the shape it says."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# Per operation: about fifteen operations, so that the whole run stays well under a minute.
MAX_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip


@pytest.fixture
def served(make_gateway):
    # No workers: the generated jobs only need to be accepted (or refused), not run; the
    # sandbox answers the character routes. No request rate limit: the fuzz is the only client.
    gw = make_gateway(workers=0, env={"VIDEOQUEUE_API_RATE_PER_S": "100000",
                                      "VIDEOQUEUE_API_BURST": "100000"})  # fmt: skip
    return gw, gw.key("fuzz")


@pytest.fixture
def api_schema(served):
    gw, _ = served
    return schemathesis.openapi.from_url(f"{gw.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_no_5xx_and_only_what_its_schema_says(case, served):
    gw, key = served
    case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)
    assert "Traceback" not in gw.logfile.read_text()
