"""The service against its own OpenAPI document: Schemathesis generates valid and invalid requests
for every operation (bounded and derandomised, so a run here is the run in CI) and checks each
answer — no server error, every status documented, every body as its schema says, headers such as
``Allow`` right. Left out: "positive data acceptance", which expects every schema-valid request to
succeed, and no schema can say which bytes are an image or which text a valid program."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from app.main import create_app
from app.settings import Settings

APP = create_app(Settings(packs="core", redis_url=None))
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(modes=list(GenerationMode))
schema.config.checks.update(excluded_check_names=["positive_data_acceptance"])


@pytest.fixture(scope="module", autouse=True)
def served() -> Iterator[None]:
    # The lifespan runs once for every generated request: the service stays up between them.
    with TestClient(APP) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.02)
        yield


@schema.parametrize()
@settings(max_examples=80, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_to_its_document(case: schemathesis.Case) -> None:
    case.call_and_validate()
