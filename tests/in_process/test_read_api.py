"""Reading assistants (list, get, delete) and the model list, as API.md states them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from bson import ObjectId

from tests.local import Local, running_local
from tests.stack import Servers, Stack, Tenant, wait_until


def create_assistants(tenant: Tenant, count: int) -> list[dict[str, Any]]:
    """Make `count` assistants; returns them ordered as the list orders them (oldest first)."""

    def one(index: int) -> dict[str, Any]:
        response = tenant.create({"model": "gpt-4", "name": f"a{index}"}, Prefer="wait=30")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    with ThreadPoolExecutor(max_workers=8) as pool:
        made = list(pool.map(one, range(count)))
    return sorted(made, key=lambda a: (a["created_at"], ObjectId(a["_id"])))


def ids(page: dict[str, Any]) -> list[str]:
    return [assistant["id"] for assistant in page["data"]]


def list_page(tenant: Tenant, **params: Any) -> dict[str, Any]:
    response = tenant.request("GET", "/v1/assistants", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def query_error(tenant: Tenant, **params: Any) -> dict[str, Any]:
    response = tenant.request("GET", "/v1/assistants", params=params)
    assert response.status_code == 422, response.text
    (entry,) = response.json()["detail"]
    result: dict[str, Any] = entry
    return result


@pytest.fixture(scope="module")
def listed(stack: Stack) -> tuple[Tenant, list[dict[str, Any]]]:
    """A tenant with five assistants, shared by the tests that only read."""
    tenant = stack.new_tenant()
    return tenant, create_assistants(tenant, 5)


def test_list_is_newest_first_by_default_in_the_list_shape(
    listed: tuple[Tenant, list[dict[str, Any]]],
) -> None:
    tenant, made = listed
    page = list_page(tenant)
    newest_first = [a["id"] for a in reversed(made)]
    assert page == {
        "object": "list",
        "data": list(reversed(made)),
        "first_id": newest_first[0],
        "last_id": newest_first[-1],
        "has_more": False,
    }


def test_order_asc_is_oldest_first_ties_broken_by_id(
    listed: tuple[Tenant, list[dict[str, Any]]],
) -> None:
    tenant, made = listed
    assert ids(list_page(tenant, order="asc")) == [a["id"] for a in made]


def test_after_pages_forward_in_either_order(listed: tuple[Tenant, list[dict[str, Any]]]) -> None:
    tenant, made = listed
    oldest_first = [a["id"] for a in made]
    first = list_page(tenant, order="asc", limit=2)
    assert ids(first) == oldest_first[:2] and first["has_more"] is True
    second = list_page(tenant, order="asc", limit=2, after=first["last_id"])
    assert ids(second) == oldest_first[2:4] and second["has_more"] is True
    third = list_page(tenant, order="asc", limit=2, after=second["last_id"])
    assert ids(third) == oldest_first[4:] and third["has_more"] is False

    newest_first = oldest_first[::-1]
    page = list_page(tenant, limit=3, after=newest_first[0])
    assert ids(page) == newest_first[1:4] and page["has_more"] is True


def test_before_pages_back_keeping_the_lists_order(
    listed: tuple[Tenant, list[dict[str, Any]]],
) -> None:
    tenant, made = listed
    oldest_first = [a["id"] for a in made]
    page = list_page(tenant, order="asc", limit=2, before=oldest_first[4])
    assert ids(page) == oldest_first[2:4] and page["has_more"] is True
    page = list_page(tenant, order="asc", limit=2, before=oldest_first[2])
    assert ids(page) == oldest_first[:2] and page["has_more"] is False

    newest_first = oldest_first[::-1]
    page = list_page(tenant, before=newest_first[3])
    assert ids(page) == newest_first[:3] and page["has_more"] is False


def test_after_and_before_together_give_what_lies_between(
    listed: tuple[Tenant, list[dict[str, Any]]],
) -> None:
    tenant, made = listed
    oldest_first = [a["id"] for a in made]
    page = list_page(tenant, order="asc", after=oldest_first[0], before=oldest_first[4])
    assert ids(page) == oldest_first[1:4]


def test_an_empty_list_has_null_ids(tenant: Tenant) -> None:
    assert list_page(tenant) == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


def test_limit_defaults_to_20(tenant: Tenant) -> None:
    create_assistants(tenant, 21)
    page = list_page(tenant)
    assert len(page["data"]) == 20 and page["has_more"] is True
    assert len(list_page(tenant, limit=100)["data"]) == 21


@pytest.mark.parametrize(
    ("value", "type_"),
    [("0", "greater_than_equal"), ("101", "less_than_equal"), ("ten", "int_parsing")],
)
def test_limit_outside_1_to_100_is_422_at_the_query(tenant: Tenant, value: str, type_: str) -> None:
    entry = query_error(tenant, limit=value)
    assert entry["loc"] == ["query", "limit"] and entry["type"] == type_


INT_PARSING = "Input should be a valid integer, unable to parse string as an integer"


@pytest.mark.parametrize(
    "value", ["+5", "1_0", "\u0661\u0660", "\uff15", " 5", "5 ", "5.0", "-5", "0x10", "1e1", ""]
)
def test_limit_is_plain_ascii_digits_else_int_parsing(tenant: Tenant, value: str) -> None:
    # Lax int() and pydantic's lax parsing of a string take some of these.
    assert query_error(tenant, limit=value) == {
        "type": "int_parsing",
        "loc": ["query", "limit"],
        "msg": INT_PARSING,
        "input": value,
    }


def test_limit_with_leading_zeros_is_its_digits(
    listed: tuple[Tenant, list[dict[str, Any]]],
) -> None:
    tenant, _ = listed
    assert len(list_page(tenant, limit="002")["data"]) == 2


def test_every_bad_query_parameter_is_reported_at_once(tenant: Tenant) -> None:
    response = tenant.request(
        "GET", "/v1/assistants", params={"limit": "0", "order": "new", "after": "", "sort": "x"}
    )
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "type": "greater_than_equal",
            "loc": ["query", "limit"],
            "msg": "Input should be greater than or equal to 1",
            "input": "0",
            "ctx": {"ge": 1},
        },
        {
            "type": "literal_error",
            "loc": ["query", "order"],
            "msg": "Input should be 'asc' or 'desc'",
            "input": "new",
            "ctx": {"expected": "'asc' or 'desc'"},
        },
        {
            "type": "string_too_short",
            "loc": ["query", "after"],
            "msg": "String should have at least 1 character",
            "input": "",
            "ctx": {"min_length": 1},
        },
        {
            "type": "extra_forbidden",
            "loc": ["query", "sort"],
            "msg": "Extra inputs are not permitted",
            "input": "x",
        },
    ]


def test_a_parameter_given_twice_is_validated_as_the_list_of_its_values(tenant: Tenant) -> None:
    response = tenant.request("GET", "/v1/assistants?limit=1&limit=2")
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "type": "int_type",
            "loc": ["query", "limit"],
            "msg": "Input should be a valid integer",
            "input": ["1", "2"],
        }
    ]


def test_order_other_than_asc_or_desc_is_422(tenant: Tenant) -> None:
    entry = query_error(tenant, order="newest")
    assert entry["loc"] == ["query", "order"] and entry["type"] == "literal_error"


def test_an_unknown_query_parameter_is_422(tenant: Tenant) -> None:
    entry = query_error(tenant, sort="name")
    assert entry["loc"] == ["query", "sort"] and entry["type"] == "extra_forbidden"


@pytest.mark.parametrize("name", ["after", "before"])
def test_an_unknown_cursor_id_is_422_at_its_name(
    listed: tuple[Tenant, list[dict[str, Any]]], name: str
) -> None:
    tenant, made = listed
    entry = query_error(tenant, **{name: "asst_doesnotexist000000000000"})
    assert entry["loc"] == ["query", name]
    # A good cursor beside it does not hide which one is unknown.
    other = "before" if name == "after" else "after"
    entry = query_error(tenant, **{other: made[2]["id"], name: "asst_nope"})
    assert entry["loc"] == ["query", name]


def test_another_tenants_assistants_are_neither_listed_nor_cursors(
    listed: tuple[Tenant, list[dict[str, Any]]], other_tenant: Tenant
) -> None:
    _, made = listed
    assert list_page(other_tenant)["data"] == []
    entry = query_error(other_tenant, after=made[0]["id"])
    assert entry["loc"] == ["query", "after"]


def test_the_list_is_backed_by_an_index(stack: Stack) -> None:
    store = stack.db
    keys = [list(index["key"]) for index in store.assistants.index_information().values()]
    assert [("tenant", 1), ("created_at", 1), ("_id", 1)] in keys


def test_delete_answers_the_deleted_object_and_the_assistant_is_gone(tenant: Tenant) -> None:
    (assistant,) = create_assistants(tenant, 1)
    path = f"/v1/assistants/{assistant['id']}"
    response = tenant.request("DELETE", path)
    assert response.status_code == 200
    assert response.json() == {
        "id": assistant["id"],
        "object": "assistant.deleted",
        "deleted": True,
    }
    assert tenant.request("GET", path).status_code == 404
    assert list_page(tenant)["data"] == []
    again = tenant.request("DELETE", path)
    assert again.status_code == 404
    assert again.json() == {"detail": "No assistant found"}


def test_another_tenants_assistant_cannot_be_deleted(tenant: Tenant, other_tenant: Tenant) -> None:
    (assistant,) = create_assistants(tenant, 1)
    path = f"/v1/assistants/{assistant['id']}"
    response = other_tenant.request("DELETE", path)
    assert response.status_code == 404
    assert response.json() == {"detail": "No assistant found"}
    assert tenant.request("GET", path).json() == assistant


def test_a_cursor_naming_a_deleted_assistant_pages_on_from_where_it_was(tenant: Tenant) -> None:
    made = [a["id"] for a in create_assistants(tenant, 5)]
    assert tenant.request("DELETE", f"/v1/assistants/{made[2]}").status_code == 200
    assert ids(list_page(tenant, after=made[2])) == [made[1], made[0]]
    assert ids(list_page(tenant, after=made[2], order="asc")) == made[3:]
    assert ids(list_page(tenant, before=made[2])) == made[3:][::-1]
    assert ids(list_page(tenant, before=made[2], order="asc")) == made[:2]


def test_a_cursor_naming_an_assistant_deleted_by_a_batch_pages_on(tenant: Tenant) -> None:
    made = [a["id"] for a in create_assistants(tenant, 3)]
    line = {"custom_id": "d", "method": "DELETE", "url": f"/v1/assistants/{made[1]}"}
    response = tenant.request(
        "POST",
        "/v1/batches",
        data=json.dumps(line) + "\n",
        headers={"Prefer": "wait=30", "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code in (200, 201, 202), response.text
    wait_until(lambda: tenant.request("GET", f"/v1/assistants/{made[1]}").status_code == 404)
    assert ids(list_page(tenant, after=made[1], order="asc")) == [made[2]]


def test_a_cursor_naming_another_tenants_deleted_assistant_is_unknown(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    (assistant,) = create_assistants(tenant, 1)
    assert tenant.request("DELETE", f"/v1/assistants/{assistant['id']}").status_code == 200
    entry = query_error(other_tenant, after=assistant["id"])
    assert entry["loc"] == ["query", "after"]


def test_without_a_model_list_models_is_empty_and_any_model_is_accepted(tenant: Tenant) -> None:
    response = tenant.request("GET", "/v1/models")
    assert response.status_code == 200
    assert response.json() == {"object": "list", "data": []}
    assert tenant.create({"model": "anything"}, Prefer="wait=30").status_code == 200


@pytest.fixture(scope="module")
def models_stack(servers: Servers) -> Iterator[Local]:
    with running_local(servers.settings(MODELS="gpt-4o, gpt-4o-mini")) as deployment:
        yield deployment


def test_models_lists_the_configured_models(models_stack: Local) -> None:
    tenant = models_stack.new_tenant()
    response = tenant.request("GET", "/v1/models")
    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [
            {"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "system"},
            {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "system"},
        ],
    }


def test_with_a_model_list_another_model_fails_with_literal_error(models_stack: Local) -> None:
    tenant = models_stack.new_tenant()
    accepted = tenant.create({"model": "gpt-4"})
    assert accepted.status_code == 202  # the edge does not judge fields
    job = tenant.wait_job(accepted.json()["id"])
    assert job["status"] == "failed"
    assert job["result"] == {
        "status_code": 422,
        "body": {
            "detail": [
                {
                    "type": "literal_error",
                    "loc": ["body", "model"],
                    "msg": "Input should be 'gpt-4o' or 'gpt-4o-mini'",
                    "input": "gpt-4",
                    "ctx": {"expected": "'gpt-4o' or 'gpt-4o-mini'"},
                }
            ]
        },
    }
    named = tenant.create({"model": "gpt-4o-mini"}, Prefer="wait=30")
    assert named.status_code == 200
    assert named.json()["model"] == "gpt-4o-mini"


def test_the_openapi_document_names_the_configured_models(models_stack: Local) -> None:
    document = models_stack.client().get("/openapi.json").get_json()
    model = document["components"]["schemas"]["AssistantCreate"]["properties"]["model"]
    assert model["enum"] == ["gpt-4o", "gpt-4o-mini"]


def test_sequential_creates_list_in_creation_order_across_pages(tenant: Tenant) -> None:
    """Twenty creates, each waited for before the next, many within one second:
    the list follows creation in either order, page by page, with after and before."""
    made = []
    for index in range(20):
        response = tenant.create({"model": "m", "name": f"n{index:02d}"}, Prefer="wait=30")
        assert response.status_code == 200, response.text
        made.append(response.json()["id"])
    assert ids(list_page(tenant, order="asc", limit=100)) == made
    assert ids(list_page(tenant, limit=100)) == made[::-1]

    for order, expected in (("asc", made), ("desc", made[::-1])):
        seen: list[str] = []
        page = list_page(tenant, order=order, limit=6)
        while True:
            seen += ids(page)
            if not page["has_more"]:
                break
            page = list_page(tenant, order=order, limit=6, after=page["last_id"])
        assert seen == expected, order

        back: list[str] = []
        page = list_page(tenant, order=order, limit=7, before=expected[-1])
        while True:
            back = ids(page) + back
            if not page["has_more"]:
                break
            page = list_page(tenant, order=order, limit=7, before=page["first_id"])
        assert back == expected[:-1], order

    between = list_page(tenant, order="asc", after=made[4], before=made[15], limit=100)
    assert ids(between) == made[5:15]
