"""The service validates Create and Modify Assistant bodies exactly as FastAPI would.

The reference is a FastAPI app whose models are written here from API.md's
table, as an app author would write them, without reading worker/schema.py.
Every body of the corpus goes end to end through the real service (edge,
MongoDB, Celery worker) and through the reference in-process; the answers
must be equal, 422 detail lists entry for entry.

What FastAPI (0.165, pydantic 2.14) answers for a body model: each entry has
`type`, `loc` (prefixed with "body"), `msg` and `input`, plus `ctx` when
pydantic gives one; never `url`, since FastAPI calls
`errors(include_url=False)`. The service answers the same keys, so entries
are compared whole, with nothing normalised.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import StarletteDeprecationWarning

from tests.stack import Stack, Tenant, wait_until

with warnings.catch_warnings():
    # Starlette's test client asks for httpx2 when it finds httpx; both work.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient


# The reference: API.md's table as pydantic v2 models behind a FastAPI route.


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CodeInterpreter(Closed):
    type: Literal["code_interpreter"]


class Retrieval(Closed):
    type: Literal["retrieval"]


class Function(Closed):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    # Optional but not nullable: the table says "string or null" only of the
    # top-level strings, and OpenAI's FunctionObject has neither as nullable.
    description: str = ""
    parameters: dict[str, Any] = {}


class FunctionTool(Closed):
    type: Literal["function"]
    function: Function


ToolSpec = Annotated[CodeInterpreter | Retrieval | FunctionTool, Field(discriminator="type")]
MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class CreateAssistant(Closed):
    model: str
    name: Annotated[str, Field(max_length=256)] | None = None
    description: Annotated[str, Field(max_length=512)] | None = None
    instructions: Annotated[str, Field(max_length=32768)] | None = None
    tools: Annotated[list[ToolSpec], Field(max_length=128)] = []
    file_ids: Annotated[list[str], Field(max_length=20)] = []
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)] | None = None


class ModifyAssistant(CreateAssistant):
    """OpenAI's ModifyAssistantRequest: the create schema with every field
    optional; `model` may be left out but is not nullable."""

    model: str = None  # type: ignore[assignment]


reference_app = FastAPI()


@reference_app.post("/v1/assistants")
def create_assistant(body: CreateAssistant) -> dict[str, Any]:
    return body.model_dump(exclude_unset=True)


@reference_app.post("/v1/assistants/{assistant_id}")
def modify_assistant(assistant_id: str, body: ModifyAssistant) -> dict[str, Any]:
    return body.model_dump(exclude_unset=True)


@functools.cache
def reference_client() -> TestClient:
    return TestClient(reference_app)


def reference_answer(payload: bytes, path: str = "/v1/assistants") -> tuple[int, Any]:
    """FastAPI's status and JSON body for these request bytes."""
    response = reference_client().post(
        path, content=payload, headers={"Content-Type": "application/json"}
    )
    return response.status_code, response.json()


