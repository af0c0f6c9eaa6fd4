"""What the edge reads from a request, checked without servers: `Prefer`,
the query models and the batch reader."""

from __future__ import annotations

import pytest

from api.jsonbody import JsonInvalid, parse
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
