"""One benchmark stage per fresh interpreter: `python -m bench.stages STAGE 'JSON-ARGS'` prints one JSON line.

A fresh process per stage keeps peak RSS (`ru_maxrss`) to that stage alone. The endpoint's address comes
from the environment (AWS_ENDPOINT_URL...), as in the flow.

Stages and what they time (wall clock, `time.perf_counter`):
- `prepare`: `load_source` + `prepare_run` (render, encode, plan, write + upload JSONL shards and snapshots);
  with `cache_uri`, the answer cache's keys are loaded first (timed too) and looked up in the same pass.
- `fill_cache`: an answer cache holding every request of a prepared run (the snapshots' keys, a short
  answer each), for `prepare` with a warm cache.
- `prepare_floor`: Polars reading the same input Parquet, then writing NDJSON of the same total size and
  object count as prepare's JSONL + snapshots and uploading it the way prepare does.
- `collect`: per shard, `collect_shard` + `write_result_part` (`.jsonl.out` -> joined Parquet on S3).
  `prepare` and `collect` take `prompt_id` (default `question_answering`) and `structured` (the template's
  `output_schema` forced and decoded, or left out): the `structured` benchmark runs both on the same rows.
- `collect_floor`: reading the same `.jsonl.out` objects (boto3 `get_object`, as collect does) and snapshots
  (Polars `read_parquet`) from S3, then writing + uploading Parquet parts (zstd, the lines themselves) of the
  same size as collect's result parts.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl
from boto3.s3.transfer import TransferConfig

from bench.common import peak_rss_mb
from tasks.aws import AwsSettings, client, split_s3_uri, storage_options


class _Notes(logging.Handler):
    """Keeps what the measured code logs (prepare logs its own phase timings)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


NOTES = _Notes()
logging.getLogger("tasks").addHandler(NOTES)
logging.getLogger("tasks").setLevel(logging.INFO)

MODELS = {"claude": "anthropic.claude-3-haiku-20240307-v1:0", "titan": "amazon.titan-embed-text-v2:0"}


def _size(uri: str, aws: AwsSettings) -> int:
    bucket, key = split_s3_uri(uri)
    return int(client("s3", aws).head_object(Bucket=bucket, Key=key)["ContentLength"])


def prepare(args: dict[str, Any]) -> dict[str, Any]:
    from tasks.core.formats import InferenceSettings, resolve_family
    from tasks.core.plan import Quotas
    from tasks.core.prepare import prepare_run
    from tasks.core.sources import SourceSpec, load_source
    from tasks.core.templates import load_template

    aws = AwsSettings.from_env()
    model = args["model"]
    family = resolve_family(MODELS[model])
    template = load_template(prompt_id=args.get("prompt_id", "question_answering")) if model == "claude" else None
    if template is not None and args.get("structured"):
        family = family.structured(template.output_schema)
    settings = InferenceSettings(
        max_tokens=(template.max_tokens or 512) if template else 512,
        system=template.system if template else None,
        dimensions=1024,
    )
    quotas = Quotas(max_records=args.get("max_records", 50_000), slots=args.get("slots", 20))
    started = time.perf_counter()
    answered = None
    if args.get("cache_uri"):
        from tasks.core.answers import cached_keys

        answered = cached_keys(args["cache_uri"], aws)
    load_keys_s = time.perf_counter() - started
    source = load_source(SourceSpec(input_path=args["data"]), aws)
    run = prepare_run(
        source,
        family=family,
        settings=settings,
        template=template,
        run_uri=args["run_uri"],
        aws=aws,
        quotas=quotas,
        input_column="input_text",
        model_id=MODELS[model],
        answered=answered,
    )
    elapsed = time.perf_counter() - started
    shards = [
        {"name": s.name, "input_uri": s.input_uri, "snapshot_uri": s.snapshot_uri, "records": s.records,
         "bytes": s.bytes}
        for s in run.shards
    ]
    snapshot_bytes = [_size(s["snapshot_uri"], aws) for s in shards]
    return {
        "seconds": elapsed,
        "rows": run.total_rows,
        "jsonl_bytes": sum(s["bytes"] for s in shards),
        "snapshot_bytes": sum(snapshot_bytes),
        "shard_bytes": [s["bytes"] + b for s, b in zip(shards, snapshot_bytes, strict=True)],
        "shard_records": [s["records"] for s in shards],
        "input_bytes": Path(args["data"]).stat().st_size,
        "shards": shards,
        "plan": run.plan.reason,
        "cached_rows": run.cached_rows,
        "load_cache_keys_s": load_keys_s,
        "log": NOTES.messages[-5:],
        "peak_rss_mb": peak_rss_mb(),
    }


def _upload(path: Path, uri: str, aws: AwsSettings) -> None:
    from boto3.s3.transfer import TransferConfig

    bucket, key = split_s3_uri(uri)
    chunk = 64 * 1024 * 1024
    config = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk, max_concurrency=4)
    client("s3", aws).upload_file(str(path), bucket, key, Config=config)
    path.unlink()


