"""Request keys and the answer cache: identity from what was sent, found again whatever the row's id."""

from __future__ import annotations

import json

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.core import answers
from tasks.core.collect import echo_mismatches
from tasks.core.formats import FAMILIES, InferenceSettings, model_input_dtype, request_line_expr

CLAUDE = FAMILIES["claude"]
SETTINGS = InferenceSettings(max_tokens=64, temperature=0.5, system="be brief")


def lines(ids: list[str], prompts: list[str]) -> pl.DataFrame:
    frame = pl.DataFrame({"record_id": ids, "prompt": prompts})
    line = pl.col("line")
    return frame.with_columns(request_line_expr(CLAUDE, SETTINGS)).with_columns(
        answers.request_key_expr(answers.model_input_json_expr(line), "m", "InvokeModel").alias(answers.KEY)
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1), st.text()), min_size=1, max_size=5))
def test_the_key_is_the_sha256_of_the_model_input_exactly_as_sent_whatever_the_id(rows) -> None:
    frame = lines([r for r, _ in rows], [p for _, p in rows])
    for line, key in frame.select("line", answers.KEY).iter_rows():
        model_input = json.dumps(json.loads(line)["modelInput"], separators=(",", ":"), ensure_ascii=False)
        assert answers.request_key(answers.model_input_json_of(line), "m", "InvokeModel") == key
        assert json.loads(answers.model_input_json_of(line)) == json.loads(model_input)
    # The id is not part of the key: the same prompt under another id is the same request.
    renamed = lines(["other-" + r for r, _ in rows], [p for _, p in rows])
    assert renamed[answers.KEY].to_list() == frame[answers.KEY].to_list()


def test_model_and_invocation_type_are_part_of_the_key() -> None:
    model_input = '{"inputText":"x"}'
    keys = {answers.request_key(model_input, m, t) for m in ("a", "b") for t in ("InvokeModel", "Converse")}
    assert len(keys) == 4


def test_an_output_that_echoes_another_request_is_caught_by_record() -> None:
    sent = lines(["a", "b", "c"], ["cats", "dogs", "owls"])
    scope = answers.RequestScope("m", "InvokeModel", model_input_dtype(CLAUDE, SETTINGS))
    keys = sent.select("record_id", answers.KEY)

    def output(record_id: str, line: str) -> str:
        echo = json.loads(line)["modelInput"]
        return json.dumps({"recordId": record_id, "modelInput": echo, "modelOutput": {"content": []}})

    lines_ = dict(zip(sent["record_id"], sent["line"], strict=True))
    faithful = "\n".join(output(r, lines_[r]) for r in ("c", "a", "b")).encode()
    assert echo_mismatches(faithful, keys, scope).to_list() == []
    # The echo's key order is Bedrock's business: decoded with our type, it re-encodes to the sent bytes.
    reordered = "\n".join(json.dumps({"modelInput": dict(reversed(json.loads(lines_[r])["modelInput"].items())),
                                      "recordId": r}) for r in ("a", "b")).encode()
    assert echo_mismatches(reordered, keys, scope).to_list() == []
    swapped = "\n".join([output("a", lines_["b"]), output("b", lines_["a"]), output("c", lines_["c"])]).encode()
    assert sorted(echo_mismatches(swapped, keys, scope).to_list()) == ["a", "b"]