def encode(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


# The corpus. Each bad body names the error type it exists to provoke.

FN = "function"


def fn(**function: Any) -> dict[str, Any]:
    return {"type": FN, "function": function}


def tools_of(*tools: Any) -> dict[str, Any]:
    return {"model": "m", "tools": list(tools)}


def meta(value: Any) -> dict[str, Any]:
    return {"model": "m", "metadata": value}


NOT_STRINGS = {"int": 5, "float": 1.5, "bool": True, "list": ["x"], "object": {"a": "b"}}
LIMITS = {"name": 256, "description": 512, "instructions": 32768}

BAD: dict[str, tuple[Any, str]] = {
    # Bodies that are not objects.
    "body_null": (None, "model_attributes_type"),
    "body_empty_list": ([], "model_attributes_type"),
    "body_list_of_object": ([{"model": "m"}], "model_attributes_type"),
    "body_string": ("x", "model_attributes_type"),
    "body_int": (5, "model_attributes_type"),
    "body_float": (1.5, "model_attributes_type"),
    "body_true": (True, "model_attributes_type"),
    # model
    "model_missing": ({}, "missing"),
    "model_missing_beside_valid_fields": ({"name": "n", "tools": []}, "missing"),
    "model_null": ({"model": None}, "string_type"),
    **{f"model_{kind}": ({"model": value}, "string_type") for kind, value in NOT_STRINGS.items()},
    # name, description, instructions
    **{
        f"{field}_{kind}": ({"model": "m", field: value}, "string_type")
        for field in LIMITS
        for kind, value in NOT_STRINGS.items()
    },
    **{
        f"{field}_over_{limit}_chars": ({"model": "m", field: "x" * (limit + 1)}, "string_too_long")
        for field, limit in LIMITS.items()
    },
    **{
        f"{field}_over_{limit}_emoji": (
            {"model": "m", field: "😀" * (limit + 1)},
            "string_too_long",
        )
        for field, limit in LIMITS.items()
    },
    # tools
    "tools_null": ({"model": "m", "tools": None}, "list_type"),
    "tools_object": ({"model": "m", "tools": {"type": "retrieval"}}, "list_type"),
    "tools_string": ({"model": "m", "tools": "retrieval"}, "list_type"),
    "tools_int": ({"model": "m", "tools": 1}, "list_type"),
    "tools_129": (tools_of(*[{"type": "retrieval"}] * 129), "too_long"),
    "tools_129_invalid": (tools_of(*[{"type": "nope"}] * 129), "too_long"),
    "tool_int": (tools_of(5), "model_attributes_type"),
    "tool_null": (tools_of(None), "model_attributes_type"),
    "tool_list": (tools_of([{"type": "retrieval"}]), "model_attributes_type"),
    "tool_string": (tools_of("retrieval"), "model_attributes_type"),
    "tool_without_type": (tools_of({}), "union_tag_not_found"),
    "tool_without_type_but_function": (
        tools_of({"function": {"name": "f"}}),
        "union_tag_not_found",
    ),
    "tool_type_unknown": (tools_of({"type": "browser"}), "union_tag_invalid"),
    "tool_type_wrong_case": (tools_of({"type": "Retrieval"}), "union_tag_invalid"),
    "tool_type_null": (tools_of({"type": None}), "union_tag_invalid"),
    "tool_type_int": (tools_of({"type": 1}), "union_tag_invalid"),
    "tool_type_list": (tools_of({"type": ["retrieval"]}), "union_tag_invalid"),
    "code_interpreter_extra_key": (
        tools_of({"type": "code_interpreter", "x": 1}),
        "extra_forbidden",
    ),
    "retrieval_extra_key": (tools_of({"type": "retrieval", "function": {}}), "extra_forbidden"),
    "function_tool_extra_key": (
        tools_of({"type": FN, "function": {"name": "f"}, "strict": True}),
        "extra_forbidden",
    ),
    "function_missing": (tools_of({"type": FN}), "missing"),
    "function_null": (tools_of({"type": FN, "function": None}), "model_attributes_type"),
    "function_string": (tools_of({"type": FN, "function": "f"}), "model_attributes_type"),
    "function_list": (tools_of({"type": FN, "function": []}), "model_attributes_type"),
    "function_name_missing": (tools_of(fn(description="d")), "missing"),
    "function_name_null": (tools_of(fn(name=None)), "string_type"),
    "function_name_int": (tools_of(fn(name=7)), "string_type"),
    "function_name_empty": (tools_of(fn(name="")), "string_pattern_mismatch"),
    "function_name_65_chars": (tools_of(fn(name="f" * 65)), "string_pattern_mismatch"),
    "function_name_space": (tools_of(fn(name="get weather")), "string_pattern_mismatch"),
    "function_name_dot": (tools_of(fn(name="a.b")), "string_pattern_mismatch"),
    "function_name_accent": (tools_of(fn(name="naïve")), "string_pattern_mismatch"),
    "function_name_trailing_newline": (tools_of(fn(name="f\n")), "string_pattern_mismatch"),
    "function_name_nul": (tools_of(fn(name="f\u0000")), "string_pattern_mismatch"),
    "function_description_int": (tools_of(fn(name="f", description=1)), "string_type"),
    "function_description_null": (tools_of(fn(name="f", description=None)), "string_type"),
    "function_parameters_list": (tools_of(fn(name="f", parameters=[])), "dict_type"),
    "function_parameters_string": (tools_of(fn(name="f", parameters="{}")), "dict_type"),
    "function_parameters_null": (tools_of(fn(name="f", parameters=None)), "dict_type"),
    "function_extra_key": (tools_of(fn(name="f", strict=True)), "extra_forbidden"),
    "function_of_code_interpreter_tool": (
        tools_of({"type": "code_interpreter", "function": {"name": "f"}}),
        "extra_forbidden",
    ),
    "second_tool_bad_among_good": (
        tools_of({"type": "retrieval"}, fn(name="bad name"), {"type": "code_interpreter"}),
        "string_pattern_mismatch",
    ),
    # file_ids
    "file_ids_null": ({"model": "m", "file_ids": None}, "list_type"),
    "file_ids_string": ({"model": "m", "file_ids": "file-1"}, "list_type"),
    "file_ids_object": ({"model": "m", "file_ids": {"a": "b"}}, "list_type"),
    "file_ids_21": ({"model": "m", "file_ids": [f"file-{i}" for i in range(21)]}, "too_long"),
    "file_ids_21_invalid": ({"model": "m", "file_ids": [1] * 21}, "too_long"),
    "file_id_int": ({"model": "m", "file_ids": ["a", 1]}, "string_type"),
    "file_id_null": ({"model": "m", "file_ids": [None]}, "string_type"),
    "file_id_object": ({"model": "m", "file_ids": [{"id": "a"}]}, "string_type"),
    # metadata
    "metadata_list": (meta([["a", "b"]]), "dict_type"),
    "metadata_string": (meta("a=b"), "dict_type"),
    "metadata_int": (meta(1), "dict_type"),
    "metadata_17_pairs": (meta({f"k{i}": "v" for i in range(17)}), "too_long"),
    # A dict's size is judged only once its items are valid (a list's, at once).
    "metadata_17_invalid_pairs": (meta({f"k{i}": i for i in range(17)}), "string_type"),
    "metadata_key_65_chars": (meta({"k" * 65: "v"}), "string_too_long"),
    "metadata_key_65_emoji": (meta({"😀" * 65: "v"}), "string_too_long"),
    "metadata_value_513_chars": (meta({"k": "v" * 513}), "string_too_long"),
    **{
        f"metadata_value_{kind}": (meta({"k": value}), "string_type")
        for kind, value in NOT_STRINGS.items()
    },
    "metadata_value_null": (meta({"k": None}), "string_type"),
    "metadata_long_key_and_bad_value": (meta({"k" * 65: 1, "ok": "v"}), "string_too_long"),
    # Unknown fields at the top.
    "extra_field": ({"model": "m", "temperature": 1}, "extra_forbidden"),
    "extra_field_null": ({"model": "m", "response_format": None}, "extra_forbidden"),
    "extra_fields_several": ({"model": "m", "a": 1, "$where": "x", "": []}, "extra_forbidden"),
    "extra_field_only": ({"x": 1}, "extra_forbidden"),
    "extra_field_wrong_case": ({"model": "m", "Name": "n"}, "extra_forbidden"),
    # Everything wrong at once: every error must be listed, in FastAPI's order.
    "every_field_wrong": (
        {
            "zzz": 1,
            "metadata": {"k" * 65: 5, "v": "x" * 513, "n": None},
            "file_ids": ["ok", 2, None],
            "tools": [
                {"type": "nope"},
                {},
                fn(name="bad name", description=3, parameters=[], extra=1),
                {"type": "retrieval", "x": 1},
                7,
            ],
            "instructions": "i" * 32769,
            "description": ["d"],
            "name": 12,
            "aaa": None,
        },
        "missing",
    ),
    "every_limit_exceeded": (
        {
            "model": "m",
            "name": "n" * 257,
            "description": "d" * 513,
            "instructions": "i" * 32769,
            "tools": [{"type": "retrieval"}] * 129,
            "file_ids": ["f"] * 21,
            "metadata": {f"k{i}": "v" for i in range(17)},
        },
        "too_long",
    ),
}

NUL = "\u0000"

GOOD: dict[str, Any] = {
    "minimal": {"model": "gpt-4"},
    "model_empty_string": {"model": ""},
    "optional_strings_null": {
        "model": "m",
        "name": None,
        "description": None,
        "instructions": None,
        "metadata": None,
    },
    "empty_lists_and_metadata": {"model": "m", "tools": [], "file_ids": [], "metadata": {}},
    "every_limit": {
        "model": "m" * 1000,
        "name": "n" * 256,
        "description": "d" * 512,
        "instructions": "i" * 32768,
        "tools": [
            {"type": "code_interpreter"},
            {"type": "retrieval"},
            *[
                fn(name=f"f_{i}-x", description="d", parameters={"type": "object"})
                for i in range(126)
            ],
        ],
        "file_ids": [f"file-{i}" for i in range(20)],
        "metadata": {f"{i:02d}".ljust(64, "k"): "v" * 512 for i in range(16)},
    },
    "emoji_at_every_limit": {
        "model": "😀",
        "name": "😀" * 256,
        "description": "🧪" * 512,
        "instructions": "é😀" * 16384,
        "file_ids": ["😀"] * 20,
        "metadata": {"😀" * 64: "😀" * 512},
    },
    "nul_everywhere": {
        "model": f"gpt{NUL}4",
        "name": NUL,
        "description": f"a{NUL}b",
        "instructions": NUL * 10,
        "tools": [fn(name="f", description=NUL, parameters={NUL: NUL, "k": [NUL]})],
        "file_ids": [NUL],
        "metadata": {f"nul{NUL}key": f"v{NUL}", NUL: ""},
    },
    "metadata_keys_mongo_would_refuse": {
        "model": "m",
        "metadata": {
            "$where": "1",
            "a.b": "2",
            "": "3",
            "$": "4",
            ".": "5",
            "$set.x": "6",
            "_id": "7",
            "a\u0000b": "8",
        },
    },
    "metadata_16_pairs": {"model": "m", "metadata": {f"k{i}": "" for i in range(16)}},
    "tools_128": tools_of(*[{"type": "retrieval"}] * 128),
    "file_ids_20": {"model": "m", "file_ids": [""] * 20},
    "function_name_64_chars": tools_of(fn(name="a" * 64)),
    "function_name_every_allowed_char": tools_of(
        fn(name="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    ),
    "function_name_one_char": tools_of(fn(name="-")),
    "function_with_only_name": tools_of(fn(name="f")),
    "function_parameters_empty": tools_of(fn(name="f", parameters={})),
    "function_parameters_any_json": tools_of(
        fn(
            name="f",
            description="",
            parameters={
                "$ref": "#/a.b",
                "a.b": {"$where": [1, -2.5, True, False, None, "x"]},
                "nested": {"deep": {"er": [{"x": [[]]}]}},
                "big": 2**63 - 1,
                "small": -(2**63),
                "float": 1e300,
            },
        )
    ),
    "tools_mixed_in_any_order": tools_of(
        fn(name="b"),
        {"type": "retrieval"},
        {"type": "code_interpreter"},
        fn(name="a", parameters={"type": "object", "properties": {}}),
        {"type": "retrieval"},
    ),
    "strings_with_controls_and_quotes": {
        "model": "m",
        "name": '"\\\n\t\r\u2028',
        "instructions": "</script><!-- \u202e",
        "metadata": {'"': "\\", "\n": "\t"},
    },
}

# Bytes sent as they are: duplicate keys, the last one wins (as in FastAPI's parser).
RAW: dict[str, tuple[bytes, str | None]] = {
    "duplicate_key_last_valid": (b'{"model": 5, "model": "m"}', None),
    "duplicate_key_last_invalid": (b'{"model": "m", "model": 5}', "string_type"),
    "duplicate_metadata_key": (b'{"model": "m", "metadata": {"k": 1, "k": "v"}}', None),
}


@dataclass(frozen=True)
class Case:
    payload: bytes
    rule: str | None = None  # the error type a bad body exists to provoke

    @property
    def body(self) -> Any:
        return json.loads(self.payload)


CASES: dict[str, Case] = {
    **{name: Case(encode(body), rule) for name, (body, rule) in BAD.items()},
    **{name: Case(encode(body)) for name, body in GOOD.items()},
    **{name: Case(payload, rule) for name, (payload, rule) in RAW.items()},
}


# The service side: every body is submitted first, then each test reads its result.


@pytest.fixture(scope="module")
def submitter(stack: Stack) -> Tenant:
    return stack.new_tenant()


@pytest.fixture(scope="module")
def submitted(submitter: Tenant) -> dict[str, str]:
    jobs: dict[str, str] = {}
    for name, case in CASES.items():
        response = submitter.request(
            "POST",
            "/v1/assistants",
            data=case.payload,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 202, (name, response.text)
        jobs[name] = response.json()["id"]
    return jobs


def service_answer(tenant: Tenant, job_id: str) -> tuple[int, Any]:
    job = tenant.wait_job(job_id)
    assert job["status"] in ("succeeded", "failed"), job
    return job["result"]["status_code"], job["result"]["body"]


def expected_assistant(body: dict[str, Any]) -> dict[str, Any]:
    """The fields of the assistant object the body must produce."""
    return {
        "model": body["model"],
        "name": body.get("name"),
        "description": body.get("description"),
        "instructions": body.get("instructions"),
        "tools": body.get("tools", []),
        "file_ids": body.get("file_ids", []),
        "metadata": body.get("metadata") or {},
    }


REQUIRED_KEYS = {"type", "loc", "msg", "input"}


def test_corpus_covers_every_rule_of_the_table() -> None:
    rules = {case.rule for case in CASES.values()}
    assert rules >= {
        "missing",
        "string_type",
        "string_too_long",
        "too_long",
        "extra_forbidden",
        "union_tag_invalid",
        "union_tag_not_found",
        "string_pattern_mismatch",
        "dict_type",
        "list_type",
        "model_attributes_type",
    }


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.rule], ids=str)
def test_bad_body_gets_fastapis_422(
    name: str, submitter: Tenant, submitted: dict[str, str]
) -> None:
    case = CASES[name]
    status, reference = reference_answer(case.payload)
    assert status == 422, reference
    assert case.rule in {entry["type"] for entry in reference["detail"]}
    for entry in reference["detail"]:
        assert entry["loc"][0] == "body"
        assert REQUIRED_KEYS <= entry.keys() <= REQUIRED_KEYS | {"ctx"}

    service_status, answer = service_answer(submitter, submitted[name])
    assert service_status == status
    assert len(answer["detail"]) == len(reference["detail"])
    for got, want in zip(answer["detail"], reference["detail"], strict=True):
        assert got == want


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if not case.rule], ids=str)
def test_valid_body_is_200_and_every_field_round_trips(
    name: str, submitter: Tenant, submitted: dict[str, str]
) -> None:
    case = CASES[name]
    body = case.body
    status, reference = reference_answer(case.payload)
    assert status == 200, reference

    service_status, assistant = service_answer(submitter, submitted[name])
    assert service_status == 200, assistant
    assert assistant["object"] == "assistant"
    for field, value in expected_assistant(body).items():
        assert assistant[field] == value, field
    stored = submitter.request("GET", f"/v1/assistants/{assistant['id']}")
    assert stored.json() == assistant


