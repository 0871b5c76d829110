"""What happens inside one batch job: read and validate its input, answer every record, inject record
faults, and write `{out}/{jobId}/{file}.out` plus `manifest.json.out` as Bedrock lays them out.

Objects are read and written through an `ObjectStore` (emulator/storage.py): the server's own moto
backend directly, or any S3 through boto3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import orjson
import polars as pl
import pyarrow as pa

from emulator.families import INPUT_SHAPES, Family
from emulator.profile import Profile
from emulator.records import BadLine, generate, output_lines, validate
from emulator.storage import ObjectStore, StoreError
from emulator.structured import Breakage

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
    records: int
    lines: pl.Series | None  # None once answered: a job holds a file's worth of frames only while needed
    features: pl.DataFrame | None  # decoded once, at validation (records.validate)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


@dataclass
class JobInput:
    files: list[InputFile] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(f.records for f in self.files)

    def release(self) -> None:
        """Forget the records (kept: names and counts), once `answer` has used them."""
        for f in self.files:
            f.lines = f.features = None


def _access_denied(uri: str) -> InputInvalid:
    return InputInvalid(
        f"Amazon Bedrock could not access {uri}. Check that the input location exists and that the service "
        "role has s3:GetObject and s3:ListBucket permissions on it."
    )


def load_input(store: ObjectStore, uri: str, profile: Profile, family: Family) -> JobInput:
    """Read a `.jsonl` object, or every `.jsonl` object under a prefix, and apply Bedrock's input checks.

    Each file is parsed once, under the family's input shapes; the features travel with the job.
    """
    bucket, key = split_uri(uri)
    try:
        keys = store.listing(bucket, key)
    except StoreError as exc:
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
        try:
            lines, features = validate(store.get(bucket, name), INPUT_SHAPES[family])
        except StoreError as exc:
            raise _access_denied(f"s3://{bucket}/{name}") from exc
        except BadLine as exc:
            raise InputInvalid(
                f"Invalid JSON in line {exc.number} of s3://{bucket}/{name}: {exc.reason}. "
                "Each line of the input file must be a JSON object."
            ) from None
        if len(lines) > profile.max_records:
            raise InputInvalid(
                f"The input file s3://{bucket}/{name} has {len(lines)} records, which exceeds the maximum of "
                f"{profile.max_records} records per input file."
            )
        job_input.files.append(InputFile(name, len(lines), lines, features))
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
    frames = []
    # A resubmission (a new job name) draws again, as a model asked again may answer well this time.
    breakage = Breakage(profile.invalid_output_rate, profile.seed, job_name)
    for i, f in enumerate(job_input.files):
        if f.lines is None:
            raise ValueError(f"the records of {f.key} were released before they were answered")
        frames.append(
            generate(f.lines, family, model_id, f.features, breakage).with_columns(file=pl.lit(i, pl.Int32))
        )
    df = with_record_faults(pl.concat(frames), profile, job_name)
    if profile.shuffle_output:
        rng = np.random.default_rng(int(profile.draw("order", job_name) * 2**63))
        df = df[rng.permutation(len(df))]
    return df.select(
        "file",
        output_lines(df, end="\n").alias("line"),
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


def _joined(lines: pl.Series) -> memoryview:
    """The lines (each ending in a newline) as one buffer made by Polars: no Python copy of a file's
    worth of bytes before the store's own."""
    joined = lines.str.join("").to_arrow()
    if joined.type != pa.large_string():
        joined = joined.cast(pa.large_string())
    data = joined.buffers()[2]
    return memoryview(data) if data is not None else memoryview(b"")


def write_outputs(
    store: ObjectStore, output_uri: str, job_id: str, job_input: JobInput, answers: pl.DataFrame, processed: int
) -> dict[str, int]:
    """Write the first `processed` answers (processing order) and the manifest; return the manifest."""
    bucket, prefix = split_uri(output_uri)
    base = f"{prefix.rstrip('/')}/{job_id}" if prefix.strip("/") else job_id
    done = answers.head(processed)
    for i, f in enumerate(job_input.files):
        store.put(bucket, f"{base}/{f.name}.out", _joined(done.filter(pl.col("file") == i)["line"]))
    manifest = {
        "totalRecordCount": job_input.total,
        "processedRecordCount": processed,
        "successRecordCount": int(done["ok"].sum()),
        "errorRecordCount": processed - int(done["ok"].sum()),
        "inputTokenCount": int(done["input_tokens"].sum()),
        "outputTokenCount": int(done["output_tokens"].sum()),
    }
    store.put(bucket, f"{base}/manifest.json.out", orjson.dumps(manifest))
    return manifest
