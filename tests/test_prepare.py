"""prepare_run against a real S3 endpoint (moto server): what lands where, and what never gets uploaded."""

from __future__ import annotations

import hashlib
import json

import polars as pl
import pytest

from tasks.aws import AwsSettings, client, storage_options
from tasks.core.answers import request_key
from tasks.core.formats import FAMILIES, InferenceSettings
from tasks.core.plan import Quotas
from tasks.core.prepare import check_s3_uri, load_prepared, prepare_run
from tasks.core.sources import SourceError, with_record_id
from tasks.core.templates import PromptTemplate, TemplateError, load_template

JOKE = load_template("joke_about_topic")
SMALL = Quotas(min_records=10, max_records=100, slots=4)


def _topics(n: int, *, null_every: int = 0) -> pl.LazyFrame:
    topics = [None if null_every and i % null_every == 0 else f"topic {i}" for i in range(n)]
    return with_record_id(pl.LazyFrame({"topic": topics, "n": list(range(n))}))


def _get(aws: AwsSettings, uri: str) -> bytes:
    bucket, key = uri[5:].split("/", 1)
    return client("s3", aws).get_object(Bucket=bucket, Key=key)["Body"].read()


def _keys(aws: AwsSettings, bucket: str) -> list[str]:
    listed = client("s3", aws).list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _prepare(lf: pl.LazyFrame, aws: AwsSettings, run_uri: str, **kwargs):  # type: ignore[no-untyped-def]
    options = {
        "family": FAMILIES["claude"],
        "settings": InferenceSettings(),
        "template": JOKE,
        "quotas": SMALL,
    }
    options.update(kwargs)
    return prepare_run(lf, run_uri=run_uri, aws=aws, **options)


def test_shards_snapshots_and_manifest_land_under_the_run(aws: AwsSettings, bucket: str) -> None:
    run = _prepare(_topics(400), aws, f"s3://{bucket}/runs/k1")
    assert [s.records for s in run.shards] == [100] * 4 and run.plan.waves == 1
    assert _keys(aws, bucket) == sorted(
        ["runs/k1/prepared.json"]
        + [f"runs/k1/input/{s.stem}.jsonl" for s in run.shards]
        + [f"runs/k1/snapshots/{s.stem}.parquet" for s in run.shards]
    )
    # Files are named by what they hold: shard-0001-<first 12 hex of the content's SHA-256>.
    assert [s.stem for s in run.shards] == [f"shard-000{i}-{s.content_hash[:12]}" for i, s in enumerate(run.shards, 1)]
    shard = run.shards[1]
    body = _get(aws, shard.input_uri)
    assert len(body) == shard.bytes and hashlib.sha256(body).hexdigest() == shard.content_hash
    lines = body.decode().splitlines()
    first = json.loads(lines[0])
    assert first["recordId"] == "r0000000100"
    assert first["modelInput"]["messages"][0]["content"][0]["text"] == (
        "Tell me a joke about topic 100 in less than 50 words."
    )
    assert first["modelInput"]["temperature"] == 0.8  # the template's default filled the unset option
    snapshot = pl.read_parquet(shard.snapshot_uri, storage_options=storage_options(aws))
    assert snapshot.columns == ["record_id", "topic", "n", "__request_key"]
    # Each row's request key: SHA-256 of (model, invocation type, the modelInput exactly as sent).
    model_input = lines[0][lines[0].index('"modelInput":') + len('"modelInput":'):-1]
    assert snapshot["__request_key"][0] == request_key(model_input, "", "InvokeModel")
    assert snapshot["record_id"].to_list() == [json.loads(line)["recordId"] for line in lines]
    assert load_prepared(run.run_uri, aws) == run


def test_null_keys_go_to_invalid_parquet_not_to_a_shard(aws: AwsSettings, bucket: str) -> None:
    run = _prepare(_topics(300, null_every=10), aws, f"s3://{bucket}/runs/k2")
    assert (run.total_rows, run.invalid_rows) == (300, 30)
    assert sum(s.records for s in run.shards) == 270
    invalid = pl.read_parquet(run.invalid_uri, storage_options=storage_options(aws))
    assert invalid.columns == ["record_id", "topic", "n", "input_error"]
    assert set(invalid["input_error"]) == {"column 'topic' is null"}
    sent = b"".join(_get(aws, s.input_uri) for s in run.shards).decode()
    assert "r0000000010" not in sent and "None" not in sent
    for shard in run.shards:  # with refused rows interleaved, each snapshot still matches its JSONL
        snapshot = pl.read_parquet(shard.snapshot_uri, storage_options=storage_options(aws))
        line_ids = [json.loads(line)["recordId"] for line in _get(aws, shard.input_uri).decode().splitlines()]
        assert snapshot["record_id"].to_list() == line_ids and len(line_ids) == shard.records


