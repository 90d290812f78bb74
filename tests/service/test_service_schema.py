"""Property-based requests generated from the published OpenAPI schema (schemathesis): no
5xx, and every response matches the schema, for valid and invalid input alike."""

from __future__ import annotations

import itertools
from pathlib import Path

import schemathesis
from conftest import TinyRun
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from bert4rec.service import create_app


def test_api_conforms_to_its_schema(tiny_run: TinyRun, tmp_path: Path) -> None:
    app = create_app(tiny_run.path, tmp_path / "events.sqlite3")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate()

        try:
            check()
        except Unsatisfiable:  # no input to make invalid (GET /health)
            assert mode is schemathesis.GenerationMode.NEGATIVE
