"""What happens inside one batch job: read and validate its input from S3, answer every record, inject
record faults, and write `{out}/{jobId}/{file}.out` plus `manifest.json.out` as Bedrock lays them out.

S3 is reached through boto3 against an endpoint (the emulator's own moto by default), so the same code
would run against any S3.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import polars as pl
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from emulator.families import Family
from emulator.profile import Profile
from emulator.records import first_invalid_line, generate, output_lines, split_lines

MULTIPART = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=4)

RETRYABLE_ERRORS = {
    429: "Too many requests, please wait before trying again.",
    500: "The system encountered an unexpected error during processing. Try your request again.",
}
NON_RETRYABLE_ERROR = (
    "Malformed input request: the model could not process this record, "
    "please reformat your input and try again."
)


class InputInvalid(Exception):
    """The job's input fails Bedrock's validation; the job ends Failed with this message."""


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


@dataclass
class InputFile:
    key: str
    lines: list[bytes]

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


@dataclass
class JobInput:
    files: list[InputFile] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(f.lines) for f in self.files)


def _access_denied(uri: str) -> InputInvalid:
    return InputInvalid(
        f"Amazon Bedrock could not access {uri}. Check that the input location exists and that the service "
        "role has s3:GetObject and s3:ListBucket permissions on it."
    )


def load_input(s3: Any, uri: str, profile: Profile) -> JobInput:
    """Read a `.jsonl` object, or every `.jsonl` object under a prefix, and apply Bedrock's input checks."""
    bucket, key = split_uri(uri)
    keys: list[tuple[str, int]] = []
    try:
        if key and not key.endswith("/"):
            try:
                head = s3.head_object(Bucket=bucket, Key=key)
                keys = [(key, int(head["ContentLength"]))]
            except ClientError as exc:
                if exc.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
                    raise
        if not keys:
            prefix = f"{key.rstrip('/')}/" if key else ""
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys += [
                    (o["Key"], int(o["Size"]))
                    for o in page.get("Contents", [])
                    if o["Key"].endswith(".jsonl")
                ]
    except ClientError as exc:
        raise _access_denied(uri) from exc
    if not keys:
        raise InputInvalid(
            f"No input file was found at {uri}. Provide a .jsonl file or a folder holding .jsonl files."
        )
    job_input = JobInput()
    for name, size in keys:
        if size > profile.max_file_bytes:
            raise InputInvalid(
                f"The input file s3://{bucket}/{name} is {size} bytes, which exceeds the maximum input file "
                f"size of {profile.max_file_bytes} bytes."
            )
        data = s3.get_object(Bucket=bucket, Key=name)["Body"].read()
        lines = split_lines(data)
        bad = first_invalid_line(lines)
        if bad is not None:
            raise InputInvalid(
                f"Invalid JSON in line {bad[0]} of s3://{bucket}/{name}: {bad[1]}. "
                "Each line of the input file must be a JSON object."
            )
        if len(lines) > profile.max_records:
            raise InputInvalid(
                f"The input file s3://{bucket}/{name} has {len(lines)} records, which exceeds the maximum of "
                f"{profile.max_records} records per input file."
            )
        job_input.files.append(InputFile(name, lines))
    if job_input.total > profile.max_records:
        raise InputInvalid(
            f"The job has {job_input.total} records, which exceeds the maximum of {profile.max_records} "
            "records per batch inference job."
        )
    if job_input.total < profile.min_records:
        raise InputInvalid(
            f"The job has {job_input.total} records, which is fewer than the minimum of "
            f"{profile.min_records} records per batch inference job."
        )
    return job_input


def answer(
    job_input: JobInput, family: Family, model_id: str, job_name: str, profile: Profile
) -> pl.DataFrame:
    """Every record's answer with faults applied, in processing order (a seeded shuffle, as Bedrock's
    output order is not the input's).

    Columns: file, line (the output line), ok, input_tokens, output_tokens.
    """
    frames = [
        generate(f.lines, family, model_id).with_columns(file=pl.lit(i, pl.Int32))
        for i, f in enumerate(job_input.files)
    ]
    df = with_record_faults(pl.concat(frames), profile, job_name)
    if profile.shuffle_output:
        rng = np.random.default_rng(int(profile.draw("order", job_name) * 2**63))
        df = df[rng.permutation(len(df))]
    return df.select(
        "file",
        output_lines(df).alias("line"),
        pl.col("error_code").is_null().alias("ok"),
        "input_tokens",
        "output_tokens",
    )


def with_record_faults(df: pl.DataFrame, profile: Profile, job_name: str) -> pl.DataFrame:
    """Turn a seeded share of successful records into errors: 429/500 (retryable) or 400."""
    if profile.record_error_rate <= 0 or df.is_empty():
        return df
    key = pl.lit(f"{job_name}\x1f") + pl.col("record_id")
    unit = key.hash(seed=profile.seed).cast(pl.Float64) / 2.0**64
    second = key.hash(seed=profile.seed + 1).cast(pl.Float64) / 2.0**64
    hit = pl.col("error_code").is_null() & (unit < profile.record_error_rate)
    retryable = second < profile.retryable_error_share
    code = pl.when(retryable).then(pl.when(unit * 2 < profile.record_error_rate).then(429).otherwise(500))
    code = code.otherwise(400)
    message = (
        pl.when(code == 429)
        .then(pl.lit(RETRYABLE_ERRORS[429]))
        .when(code == 500)
        .then(pl.lit(RETRYABLE_ERRORS[500]))
        .otherwise(pl.lit(NON_RETRYABLE_ERROR))
    )
    return df.with_columns(
        pl.when(hit).then(None).otherwise(pl.col("output")).alias("output"),
        pl.when(hit).then(code).otherwise(pl.col("error_code")).alias("error_code"),
        pl.when(hit).then(message).otherwise(pl.col("error_message")).alias("error_message"),
        pl.when(hit).then(0).otherwise(pl.col("input_tokens")).alias("input_tokens"),
        pl.when(hit).then(0).otherwise(pl.col("output_tokens")).alias("output_tokens"),
    )


def write_outputs(
    s3: Any, output_uri: str, job_id: str, job_input: JobInput, answers: pl.DataFrame, processed: int,
    put: Callable[[str, str, bytes], bool] | None = None,
) -> dict[str, int]:
    """Write the first `processed` answers (processing order) and the manifest; return the manifest.

    `put(bucket, key, body)` may store an output file without HTTP (the server's moto backend); it
    returns False to leave the file to `s3`.
    """
    bucket, prefix = split_uri(output_uri)
    base = f"{prefix.rstrip('/')}/{job_id}" if prefix.strip("/") else job_id
    done = answers.head(processed)
    for i, f in enumerate(job_input.files):
        body = io.BytesIO()  # written by Polars: no Python string of the whole file
        done.filter(pl.col("file") == i).select("line").write_csv(body, include_header=False, quote_style="never")
        key = f"{base}/{f.name}.out"
        if put is None or not put(bucket, key, body.getvalue()):
            body.seek(0)
            s3.upload_fileobj(body, bucket, key, Config=MULTIPART)
    manifest = {
        "totalRecordCount": job_input.total,
        "processedRecordCount": processed,
        "successRecordCount": int(done["ok"].sum()),
        "errorRecordCount": processed - int(done["ok"].sum()),
        "inputTokenCount": int(done["input_tokens"].sum()),
        "outputTokenCount": int(done["output_tokens"].sum()),
    }
    s3.put_object(Bucket=bucket, Key=f"{base}/manifest.json.out", Body=orjson.dumps(manifest))
    return manifest