def test_too_few_rows_go_on_demand(aws: AwsSettings, bucket: str) -> None:
    run = _prepare(_topics(7), aws, f"s3://{bucket}/runs/k3")
    assert run.plan.on_demand and run.shards == [] and run.on_demand_uri
    rows = pl.read_parquet(run.on_demand_uri, storage_options=storage_options(aws))
    assert rows.columns == ["record_id", "topic", "n", "prompt", "line", "__request_key"] and rows.height == 7
    assert json.loads(rows["line"][0])["recordId"] == rows["record_id"][0]
    assert not any(k.startswith("runs/k3/input/") for k in _keys(aws, bucket))


def test_same_input_same_shards_and_hashes(aws: AwsSettings, bucket: str) -> None:
    a = _prepare(_topics(250), aws, f"s3://{bucket}/runs/a")
    b = _prepare(_topics(250), aws, f"s3://{bucket}/runs/b")
    assert [(s.records, s.bytes, s.content_hash) for s in a.shards] == [
        (s.records, s.bytes, s.content_hash) for s in b.shards
    ]
    assert a.plan == b.plan and a.estimated_input_tokens == b.estimated_input_tokens


def test_max_num_jobs_sends_the_first_rows_only(aws: AwsSettings, bucket: str) -> None:
    run = _prepare(_topics(1000), aws, f"s3://{bucket}/runs/cap", max_num_jobs=2)
    assert [s.records for s in run.shards] == [100, 100] and run.dropped_rows == 800
    last = _get(aws, run.shards[-1].input_uri).decode().splitlines()[-1]
    assert json.loads(last)["recordId"] == "r0000000199"


def test_bad_inputs_fail_before_anything_is_uploaded(aws: AwsSettings, bucket: str) -> None:
    with pytest.raises(TemplateError, match="'topic'"):
        _prepare(with_record_id(pl.LazyFrame({"subject": ["x"] * 50})), aws, f"s3://{bucket}/runs/bad")
    duplicated = pl.LazyFrame({"record_id": ["a", "b", "a"] * 20, "topic": ["t"] * 60})
    with pytest.raises(SourceError, match="'a' x40"):
        _prepare(duplicated, aws, f"s3://{bucket}/runs/bad")
    with pytest.raises(ValueError, match="not a valid Bedrock s3Uri"):
        _prepare(_topics(50), aws, f"s3://{bucket}/runs/date=2024-01-01")
    assert _keys(aws, bucket) == []


def test_s3_uri_check_follows_bedrocks_pattern() -> None:
    assert check_s3_uri("s3://my-bucket/runs/abc123/input/shard-0001.jsonl")
    for bad in (
        "s3://b/k=v/x.jsonl",
        "s3://bucket/a b.jsonl",
        "s3://bucket/a+b",
        "s3://bucket/a:b",
        "s3://Bucket/x",
    ):
        with pytest.raises(ValueError):
            check_s3_uri(bad)