def prepare_floor(args: dict[str, Any]) -> dict[str, Any]:
    """Read the input; write and upload NDJSON objects of prepare's sizes (JSONL + snapshot per shard)."""
    aws = AwsSettings.from_env()
    sizes: list[int] = args["shard_bytes"]
    records: list[int] = args["shard_records"]
    started = time.perf_counter()
    frame = pl.read_parquet(args["data"])
    read_s = time.perf_counter() - started
    # Every row's NDJSON is its input columns plus a constant pad sized so the total matches prepare's bytes.
    base = frame.head(20_000)
    buffer = io.BytesIO()
    base.write_ndjson(buffer)
    per_row = buffer.tell() / max(base.height, 1)
    pad = max(0, int(sum(sizes) / max(sum(records), 1) - per_row - len(',"pad":""')))
    padded = frame.with_columns(pl.lit("x" * pad).alias("pad"))
    written = 0
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp, ThreadPoolExecutor(2) as pool:
        futures = []
        start = 0
        for i, n in enumerate(records):
            path = Path(tmp) / f"floor-{i:04d}.jsonl"
            padded.slice(start % max(frame.height, 1), n).write_ndjson(path)
            written += path.stat().st_size
            futures.append(pool.submit(_upload, path, f"{args['run_uri']}/floor/{path.name}", aws))
            start += n
        for future in futures:
            future.result()
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "read_seconds": read_s, "bytes_written": written, "peak_rss_mb": peak_rss_mb()}


def collect(args: dict[str, Any]) -> dict[str, Any]:
    from tasks.core.collect import collect_shard, write_result_part
    from tasks.core.formats import resolve_family
    from tasks.core.templates import load_template

    aws = AwsSettings.from_env()
    family = resolve_family(MODELS[args["model"]])
    if args.get("structured"):
        family = family.structured(load_template(prompt_id=args["prompt_id"]).output_schema)
    per_shard = []
    started = time.perf_counter()
    for job in args["jobs"]:
        t0 = time.perf_counter()
        result = collect_shard(
            family=family,
            output_prefix_uri=job["output_prefix_uri"],
            snapshot_uri=job["snapshot_uri"],
            input_file_name=job["input_file_name"],
            aws=aws,
        )
        part = write_result_part(result.frame, args["run_uri"], f"part-{job['name']}", aws)
        per_shard.append({"rows": part.rows, "ok": part.ok, "seconds": time.perf_counter() - t0,
                          "part_uri": part.uri, "problems": result.problems, "errors": part.error_counts})
        del result
    elapsed = time.perf_counter() - started
    part_bytes = [_size(p["part_uri"], aws) for p in per_shard]
    return {
        "seconds": elapsed,
        "rows": sum(p["rows"] for p in per_shard),
        "ok": sum(p["ok"] for p in per_shard),
        "part_bytes": part_bytes,
        "per_shard": per_shard,
        "peak_rss_mb": peak_rss_mb(),
    }


def collect_floor(args: dict[str, Any]) -> dict[str, Any]:
    """Read the same outputs and snapshots with Polars; write + upload Parquet parts of collect's sizes."""
    aws = AwsSettings.from_env()
    options = storage_options(aws)
    started = time.perf_counter()
    read_s = 0.0
    for job, target in zip(args["jobs"], args["part_bytes"], strict=True):
        t0 = time.perf_counter()
        bucket, key = split_s3_uri(job["output_uri"])
        body = client("s3", aws).get_object(Bucket=bucket, Key=key)["Body"].read()
        lines = pl.DataFrame({"line": body.decode().splitlines()})
        pl.read_parquet(job["snapshot_uri"], storage_options=options)
        read_s += time.perf_counter() - t0
        # The lines themselves, zstd-compressed, cut to the row count that gives the part's size.
        probe = io.BytesIO()
        sample = lines.head(2_000)
        sample.write_parquet(probe, compression="zstd")
        rows = max(1, int(target / max(probe.tell(), 1) * sample.height))
        reps = -(-rows // max(lines.height, 1))
        frame = (pl.concat([lines] * reps) if reps > 1 else lines).head(rows)
        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression="zstd")
        buffer.seek(0)
        bucket, key = split_s3_uri(f"{args['run_uri']}/floor/{job['name']}.parquet")
        config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
        client("s3", aws).upload_fileobj(buffer, bucket, key, Config=config)
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "read_seconds": read_s, "peak_rss_mb": peak_rss_mb()}


def fill_cache(args: dict[str, Any]) -> dict[str, Any]:
    from tasks.core.answers import CACHE_KEY, KEY, store

    aws = AwsSettings.from_env()
    answers = 0
    for i, uri in enumerate(args["snapshots"]):
        keys = pl.read_parquet(uri, columns=[KEY], storage_options=storage_options(aws))
        rows = keys.select(pl.col(KEY).alias(CACHE_KEY), pl.lit("cached answer").alias("response"),
                           pl.lit(100, pl.Int64).alias("input_tokens"), pl.lit(20, pl.Int64).alias("output_tokens"),
                           pl.lit("end_turn").alias("stop_reason"))
        answers += store(args["cache_uri"], f"bench-{i:04d}", rows, aws)
    return {"answers": answers}


STAGES = {f.__name__: f for f in (prepare, prepare_floor, collect, collect_floor, fill_cache)}

if __name__ == "__main__":
    result = STAGES[sys.argv[1]](json.loads(sys.argv[2]))
    print(json.dumps(result))
