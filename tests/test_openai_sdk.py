"""The OpenAI Python SDK as a client, of the real stack and in process: `client.beta.assistants`
create, retrieve, update, list (auto-pagination) and delete, and `models.list`.

The SDK sends `OpenAI-Beta: assistants=v2` on every assistants call; the service
accepts and ignores it. The SDK marks `beta.assistants` deprecated (a warning at
each call), which is the SDK's notice, not this service's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.local import Local, LocalTenant, running_local
from tests.stack import Servers, Tenant, wait_until

JSONL = {"Content-Type": "application/x-ndjson"}
pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


def client(tenant: Tenant | LocalTenant, **default_headers: str) -> openai.OpenAI:
    """The SDK as users make it; for an in-process deployment, its httpx client
    calls the WSGI app itself instead of the network."""
    if isinstance(tenant, LocalTenant):
        transport = httpx.WSGITransport(app=tenant.local.app)
        base_url, http_client = "http://edge/v1", httpx.Client(transport=transport)
    else:
        base_url, http_client = tenant.stack.url + "/v1", None
    return openai.OpenAI(
        api_key=tenant.api_key,
        base_url=base_url,
        default_headers=default_headers,
        max_retries=0,
        timeout=90,
        http_client=http_client,
    )


def test_create_retrieve_update_list_and_delete(tenant: Tenant) -> None:
    sdk = client(tenant, Prefer="wait=30")
    made = sdk.beta.assistants.create(
        model="gpt-4o",
        name="SDK",
        description="made by the SDK",
        instructions="be brief",
        tools=[{"type": "code_interpreter"}, {"type": "function", "function": {"name": "f"}}],
        metadata={"team": "sdk"},
        extra_body={"file_ids": ["file-1"]},
    )
    assert made.id.startswith("asst_") and made.object == "assistant"
    assert (made.model, made.name, made.instructions) == ("gpt-4o", "SDK", "be brief")
    assert made.metadata == {"team": "sdk"}
    assert [tool.type for tool in made.tools] == ["code_interpreter", "function"]

    fetched = sdk.beta.assistants.retrieve(made.id)
    assert fetched.model_dump() == made.model_dump()

    updated = sdk.beta.assistants.update(made.id, name="Renamed", metadata={"v": "2"})
    assert (updated.id, updated.name, updated.metadata) == (made.id, "Renamed", {"v": "2"})
    assert (updated.instructions, updated.description) == ("be brief", "made by the SDK")
    assert sdk.beta.assistants.retrieve(made.id).name == "Renamed"

    more = [sdk.beta.assistants.create(model="gpt-4o", name=f"p{i}") for i in range(4)]
    every = [made.id, *(assistant.id for assistant in more)]
    # Pages of two, followed by the SDK itself through `after`.
    assert [a.id for a in sdk.beta.assistants.list(limit=2, order="asc")] == every
    assert [a.id for a in sdk.beta.assistants.list(limit=2)] == every[::-1]

    deleted = sdk.beta.assistants.delete(made.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (made.id, True, "assistant.deleted")
    with pytest.raises(openai.NotFoundError):
        sdk.beta.assistants.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        sdk.beta.assistants.update(made.id, name="gone")
    assert list(sdk.models.list()) == []


def test_the_sdks_delete_while_listing_loop_empties_a_tenant(tenant: Tenant) -> None:
    """Each page's last id, the SDK's next `after`, is an assistant deleted since."""
    line = {"custom_id": "c", "body": {"model": "m"}}
    lines = "".join(json.dumps({**line, "custom_id": f"c{i}"}) + "\n" for i in range(50))
    batch = tenant.request("POST", "/v1/batches", data=lines, headers=JSONL)
    assert batch.status_code in (200, 201, 202), batch.text
    wait_until(lambda: len(tenant.request("GET", "/v1/assistants?limit=100").json()["data"]) == 50)
    sdk = client(tenant)
    deleted = 0
    for assistant in sdk.beta.assistants.list(limit=3):
        assert sdk.beta.assistants.delete(assistant.id).deleted is True
        deleted += 1
    assert deleted == 50
    assert tenant.request("GET", "/v1/assistants").json()["data"] == []


def test_without_prefer_the_sdk_gets_a_job_unless_a_default_wait_is_set(tenant: Tenant) -> None:
    """What the README warns of: with no `Prefer` and no DEFAULT_WAIT_SECONDS the
    answer is the 202 job, which the SDK reads as an assistant."""
    sdk = client(tenant)
    response = sdk.beta.assistants.with_raw_response.create(model="gpt-4o")
    assert response.status_code == 202
    assert response.parse().id.startswith("job_")


@pytest.fixture(scope="module")
def sync_stack(servers: Servers) -> Iterator[Local]:
    settings = servers.settings(DEFAULT_WAIT_SECONDS="30", MODELS="gpt-4o,gpt-4o-mini")
    with running_local(settings) as deployment:
        yield deployment


def test_an_unmodified_sdk_works_with_default_wait_seconds(sync_stack: Local) -> None:
    sdk = client(sync_stack.new_tenant())
    made = sdk.beta.assistants.create(model="gpt-4o-mini", name="plain")
    assert made.id.startswith("asst_") and made.model == "gpt-4o-mini"
    raw = sdk.beta.assistants.with_raw_response.update(made.id, name="still plain")
    assert raw.status_code == 200
    assert "Preference-Applied" not in raw.headers  # no preference was sent
    assert raw.parse().name == "still plain"
    assert [a.id for a in sdk.beta.assistants.list()] == [made.id]
    models = [(model.id, model.owned_by) for model in sdk.models.list()]
    assert models == [("gpt-4o", "system"), ("gpt-4o-mini", "system")]
    assert sdk.beta.assistants.delete(made.id).deleted is True


@pytest.mark.parametrize(
    ("fields", "loc", "type_"),
    [
        ({"temperature": 0.5}, ["body", "temperature"], "extra_forbidden"),
        ({"top_p": 1.0}, ["body", "top_p"], "extra_forbidden"),
        ({"response_format": "auto"}, ["body", "response_format"], "extra_forbidden"),
        ({"tool_resources": {}}, ["body", "tool_resources"], "extra_forbidden"),
        ({"tools": [{"type": "file_search"}]}, ["body", "tools", 0], "union_tag_invalid"),
        ({"model": "gpt-3"}, ["body", "model"], "literal_error"),
    ],
)
def test_assistants_v2_only_fields_are_422_as_the_v1_schema_says(
    sync_stack: Local, fields: dict[str, Any], loc: list[Any], type_: str
) -> None:
    sdk = client(sync_stack.new_tenant())
    arguments: dict[str, Any] = {"model": "gpt-4o", **fields}
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        sdk.beta.assistants.create(**arguments)
    body: Any = raised.value.body
    assert [(entry["loc"], entry["type"]) for entry in body["detail"]] == [(loc, type_)]


def test_the_openai_beta_header_is_accepted_and_ignored(tenant: Tenant) -> None:
    response = tenant.create({"model": "m"}, Prefer="wait=30", **{"OpenAI-Beta": "assistants=v1"})
    assert response.status_code == 200 and response.json()["object"] == "assistant"
