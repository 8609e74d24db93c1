"""Schemathesis fuzzing of the published OpenAPI spec: no 5xx, documented statuses, responses match the schemas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from pipelines.serving import ServingModel
from pipelines.serving.app import create_app
from pipelines.serving.events import EventLog
from pipelines.serving.settings import Settings
from tests.serving.conftest import Project

TOKEN = "fuzz-token"
# The spec needs no model: the app is built at import, the model and a temporary event log are put in by a fixture.
APP = create_app(Settings(root=Path("/nonexistent"), admin_token=TOKEN, reload_poll_s=0, max_body_bytes=65_536))
# A body over the configured size limit gets 413 before it is parsed, whether or not it is schema-valid (a batch of
# 1000 events with long ids is valid yet larger than this app's limit): 413 is documented, and allowed both ways.
CONFIG = schemathesis.Config.from_dict({"checks": {
    "negative_data_rejection": {"expected-statuses": [
        "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]},
    "positive_data_acceptance": {"expected-statuses": ["2xx", "401", "403", "404", "409", "413", "429"]},
}})
schema = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)


@pytest.fixture(scope="module", autouse=True)
def serving(project: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    state = APP.state.serving
    state.model = ServingModel.load(project.model_dir, version="1")
    state.events = EventLog(tmp_path_factory.mktemp("fuzz-events"))
    yield
    state.model = None


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_api_conforms_to_its_spec(case: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})
