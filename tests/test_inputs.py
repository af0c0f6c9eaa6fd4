"""What the edge reads from a request, checked without servers: `Prefer`,
JSON bodies and the batch reader."""

from __future__ import annotations

import io
import json
import tracemalloc
from typing import Any

import pytest
from pydantic import ValidationError

from api import batch_input
from api.batch_input import Reader, Request
from api.jsonbody import JsonInvalid, parse
from api.schemas import BatchCreate, detail_of
from api.waiting import parse_prefer


@pytest.mark.parametrize(
    ("values", "wait"),
    [
        ([], None),
        (["respond-async"], None),
        (["wait=10"], 10),
        (["respond-async, wait=5"], 5),
        (['wait="7"'], 7),
        (["Wait = 3 ; p=v"], 3),
        (["wait=0005"], 5),
        (["wait=999999"], 60),
        (["wait=" + "9" * 5000], 60),
        # RFC 7240 section 2: only the first instance of a preference counts,
        # in one header or across several.
        (["wait=5, wait=10"], 5),
        (["wait=10", "wait=5"], 10),
        (["respond-async", "wait=2", "wait=9"], 2),
        # A first wait that is not delta-seconds is ignored, and the later ones with it.
        (["wait=abc, wait=5"], None),
        (["wait, wait=5"], None),
        # delta-seconds are ASCII digits: int() would take these.
        (["wait=+5"], None),
        (["wait=1_0"], None),
        (["wait= 5 "], 5),  # spaces around the value are the header's, not the number's
        (["wait=\u0661\u0660"], None),
        (["wait=\u00b2"], None),
        (["wait=1e9"], None),
        (["wait=5.0"], None),
        (["wait="], None),
        (["wait=-"], None),
        # The one leniency: a negative whole number is no wait.
        (["wait=-1"], 0),
        (["wait=-5, wait=5"], 0),
    ],
)
def test_parse_prefer(values: list[str], wait: int | None) -> None:
    assert parse_prefer(values, 60) == wait


# -- what a single create refuses, located ------------------------------------------


@pytest.mark.parametrize(
    ("body", "at"),
    [
        # an escaped backslash, then text that looks like an escape: not the fault
        (b'{"a": "\\\\ud800", "b": "x\\ud800"}', b"\\ud800"),
        (b'{"a": "\\ud83d\\ude00", "b": "\\ud83d\\ud83d\\ude00"}', b"\\ud83d\\ud83d"),
        (b'{"a": "NaN", "b": NaN}', b"NaN}"),
        (b'{"a": "1e400", "b": -Infinity}', b"-Inf"),
        (b'{"a": [1, 2], "b": 99999999999999999999}', b"99999999999999999999"),
    ],
)
def test_a_create_locates_what_it_refuses_at_the_token(body: bytes, at: bytes) -> None:
    with pytest.raises(JsonInvalid) as refused:
        parse(body)
    assert refused.value.detail["loc"] == ["body", body.rindex(at)]


# -- the batch reader ---------------------------------------------------------------


def read_json_form(data: bytes, reads: int | None = None) -> tuple[Reader, list[Request]]:
    """Reader.json_document over `data`; `reads` makes every read that many bytes,
    so values and tokens are cut across reads."""
    reader = Reader(max_bytes=1 << 24, max_body_bytes=1 << 20)
    with pytest.MonkeyPatch.context() as patch:
        if reads is not None:
            patch.setattr(batch_input, "_READ", reads)
            patch.setattr(batch_input, "_KEEP", 2 * reads)
        requests = list(reader.json_document(io.BytesIO(data)))
    return reader, requests


def create_answer(data: bytes) -> dict[str, Any]:
    """The json_invalid entry a single create answers for the same bytes."""
    with pytest.raises(JsonInvalid) as refused:
        parse(data)
    return refused.value.detail


NOT_ACCEPTABLE = {
    "invalid UTF-8": b'{"requests": [{"body": {"model": "\xc3\xa9\xff"}}]}',
    "UTF-8 cut at the end": b'{"requests": [{"body": {}}]}\xe2\x82',
    "invalid UTF-8 after a syntax error": b'{"requests": [{"body": {]}}], "x": "\xff"}',
    "lone high surrogate": b'{"requests": [{"body": {"model": "\\ud800"}}]}',
    "lone low surrogate in a key": b'{"requests": [{"body": {}}], "\\udc00": 1}',
    "lone surrogate in metadata": b'{"metadata": {"k": "a\\ud83d"}, "requests": [{"body": {}}]}',
    "surrogate after an escaped backslash": (
        b'{"requests": [{"body": {"a": "\\\\ud800", "b": "\\udbff"}}]}'
    ),
    "syntax error after a lone surrogate": b'{"requests": [{"body": "\\ud800"}, {"body": tru}]}',
    "nested 65 deep": b'{"requests": [{"body": ' + b"[" * 62 + b"]" * 62 + b"}]}",
    "nested 10,000 deep": b'{"requests": [{"body": ' + b"[" * 10_000 + b"]" * 10_000 + b"}]}",
    "integer above int64": b'{"requests": [{"body": {"n": 9223372036854775808}}]}',
    "NaN after a string": b'{"requests": [{"body": {"a": "NaN", "b": NaN}}]}',
    "float overflow": b'{"requests": [{"body": 1e400}]}',
    "trailing comma in requests": b'{"requests": [{"body": {}},]}',
    "trailing comma in the document": b'{"requests": [{"body": {}}],}',
    "no comma between requests": b'{"requests": [{"body": {}} {"body": {}}]}',
    "no colon": b'{"requests" [{"body": {}}]}',
    "a key that is not a string": b"{requests: []}",
    "unterminated": b'{"requests": [{"body": {}}',
    "unterminated string": b'{"requests": [{"body": "abc',
    "trailing data": b'{"requests": [{"body": {}}]} {}',
    "whitespace only": b" \n ",
    "a BOM only": b"\xef\xbb\xbf",
    "a BOM and invalid UTF-8": b'\xef\xbb\xbf{"requests": [{"body": "\xff"}]}',
}