def test_embeddings_read_input_text_and_estimate_tokens(aws: AwsSettings, bucket: str) -> None:
    lf = with_record_id(pl.LazyFrame({"input_text": ["abcd" * 10, "é" * 6] * 10}))
    run = prepare_run(
        lf,
        family=FAMILIES["titan_embed"],
        settings=InferenceSettings(dimensions=256),
        template=None,
        run_uri=f"s3://{bucket}/runs/emb",
        aws=aws,
        quotas=SMALL,
    )
    assert run.estimated_input_tokens == 10 * (40 // 4) + 10 * (12 // 4)  # ceil(utf-8 bytes / 4)
    body = json.loads(_get(aws, run.shards[0].input_uri).decode().splitlines()[1])["modelInput"]
    assert body == {"inputText": "é" * 6, "dimensions": 256, "normalize": True}


def test_an_input_column_named_prompt_survives(aws: AwsSettings, bucket: str) -> None:
    lf = with_record_id(pl.LazyFrame({"prompt": [f"p{i}" for i in range(20)]}))
    template = PromptTemplate.from_text("wrap", "Answer: {prompt}")
    run = _prepare(lf, aws, f"s3://{bucket}/runs/p", template=template)
    snapshot = pl.read_parquet(run.shards[0].snapshot_uri, storage_options=storage_options(aws))
    assert snapshot["prompt"][0] == "p0"
    assert "Answer: p0" in _get(aws, run.shards[0].input_uri).decode()


def test_large_shards_upload_in_multiple_parts(aws: AwsSettings, bucket: str) -> None:
    text = "x" * 60_000  # ~12 MB over 200 rows, 5 MB parts -> a 3-part upload
    lf = with_record_id(pl.LazyFrame({"topic": [f"{i} {text}" for i in range(200)]}))
    run = _prepare(
        lf,
        aws,
        f"s3://{bucket}/runs/big",
        quotas=Quotas(min_records=100, slots=1),
        multipart_chunk_bytes=5 * 1024 * 1024,
    )
    (shard,) = run.shards
    bucket_name, key = shard.input_uri[5:].split("/", 1)
    head = client("s3", aws).head_object(Bucket=bucket_name, Key=key)
    assert head["ContentLength"] == shard.bytes > 10 * 1024 * 1024
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_staging_in_row_chunks_changes_nothing_but_memory(
    aws: AwsSettings, bucket: str, tmp_path, monkeypatch: pytest.MonkeyPatch, fmt: str  # type: ignore[no-untyped-def]
) -> None:
    """Prepare stages STAGE_CHUNK_ROWS rows per sink (peak RSS flat in N): the shards must not notice."""
    import tasks.core.prepare as prepare

    frame = pl.DataFrame({"topic": [None if i % 13 == 0 else f"topic {i}" for i in range(437)]})
    path = tmp_path / f"topics.{fmt}"
    frame.write_parquet(path) if fmt == "parquet" else frame.write_csv(path)
    scan = pl.scan_parquet(path) if fmt == "parquet" else pl.scan_csv(path)
    whole = _prepare(with_record_id(scan), aws, f"s3://{bucket}/runs/{fmt}-whole")
    monkeypatch.setattr(prepare, "STAGE_CHUNK_ROWS", 50)  # 9 parts, the last one short
    chunked = _prepare(with_record_id(scan), aws, f"s3://{bucket}/runs/{fmt}-chunked")
    assert [(s.records, s.content_hash) for s in chunked.shards] == [(s.records, s.content_hash) for s in whole.shards]
    assert (chunked.total_rows, chunked.invalid_rows) == (437, 34)
    snapshots = pl.concat(pl.read_parquet(s.snapshot_uri, storage_options=storage_options(aws)) for s in chunked.shards)
    invalid = pl.read_parquet(chunked.invalid_uri, storage_options=storage_options(aws))
    ids = pl.concat([snapshots["record_id"], invalid["record_id"]]).sort()
    assert ids.to_list() == [f"r{i:010d}" for i in range(437)]


def test_requests_the_answer_cache_holds_are_not_sent_and_the_rest_are_planned(aws: AwsSettings, bucket: str) -> None:
    first = _prepare(_topics(400), aws, f"s3://{bucket}/runs/c1", model_id="m")
    keys = pl.concat([pl.read_parquet(s.snapshot_uri, storage_options=storage_options(aws)) for s in first.shards])
    answered = keys.filter(pl.col("record_id") < "r0000000300").get_column("__request_key")
    # Same requests under other ids (rows inserted at the top shift every generated id): found by content.
    shifted = _topics(400).with_columns(("x" + pl.col("record_id")).alias("record_id"))
    again = _prepare(shifted, aws, f"s3://{bucket}/runs/c2", model_id="m", answered=answered)
    assert (again.cached_rows, sum(s.records for s in again.shards)) == (300, 100)
    cached = pl.read_parquet(again.cached_uri, storage_options=storage_options(aws))
    assert cached.height == 300 and set(cached["__request_key"]) == set(answered)
    sent = "".join(_get(aws, s.input_uri).decode() for s in again.shards)
    assert "xr0000000300" in sent and "xr0000000299" not in sent
    # Another model is another request: nothing of the first model's answers applies.
    other = _prepare(shifted, aws, f"s3://{bucket}/runs/c3", model_id="other", answered=answered)
    assert other.cached_rows == 0 and sum(s.records for s in other.shards) == 400
