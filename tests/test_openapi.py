"""`/openapi.json` and `/docs`: the document describes every route, and the
running service keeps to it (schemathesis, against the real stack)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.stack import Stack, Tenant

# The edge accepts any JSON object (202) and leaves fields to the worker, and a
# well-formed cursor may still name nothing (422): so neither "negative data is
# rejected" nor "positive data is accepted" holds by design. Everything else does.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "ignored_auth",
)


def schemathesis(
    stack: Stack, tenant: Tenant, cwd: Path, checks: tuple[str, ...], *options: str
) -> subprocess.CompletedProcess[str]:
    """Run schemathesis's command line against the stack's own document."""
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            stack.url + "/openapi.json",
            "--checks",
            ",".join(checks),
            "--header",
            f"Authorization: Bearer {tenant.api_key}",
            *options,
            "--seed",
            "1",
            "--request-timeout",
            "90",
            "--generation-database",
            "none",
            "--no-color",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=280,
    )


@pytest.fixture(scope="module")
def document(stack: Stack) -> dict[str, Any]:
    response = requests.get(stack.url + "/openapi.json", timeout=30)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_the_service_keeps_to_its_document(guarded_deployment: Stack, tmp_path: Path) -> None:
    """Schemathesis's examples, coverage and fuzzing phases, positive and negative
    data, a few examples an operation: no 5xx and every answer as documented.
    The deployment refuses private callback URLs, so fuzzed ones cost it little."""
    tenant = guarded_deployment.new_tenant()
    run = schemathesis(
        guarded_deployment,
        tenant,
        tmp_path,
        CHECKS,
        "--max-examples",
        "4",
        "--phases",
        "examples,coverage,fuzzing",
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert " 0 passed" not in run.stdout


def test_document_is_openapi_3_1_with_every_route_of_the_app(document: dict[str, Any]) -> None:
    from api.app import create_app

    assert document["openapi"].startswith("3.1")
    app = create_app()
    routes = {
        (method, _openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
        and not rule.rule.startswith(("/static", "/docs/", "/console"))
    }
    documented = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert routes == documented


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def test_schemas_are_the_code_models(document: dict[str, Any]) -> None:
    from worker.domain.schema import Assistant, AssistantCreate

    schemas = document["components"]["schemas"]
    create = schemas["AssistantCreate"]
    assert create["additionalProperties"] is False
    assert create["required"] == ["model"]
    assert set(create["properties"]) == set(AssistantCreate.model_fields)
    assert set(schemas["Assistant"]["properties"]) == {
        field.alias or name for name, field in Assistant.model_fields.items()
    }
    assert create["properties"]["metadata"]["anyOf"][0]["maxProperties"] == 16


def test_every_v1_operation_needs_the_key_and_names_its_errors(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if not path.startswith("/v1/"):
                assert operation["security"] == []
                continue
            assert operation["security"] == [{"bearerAuth": []}], (method, path)
            for status in ("401", "429", "503"):
                assert status in responses, (method, path, status)
            assert responses["429"]["headers"]["Retry-After"]["required"] is True
            assert "WWW-Authenticate" in responses["401"]["headers"]
            for status, response in responses.items():
                headers = response["headers"]
                assert headers["X-Request-ID"]["required"] is True
                if status != "401":
                    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(
                        headers
                    )


def test_create_documents_its_headers_and_edge_answers(document: dict[str, Any]) -> None:
    create = document["paths"]["/v1/assistants"]["post"]
    headers = {p["name"] for p in create["parameters"] if p["in"] == "header"}
    assert headers == {"Idempotency-Key", "Callback-URL", "Prefer", "X-Request-ID"}
    assert set(create["responses"]) == {
        "200", "202", "401", "409", "413", "415", "422", "429", "503"
    }  # fmt: skip
    assert create["responses"]["202"]["headers"]["Location"]["required"] is True
    events = set(document["webhooks"])
    assert events == {"job.succeeded", "job.failed", "batch.completed", "batch.cancelled"}


def test_docs_page_and_its_assets_are_served_here(stack: Stack) -> None:
    page = requests.get(stack.url + "/docs", timeout=30)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "/openapi.json" in page.text
    assets = ("/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css")
    for asset in assets:
        assert asset in page.text
        response = requests.get(stack.url + asset, timeout=30)
        assert response.status_code == 200 and len(response.content) > 1000
    # Nothing is loaded from elsewhere: every asset is a path on this service.
    assert not re.search(r'(src|href)="(https?:)?//', page.text)
