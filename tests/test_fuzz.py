"""Requests generated from the OpenAPI document, valid and invalid, on both backends: every
answer conforms to the document under all of schemathesis's checks, and none is a 5xx. A fixed
seed and example count make every run send the same requests.

OpenAPI 3.0 cannot state the rules that span fields or every string: start_date not after
end_date, fill=zero over at most so many periods, a batch with at least one valid event (items
are declared as any value, since each is checked alone), and no U+0000 in any string, keys
included. A request valid by the document that breaks one of these gets exactly that 400, and
a batch past maxItems the contract's 413; any other refusal still fails the checks.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from analytics.api.openapi import build_spec
from analytics.schemas import DATES_OUT_OF_ORDER

pytestmark = pytest.mark.slow

EXAMPLES = 25


def takes_constrained_input(operation: dict) -> bool:
    """Whether a request can break the document: a body, or a parameter besides a path's
    user_id (any string is a user_id, so no invalid one can be made)."""
    return bool(operation.get("requestBody")) or any(
        parameter.get("in") != "path" for parameter in operation.get("parameters", [])
    )


# The pages for people (HTML and the tracker's script) take no input; tests/test_pages.py
# checks them. (Served from files, which the in-process client here would leave open.)
PAGES = ("/dashboard", "/docs", "/analytics.js")
# Each operation, and each way to generate its requests: invalid ones only where it takes input.
CASES = [
    (path, method.upper(), mode)
    for path, operations in build_spec().to_dict()["paths"].items()
    if path not in PAGES
    for method, operation in operations.items()
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or takes_constrained_input(operation)
]
ALL_REJECTED = "Every event in the batch was rejected; nothing was stored"


def excused(path: str, mode: GenerationMode, response) -> list:
    """The checks that the answer may fail for one of the rules the document cannot state."""
    try:
        body = response.json()
    except ValueError:  # an export's NDJSON or CSV
        body = None
    message = body.get("message", "") if isinstance(body, dict) else ""
    if (
        mode is GenerationMode.POSITIVE
        and response.status_code == 400
        and (
            message.endswith("must not contain NUL (U+0000) characters")
            or (
                path in ("/metrics", "/sessions", "/active-users", "/events")
                and (
                    message == DATES_OUT_OF_ORDER
                    or message.startswith("fill=zero would list more than")
                )
            )
            or (path == "/track/batch" and message == ALL_REJECTED)
        )
    ):
        return [positive_data_acceptance]
    if (
        mode is GenerationMode.NEGATIVE
        and path == "/track/batch"
        and response.status_code == 413
        and message.startswith("Too many events")
    ):
        return [negative_data_rejection]
    return []


@pytest.mark.parametrize(
    "path, method, mode", CASES, ids=[f"{m} {p} {mode.value}" for p, m, mode in CASES]
)
def test_every_answer_conforms_to_the_document(app, path, method, mode):
    operation = schemathesis.openapi.from_wsgi("/openapi.json", app)[path][method]

    @seed(20261202)
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def conforms(case):
        response = case.call()
        case.validate_response(response, excluded_checks=excused(path, mode, response))

    conforms()
