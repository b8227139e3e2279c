"""Schemathesis over the served OpenAPI document: every operation, with generated input that
fits the document and input that does not, answers no 5xx and only what the document says,
in the shape it says."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

# Examples per operation and mode: about a dozen operations, so that the whole run stays well
# under a minute.
MAX_EXAMPLES = 20
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip


def test_every_operation_answers_no_5xx_and_only_what_its_schema_says(make_gateway):
    # No workers: the generated jobs only need to be accepted (or refused), not run; the
    # sandbox answers the character routes. No request rate limit: the fuzz is the only client.
    gw = make_gateway(workers=0, env={"VIDEOQUEUE_API_RATE_PER_S": "100000",
                                      "VIDEOQUEUE_API_BURST": "100000"})  # fmt: skip
    headers = {"Authorization": f"Bearer {gw.key('fuzz')}"}
    schema = schemathesis.openapi.from_url(f"{gw.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def answers_as_documented(case):
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                answers_as_documented()
            except Unsatisfiable:
                # An operation that takes no input (/healthz) has nothing to break.
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert "Traceback" not in gw.logfile.read_text()
