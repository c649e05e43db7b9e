"""Schema-based fuzzing: schemathesis generates requests for every operation of the OpenAPI document
(valid and invalid ones), sends them over HTTP to the served API, and checks that it never answers
5xx and that what it answers is documented: status codes, content types and response bodies."""

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

from adapters.api.app import create_app
from adapters.registry.client import LocalRegistry
from adapters.registry.db import Database
from adapters.registry.settings import Settings
from adapters.registry.storage import LocalBlobStorage

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 25


def _document() -> dict:
    """The OpenAPI document, from an app that is never served (the served one makes the same)."""
    app = create_app(
        Settings(), registry=LocalRegistry(Database("sqlite://"), LocalBlobStorage("/nonexistent"))
    )
    return app.openapi()


schema = schemathesis.openapi.from_dict(_document())


@pytest.fixture(scope="module")
def seeded(service, adapter_dir):
    """Something for the generated requests to find besides 404s."""
    service.client().push(adapter_dir, "acme/fuzz", task="t", aliases=["prod"])
    return service


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors_and_only_documented_answers(case, seeded):
    case.call_and_validate(
        base_url=seeded.url, headers={"Authorization": f"Bearer {seeded.admin}"}, checks=CHECKS
    )
