"""Collect: every input row exactly once, whatever the job's outputs contain."""

from __future__ import annotations

import json

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.aws import AwsSettings, client, storage_options
from tasks.core.collect import (
    apply_repairs,
    collect_lines,
    collect_shard,
    mark_failed,
    mark_invalid,
    read_results,
    write_results,
)
from tasks.core.formats import FAMILIES, result_schema

CLAUDE = FAMILIES["claude"]
TITAN = FAMILIES["titan_embed"]
SNAPSHOT = pl.DataFrame({"record_id": [f"r{i}" for i in range(6)], "topic": [f"t{i}" for i in range(6)]})


def ok_line(record_id: str, text: str = "fine") -> str:
    output = {
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 5, "output_tokens": 7},
    }
    return json.dumps({"recordId": record_id, "modelInput": {"messages": []}, "modelOutput": output})


def error_line(record_id: str, code: int = 400, message: str = "Malformed input request") -> str:
    error = {"errorCode": code, "errorMessage": message}
    return json.dumps({"recordId": record_id, "modelInput": {}, "error": error})


def _put(aws: AwsSettings, bucket: str, key: str, body: bytes) -> None:
    client("s3", aws).put_object(Bucket=bucket, Key=key, Body=body)


def _snapshot_uri(aws: AwsSettings, bucket: str, frame: pl.DataFrame = SNAPSHOT) -> str:
    uri = f"s3://{bucket}/run/snapshots/shard-0001.parquet"
    frame.write_parquet(uri, storage_options=storage_options(aws))
    return uri


def test_collect_shard_reads_the_job_id_level(aws: AwsSettings, bucket: str) -> None:
    out = f"s3://{bucket}/run/jobs/shard-0001/abcdef123456/"
    lines = [ok_line("r3", "three"), error_line("r1", 429, "Too many requests"), ok_line("r0", "zero")]
    _put(aws, bucket, out[len(f"s3://{bucket}/") :] + "shard-0001.jsonl.out", "\n".join(lines).encode() + b"\n")
    manifest = {
        "totalRecordCount": 6,
        "processedRecordCount": 3,
        "successRecordCount": 2,
        "errorRecordCount": 1,
    }
    _put(aws, bucket, "run/jobs/shard-0001/abcdef123456/manifest.json.out", json.dumps(manifest).encode())
    result = collect_shard(
        family=CLAUDE,
        output_prefix_uri=out,
        snapshot_uri=_snapshot_uri(aws, bucket),
        input_file_name="shard-0001.jsonl",
        aws=aws,
    )
    frame = result.frame
    assert frame.columns == ["record_id", "topic", *result_schema(CLAUDE)]
    assert frame["record_id"].to_list() == SNAPSHOT["record_id"].to_list()  # input order, each once
    assert frame["response"].to_list() == ["zero", None, None, "three", None, None]
    assert frame["error_code"].to_list() == [None, "429", "missing", None, "missing", "missing"]
    assert frame["input_tokens"].to_list() == [5, None, None, 5, None, None]
    assert (result.ok, result.failed, result.manifest) == (2, 4, manifest)
    assert result.problems == ["3 record(s) missing from the output"]


def test_missing_output_file_marks_every_row(aws: AwsSettings, bucket: str) -> None:
    result = collect_shard(
        family=CLAUDE,
        output_prefix_uri=f"s3://{bucket}/run/jobs/shard-0001/zzz/",
        snapshot_uri=_snapshot_uri(aws, bucket),
        input_file_name="shard-0001.jsonl",
        aws=aws,
        missing_code="expired",
    )
    assert set(result.frame["error_code"]) == {"expired"} and result.frame.height == 6
    assert any("missing output file shard-0001.jsonl.out" in p for p in result.problems)
    assert any("missing manifest.json.out" in p for p in result.problems)


