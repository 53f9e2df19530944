"""A property-based fuzz run over the served OpenAPI schema (schemathesis, on hypothesis).

Schemathesis reads ``/openapi.json`` from a live server and generates requests, valid
(positive) and invalid (negative), for every operation. Each answer must be documented (status,
content type, body and headers conform to the schema), invalid requests must be refused with a
4xx, and nothing may be a 500. The run is bounded (``MAX_EXAMPLES`` per operation and mode).

Schemathesis's own pytest integration does not load under this pytest version, so the test
drives hypothesis itself over the strategies schemathesis builds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from dagtask import Engine, TemplateBuilder
from tests.api.support import PASSWORD, ApiServer, add_users, serve

MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A server whose database holds hosts 1-3 and two tasks, one SUCCESSFUL, one FAILED."""
    folder = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{folder / 'fuzz.db'}"
    with Engine(url, workers=1, poll_interval=0.05) as setup:
        add_users(setup)
        for i in range(3):
            setup.hosts.add(name=f"h{i}", inner_ip="127.0.0.1", agent_home=str(folder / f"{i}"))
        t = TemplateBuilder("fuzz target")
        t.add("a", "tests.handlers.record")
        t.add("b", "tests.handlers.record", after=["a"])
        template = t.build()
        setup.run(template, timeout=30)
        setup.run(template, args={"fail": "b"}, timeout=30)
    # No workers while fuzzing: the host operations it starts must not start agent processes.
    with Engine(url, workers=0) as engine, serve(engine) as api:
        yield api


def operations(api: ApiServer) -> list[Any]:
    # Configured (rather than passed per call) so schemathesis knows the credentials: a negative
    # case that leaves the Authorization header out must then be refused, and is.
    config = schemathesis.config.SchemathesisConfig.from_dict(
        {"auth": {"basic": {"username": "admin", "password": PASSWORD}}}
    )
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json", config=config)
    return [result.ok() for result in schema.get_all_operations()]


def test_the_schema_lists_every_endpoint(fuzzed_api: ApiServer) -> None:
    found = {(op.method.upper(), op.path) for op in operations(fuzzed_api)}
    tasks = "/api/v2/tasks/instances"
    definitions = "/api/v2/tasks/definitions"
    assert found == {
        ("GET", tasks),
        ("GET", tasks + "/{id}"),
        ("POST", tasks + "/{id}/retry"),
        ("POST", tasks + "/{id}/rollback"),
        ("GET", tasks + "/{id}/subtasks/{subtask_id}/log"),
        ("GET", tasks + "/{id}/log/download"),
        ("POST", tasks + "/{id}/subtasks/{subtask_id}/retry"),
        ("POST", tasks + "/{id}/subtasks/{subtask_id}/skip"),
        ("POST", tasks + "/{id}/subtasks/{subtask_id}/cancel"),
        ("POST", "/compute/hosts/{hostId}/agent/stop"),
        ("POST", "/compute/hosts/{hostId}/agent/restart"),
        ("POST", "/compute/hosts/batchStopAgents"),
        ("POST", "/compute/hosts/batchRestartAgents"),
        ("GET", definitions),
        ("POST", definitions),
        ("GET", definitions + "/{id}"),
        ("DELETE", definitions + "/{id}"),
        ("POST", definitions + "/{id}/enable"),
        ("POST", definitions + "/{id}/disable"),
        ("POST", definitions + "/{id}/run"),
    }


SEMANTIC_400 = {("POST", "/api/v2/tasks/definitions")}
"""Operations whose schema-valid bodies may still be refused with 400: a cron rule, a time zone
or a template name is checked against its grammar or the registry, which no schema expresses."""


def fuzz(operation: Any, mode: Any) -> set[int]:
    """Run the bounded hypothesis search on one operation; the statuses it saw."""
    statuses: set[int] = set()
    semantic = (operation.method.upper(), operation.path) in SEMANTIC_400
    excluded = [schemathesis.checks.positive_data_acceptance] if semantic else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        statuses.add(case.call_and_validate(excluded_checks=excluded).status_code)

    check()
    return statuses


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_answer_is_a_500_or_outside_the_schema(fuzzed_api: ApiServer, mode: str) -> None:
    generation = schemathesis.GenerationMode(mode)
    seen = {f"{op.method.upper()} {op.path}": fuzz(op, generation) for op in operations(fuzzed_api)}
    # The run was authenticated: valid requests got in (the list always answers 200).
    assert 200 in seen["GET /api/v2/tasks/instances"], seen
    if mode == "positive":
        assert not any(401 in found or 403 in found for found in seen.values()), seen
    else:
        assert all(found & {400, 401} for found in seen.values()), seen


def test_the_schema_documents_auth_and_the_envelopes(fuzzed_api: ApiServer) -> None:
    schema = httpx.get(f"{fuzzed_api.url}/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBasic"] == {
        "type": "http",
        "scheme": "basic",
        "description": "A dagtask user.",
    }
    error_ref = "#/components/schemas/ErrorEnvelope"
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            where = f"{method.upper()} {path}"
            assert operation["security"] == [{"HTTPBasic": []}], where
            responses = operation["responses"]
            assert "422" not in responses, where  # FastAPI's default; never sent
            for status in ("400", "401", "403", "429", "500", "default"):
                content = responses[status]["content"]["application/json"]["schema"]
                assert content == {"$ref": error_ref}, where
            if path.endswith("/log/download"):  # a file to save, not an envelope
                ok = responses["200"]["content"]["application/zip"]["schema"]
                assert ok == {"type": "string", "format": "binary"}, where
            else:
                ok = responses["200"]["content"]["application/json"]["schema"]["$ref"]
                assert ok.endswith("Envelope"), where
            assert "RateLimit-Remaining" in responses["200"]["headers"], where
    envelope = schema["components"]["schemas"]["TaskEnvelope"]["properties"]
    assert set(envelope) == {
        "data",
        "duration",
        "server",
        "status",
        "successful",
        "timestamp",
        "traceId",
    }
    batch = schema["components"]["schemas"]["BatchHostsRequest"]
    assert set(batch["properties"]) == {"hostIds", "hostids"}