@pytest.mark.parametrize("reads", [None, 1, 5], ids=["whole", "1-byte-reads", "5-byte-reads"])
@pytest.mark.parametrize("data", list(NOT_ACCEPTABLE.values()), ids=list(NOT_ACCEPTABLE))
def test_json_form_that_is_not_acceptable_json_is_refused_as_a_create(
    data: bytes, reads: int | None
) -> None:
    reader, requests = read_json_form(data, reads)
    assert (reader.errors, reader.count, requests) == ([create_answer(data)], 0, [])


def test_an_empty_json_form_is_missing_as_an_empty_create() -> None:
    reader, requests = read_json_form(b"")
    assert reader.errors == [
        {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}
    ]
    assert requests == []


DOCUMENT = {
    "metadata": {"k": "v"},
    "requests": [
        {"custom_id": "a", "body": {"model": "m", "name": "\u00e9\U0001f600\u0000"}},
        {"method": "POST", "url": "/v1/assistants", "body": {"model": "m", "n": [1, 2.5, None]}},
        {"body": 5},  # the worker's to refuse, as for a single create
    ],
}


@pytest.mark.parametrize("reads", [None, 1, 3, 7])
def test_json_form_requests_are_read_across_reads(reads: int | None) -> None:
    data = json.dumps(DOCUMENT, indent=2).encode()
    reader, requests = read_json_form(b"\xef\xbb\xbf" + data, reads)
    assert reader.errors == []
    assert reader.metadata == {"k": "v"}
    assert [(r.custom_id, json.loads(r.body_text)) for r in requests] == [
        ("a", {"model": "m", "name": "\u00e9\U0001f600\u0000"}),
        ("1", {"model": "m", "n": [1, 2.5, None]}),
        ("2", 5),
    ]


def test_json_form_a_key_given_twice_keeps_its_last_value() -> None:
    data = (
        b'{"requests": [{"custom_id": "x", "body": {"a": "\\ud800"}}, [], {"custom_id": "x"}],'
        b' "metadata": {"a": 5}, "extra": 1,'
        b' "requests": [{"custom_id": "x", "body": {"model": "b"}}], "metadata": {"k": "v"}}'
    )
    reader, requests = read_json_form(data, 4)
    # What the first requests held, errors and a lone surrogate too, is gone with them.
    assert reader.errors == [
        {
            "type": "extra_forbidden",
            "loc": ["body", "extra"],
            "msg": "Extra inputs are not permitted",
            "input": 1,
        }
    ]
    assert reader.count == 1
    assert reader.metadata == {}  # not kept from a refused document
    reader, requests = read_json_form(data.replace(b' "extra": 1,', b""))
    assert (reader.errors, reader.count, reader.metadata) == ([], 1, {"k": "v"})
    assert [(r.custom_id, r.body_text) for r in requests] == [("x", '{"model":"b"}')]


@pytest.mark.parametrize(
    "document",
    [
        [{"body": {}}],
        "text",
        {"metadata": {"k": 1}},
        {"requests": {"body": {}}, "x": None},
        {
            "requests": [[], {"custom_id": "", "body": {}}],
            "metadata": {f"{i}": "" for i in range(17)},
        },
    ],
)
def test_json_form_errors_are_the_batch_create_models_own(document: Any) -> None:
    reader, requests = read_json_form(json.dumps(document).encode(), 3)
    with pytest.raises(ValidationError) as refused:
        BatchCreate.model_validate(document, from_attributes=True)
    assert reader.errors == detail_of(refused.value, "body")
    assert requests == []


def test_a_large_json_batch_is_read_without_being_held() -> None:
    request = {"body": {"model": "m", "instructions": "x" * 10_000}}
    data = json.dumps({"requests": [request] * 5_000}).encode()
    assert len(data) > 40 << 20
    tracemalloc.start()
    try:
        reader, count = Reader(max_bytes=1 << 27, max_body_bytes=1 << 20), 0
        for _ in reader.json_document(io.BytesIO(data)):
            count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (count, reader.errors) == (5_000, [])
    assert peak < 16 << 20  # the requests wait on disk past 8 MiB
