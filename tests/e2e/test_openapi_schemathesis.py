"""Property-based run of every documented operation: no 5xx, responses match the schemas."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance
from schemathesis.specs.openapi.checks import response_headers_conformance
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.specs.openapi.checks import status_code_conformance

from tests.factories import make_markets
from tests.factories import make_position
from tests.factories import make_user

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def seeded(db):
    user = make_user()
    markets = make_markets(15, creator=user, status=lambda i: ("active", "closed", "resolved")[i % 3])
    make_position(markets[0], user)
    return markets


def test_every_operation_conforms(app, seeded):
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5
    for operation in operations:

        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(case=operation.as_strategy())
        def run(case):
            case.call_and_validate(checks=CHECKS)

        run()


def test_known_ids_conform(app, seeded, client):
    """Random ids are all 404s; check real ones too, with every projection."""
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operation = schema["/api/markets/{market_id}"]["GET"]
    for fields in (None, "id,name", "volume"):
        query = {"fields": fields} if fields else {}
        case = operation.Case(path_parameters={"market_id": seeded[0].id}, query=query)
        response = case.call_and_validate(checks=CHECKS)
        assert response.status_code == 200
