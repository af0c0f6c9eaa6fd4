"""Generated bodies get the same answer from the worker's validation as from FastAPI.

The reference app (FastAPI over models written from API.md's table) lives in
test_validation_reference. Bodies mix valid and invalid fields: wrong types,
strings around their limits, extra keys, tool and function objects,
metadata of every size; now and then the body is not an object at all.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.in_process.test_validation_reference import encode, reference_answer
from tests.stack import Stack, Tenant
from worker.domain.schema import validate_create

MAX_BODY_BYTES = 1024 * 1024

# What the edge accepts as JSON: no lone surrogates, 64-bit integers, finite floats.
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=6,
)


def around(limit: int) -> st.SearchStrategy[str]:
    """Strings one short of, at, and one over `limit` characters."""
    return st.builds(
        lambda n, char: char * n,
        st.sampled_from([limit - 1, limit, limit + 1]),
        st.sampled_from(["x", "😀", "\u0000"]),
    )


def optional_string(limit: int) -> st.SearchStrategy[Any]:
    return st.none() | TEXT | around(limit) | JSON


FUNCTION_NAMES = (
    st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True)
    | st.sampled_from(["", "a b", "a.b", "f\n", "naïve", "f" * 65])
    | TEXT
    | JSON
)
FUNCTIONS = (
    st.fixed_dictionaries(
        {},
        optional={
            "name": FUNCTION_NAMES,
            "description": TEXT | JSON,
            "parameters": st.dictionaries(TEXT, JSON, max_size=3) | JSON,
            "strict": JSON,
        },
    )
    | JSON
)
TOOL_TYPES = st.sampled_from(["code_interpreter", "retrieval", "function"])
TOOLS = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["code_interpreter", "retrieval"])}, optional={"x": JSON}
    ),
    st.fixed_dictionaries(
        {"type": st.just("function")}, optional={"function": FUNCTIONS, "strict": JSON}
    ),
    st.fixed_dictionaries({}, optional={"type": TOOL_TYPES | JSON, "function": FUNCTIONS}),
    JSON,
)
LISTS_OF_TOOLS = (
    st.lists(TOOLS, max_size=4)
    | st.builds(lambda n: [{"type": "retrieval"}] * n, st.sampled_from([127, 128, 129]))
    | JSON
)
FILE_IDS = (
    st.lists(TEXT | JSON, max_size=3)
    | st.builds(lambda n: ["file"] * n, st.sampled_from([19, 20, 21]))
    | JSON
)
METADATA = (
    st.dictionaries(TEXT | around(64), TEXT | around(512) | JSON, max_size=4)
    | st.builds(lambda n: {f"k{i}": "v" for i in range(n)}, st.sampled_from([15, 16, 17]))
    | JSON
)
FIELDS = {
    "model": TEXT | JSON,
    "name": optional_string(256),
    "description": optional_string(512),
    "instructions": optional_string(32768),
    "tools": LISTS_OF_TOOLS,
    "file_ids": FILE_IDS,
    "metadata": METADATA,
}
EXTRAS = st.dictionaries(TEXT.filter(lambda key: key not in FIELDS), JSON, max_size=2)
OBJECTS = st.builds(
    lambda fields, extras: {**extras, **fields},
    st.fixed_dictionaries({}, optional=FIELDS),
    EXTRAS,
)

# Bodies the table allows, so that about a quarter of the examples are 200s.
VALID_TOOLS = st.fixed_dictionaries(
    {"type": st.sampled_from(["code_interpreter", "retrieval"])}
) | st.fixed_dictionaries(
    {
        "type": st.just("function"),
        "function": st.fixed_dictionaries(
            {"name": st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True)},
            optional={"description": TEXT, "parameters": st.dictionaries(TEXT, JSON, max_size=3)},
        ),
    }
)
VALID_FIELDS = {
    "name": st.none() | TEXT | st.just("n" * 256),
    "description": st.none() | TEXT | st.just("😀" * 512),
    "instructions": st.none() | TEXT | st.just("\u0000" * 32768),
    "tools": st.lists(VALID_TOOLS, max_size=4),
    "file_ids": st.lists(TEXT, max_size=20),
    "metadata": st.none() | st.dictionaries(TEXT | st.just("k" * 64), TEXT, max_size=16),
}
VALID_OBJECTS = st.fixed_dictionaries({"model": TEXT}, optional=VALID_FIELDS)
BODIES = st.one_of(VALID_OBJECTS, OBJECTS, OBJECTS, JSON)


def worker_answer(payload: bytes) -> tuple[int, Any]:
    checked = validate_create(json.loads(payload))
    if isinstance(checked, list):
        return 422, {"detail": checked}
    return 200, None


def loc_types(answer: Any) -> set[tuple[tuple[Any, ...], str]]:
    return {(tuple(entry["loc"]), entry["type"]) for entry in answer["detail"]}


@settings(max_examples=200, deadline=None)
@given(body=BODIES)
def test_worker_validation_equals_fastapis(body: Any) -> None:
    payload = encode(body)
    status, reference = reference_answer(payload)
    worker_status, answer = worker_answer(payload)
    assert worker_status == status, (answer, reference)
    if status == 422:
        assert loc_types(answer) == loc_types(reference)
        assert answer["detail"] == reference["detail"]


@pytest.fixture(scope="module")
def fuzz_tenant(stack: Stack) -> Tenant:
    return stack.new_tenant()


@settings(max_examples=25, deadline=None)
@given(body=BODIES)
def test_service_answers_generated_bodies_as_fastapi(fuzz_tenant: Tenant, body: Any) -> None:
    payload = encode(body)
    assume(len(payload) <= MAX_BODY_BYTES)  # over it is the edge's 413
    status, reference = reference_answer(payload)
    response = fuzz_tenant.request(
        "POST",
        "/v1/assistants",
        data=payload,
        headers={"Content-Type": "application/json", "Prefer": "wait=30"},
    )
    assert response.status_code == status, (response.text, reference)
    if status == 422:
        assert loc_types(response.json()) == loc_types(reference)
        assert response.json()["detail"] == reference["detail"]