# Modify: the same corpus, each body sent to an assistant of its own.

BASE = {
    "model": "base-model",
    "name": "base",
    "description": "base description",
    "instructions": "base instructions",
    "tools": [{"type": "code_interpreter"}],
    "file_ids": ["file-base"],
    "metadata": {"base": "yes"},
}
MODIFY_PATH = "/v1/assistants/asst_reference"


@pytest.fixture(scope="module")
def modified(submitter: Tenant) -> dict[str, tuple[dict[str, Any], str]]:
    """Per case, the assistant it modifies (as made) and the modify's job id."""
    lines = b"".join(
        json.dumps({"custom_id": name, "body": BASE}).encode() + b"\n" for name in CASES
    )
    response = submitter.request(
        "POST", "/v1/batches", data=lines, headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    wait_until(
        lambda: submitter.request("GET", f"/v1/batches/{batch_id}").json()["status"] == "completed",
        timeout=120,
    )
    rows = submitter.request("GET", f"/v1/batches/{batch_id}/results").text.splitlines()
    made = {row["custom_id"]: row["body"] for row in map(json.loads, rows)}
    jobs: dict[str, tuple[dict[str, Any], str]] = {}
    for name, case in CASES.items():
        response = submitter.request(
            "POST",
            f"/v1/assistants/{made[name]['id']}",
            data=case.payload,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 202, (name, response.text)
        jobs[name] = (made[name], response.json()["id"])
    return jobs


@pytest.mark.parametrize("name", list(CASES), ids=str)
def test_modify_answers_as_fastapi_and_changes_only_the_fields_sent(
    name: str, submitter: Tenant, modified: dict[str, tuple[dict[str, Any], str]]
) -> None:
    case = CASES[name]
    status, reference = reference_answer(case.payload, MODIFY_PATH)
    before, job_id = modified[name]
    service_status, answer = service_answer(submitter, job_id)
    assert service_status == status, answer
    if status == 422:
        assert len(answer["detail"]) == len(reference["detail"])
        for got, want in zip(answer["detail"], reference["detail"], strict=True):
            assert got == want
        assert submitter.request("GET", f"/v1/assistants/{before['id']}").json() == before
        return
    sent = dict(case.body)
    if "metadata" in sent:
        sent["metadata"] = sent["metadata"] or {}
    assert answer == {**before, **sent}
    assert submitter.request("GET", f"/v1/assistants/{before['id']}").json() == answer


def test_modify_corpus_has_bodies_valid_only_for_modify() -> None:
    statuses = {
        name: reference_answer(case.payload, MODIFY_PATH)[0] for name, case in CASES.items()
    }
    assert statuses["model_missing"] == 200 and statuses["extra_field_only"] == 422
    assert statuses["model_null"] == 422 and statuses["body_null"] == 422