def test_embeddings_with_errors_collect_to_float32_lists(aws: AwsSettings, bucket: str) -> None:
    lines = [
        json.dumps({"recordId": "r0", "modelOutput": {"embedding": [0.5, 0.25], "inputTextTokenCount": 3}}),
        json.dumps({"recordId": "r1", "error": {"errorCode": 400, "errorMessage": "too long"}}),
    ]
    _put(aws, bucket, "run/out/j1/shard-0001.jsonl.out", "\n".join(lines).encode())
    result = collect_shard(
        family=TITAN,
        output_prefix_uri=f"s3://{bucket}/run/out/j1",
        snapshot_uri=_snapshot_uri(aws, bucket),
        input_file_name="shard-0001.jsonl",
        aws=aws,
    )
    assert result.frame.schema["embedding"] == pl.List(pl.Float32)
    assert result.frame["embedding"].to_list()[:2] == [[0.5, 0.25], None]
    assert result.frame["error_code"].to_list()[:2] == [None, "400"]


def test_duplicates_collapse_preferring_a_success_and_strangers_are_reported() -> None:
    lines = [error_line("r0", 500), ok_line("r0", "second try"), ok_line("r1", "a"), ok_line("r1", "b")]
    lines += [ok_line("someone-else"), "{broken", ok_line(f"r{2}")]
    result = collect_lines(pl.DataFrame({"line": lines}), SNAPSHOT, CLAUDE)
    assert result.frame["response"].to_list()[:3] == ["second try", "a", "fine"]
    assert "1 output recordId(s) match no input row" in result.problems
    assert "1 output line(s) with no readable recordId (cannot be matched to a row)" in result.problems
    assert "2 duplicate output record(s) collapsed" in result.problems


def test_mark_failed_and_mark_invalid(aws: AwsSettings, bucket: str) -> None:
    failed = mark_failed(_snapshot_uri(aws, bucket), "job_failed", "job x ended Failed", TITAN, aws)
    assert failed.columns == ["record_id", "topic", *result_schema(TITAN)]
    assert set(failed["error_code"]) == {"job_failed"} and failed.height == 6
    invalid_uri = f"s3://{bucket}/run/invalid.parquet"
    refused = pl.DataFrame({"record_id": ["x"], "topic": [None], "input_error": ["column 'topic' is null"]})
    refused.write_parquet(invalid_uri, storage_options=storage_options(aws))
    marked = mark_invalid(invalid_uri, CLAUDE, aws)
    assert marked.row(0, named=True) == {
        "record_id": "x",
        "topic": None,
        "response": None,
        "error_code": "invalid_input",
        "error_message": "column 'topic' is null",
        "input_tokens": None,
        "output_tokens": None,
        "stop_reason": None,
    }


def test_write_results_parts_and_manifest(aws: AwsSettings, bucket: str) -> None:
    first = collect_lines(pl.DataFrame({"line": [ok_line("r0")]}), SNAPSHOT.head(2), CLAUDE).frame
    second = collect_lines(pl.DataFrame({"line": [ok_line("r2")]}), SNAPSHOT.slice(2, 2), CLAUDE).frame
    results_uri = write_results([first, second], f"s3://{bucket}/run", aws)
    assert results_uri == f"s3://{bucket}/run/results/"
    everything = read_results(f"s3://{bucket}/run", aws).collect().sort("record_id")
    assert everything["record_id"].to_list() == ["r0", "r1", "r2", "r3"]
    body = client("s3", aws).get_object(Bucket=bucket, Key="run/results/manifest.json")["Body"].read()
    manifest = json.loads(body)
    assert [p["name"] for p in manifest["parts"]] == ["part-0001", "part-0002"]
    assert (manifest["rows"], manifest["ok"], manifest["failed"]) == (4, 2, 2)
    assert manifest["error_counts"] == {"missing": 2}


def test_a_smaller_plan_deletes_the_parts_an_earlier_plan_left_and_keeps_its_own(aws: AwsSettings, bucket: str) -> None:
    from tasks.core.collect import write_result_part
    from tasks.steps.finalize import remove_stale_parts

    frame = collect_lines(pl.DataFrame({"line": [ok_line("r0")]}), SNAPSHOT.head(1), CLAUDE).frame
    run = f"s3://{bucket}/run"
    parts = [write_result_part(frame, run, f"part-{i:04d}", aws) for i in range(1, 6)]
    client("s3", aws).put_object(Bucket=bucket, Key="run/results/notes.txt", Body=b"not a part")
    assert sorted(remove_stale_parts(run, parts[:2], aws)) == [f"run/results/part-{i:04d}.parquet" for i in (3, 4, 5)]
    left = client("s3", aws).list_objects_v2(Bucket=bucket, Prefix="run/results/")["Contents"]
    assert sorted(o["Key"] for o in left) == ["run/results/notes.txt", "run/results/part-0001.parquet",
                                              "run/results/part-0002.parquet"]


def test_apply_repairs_replaces_only_the_rerun_rows() -> None:
    base = collect_lines(pl.DataFrame({"line": [ok_line("r0"), error_line("r1", 429)]}), SNAPSHOT, CLAUDE).frame
    repaired = collect_lines(
        pl.DataFrame({"line": [ok_line("r1", "repaired")]}),
        SNAPSHOT.filter(pl.col("record_id") == "r1"),
        CLAUDE,
    ).frame
    merged = apply_repairs(base, repaired)
    assert merged.columns == base.columns and merged.height == base.height
    assert merged["response"].to_list()[:2] == ["fine", "repaired"]
    assert merged["error_code"].to_list()[1:3] == [None, "missing"]


# ------------------------------------------------------------------------------------------ property

IDS = [f"r{i}" for i in range(40)]


@st.composite
def job_outputs(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A snapshot's ids and an output file: subset, shuffled, duplicated, malformed, errors, strangers."""
    n = draw(st.integers(0, len(IDS)))
    ids = IDS[:n]
    kinds = st.sampled_from(["ok", "error", "malformed", "truncated", "missing"])
    lines: list[str] = []
    for record_id in ids:
        for _ in range(draw(st.integers(1, 3))):  # duplicates
            kind = draw(kinds)
            if kind == "ok":
                lines.append(ok_line(record_id, draw(st.text(max_size=20))))
            elif kind == "error":
                lines.append(error_line(record_id, draw(st.sampled_from([400, 429, 500]))))
            elif kind == "truncated":
                full = ok_line(record_id)
                lines.append(full[: draw(st.integers(1, len(full) - 1))])
            elif kind == "malformed":
                junk = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")
                lines.append(draw(st.text(alphabet=junk, max_size=30)))
    lines += [ok_line(f"stranger-{i}") for i in range(draw(st.integers(0, 3)))]
    lines = list(draw(st.permutations(lines)))
    return ids, lines


@settings(max_examples=100, deadline=None)
@given(job_outputs())
def test_collect_returns_each_input_row_exactly_once(case: tuple[list[str], list[str]]) -> None:
    ids, lines = case
    snapshot = pl.DataFrame(
        {"record_id": ids, "payload": [f"p-{i}" for i in ids]}, schema_overrides={"record_id": pl.String}
    )
    result = collect_lines(pl.DataFrame({"line": lines}, schema={"line": pl.String}), snapshot, CLAUDE)
    from_file = collect_lines("\n".join(lines).encode(), snapshot, CLAUDE)  # the path collect_shard takes
    assert from_file.frame.equals(result.frame)
    frame = result.frame
    assert frame["record_id"].to_list() == ids  # each input row once, in input order
    assert frame["payload"].to_list() == snapshot["payload"].to_list()
    has_result = frame["response"].is_not_null()
    has_error = frame["error_code"].is_not_null()
    assert (has_result ^ has_error).all()  # a result or an error, never both, never neither
    assert result.ok + result.failed == len(ids)
    successes = {json.loads(line)["recordId"] for line in lines if _is_success(line)}
    assert set(frame.filter(has_result)["record_id"]) == successes & set(ids)


def _is_success(line: str) -> bool:
    try:
        return "modelOutput" in json.loads(line)
    except (ValueError, TypeError):
        return False


@pytest.mark.parametrize("family", ["nova", "llama", "mistral", "mistral_chat", "converse", "titan_embed"])
def test_every_family_collects_an_empty_output(family: str) -> None:
    result = collect_lines(pl.DataFrame(schema={"line": pl.String}), SNAPSHOT, FAMILIES[family])
    assert result.frame.height == 6 and set(result.frame["error_code"]) == {"missing"}
