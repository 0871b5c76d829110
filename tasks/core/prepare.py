"""Prepare a run: render prompts, build request lines, plan shards, write JSONL shards and snapshots to S3.

Memory stays bounded by the staging chunk, never the dataset. One pass runs the source, 250k rows at a
time, through the render and encode expressions into local files: a Parquet part (record_id, the
line's size, token estimate, the row's input error) and a JSONL part (the valid rows' request lines).
The plan needs only the sizes. A shard's JSONL is a byte range of the JSONL parts read as one
(cumulative sizes give the offsets), hashed and streamed to S3 with multipart; its snapshot is a `slice`
of the source (Parquet: only that slice's row groups are read). No per-row Python anywhere.

Nothing is uploaded until the template has matched the columns, ids are known unique and the plan fits
the quotas, so a bad input fails fast and leaves no half-written run behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from boto3.s3.transfer import TransferConfig

from tasks.aws import AwsSettings, client, join_s3, split_s3_uri
from tasks.core.answers import KEY, model_input_json_expr, request_key_expr
from tasks.core.formats import InferenceSettings, ModelFamily, model_input_expr, request_line_expr, request_line_from
from tasks.core.plan import Quotas, ShardPlan, ShardSpec, plan_shards
from tasks.core.sources import RECORD_ID, SourceError, check_ids
from tasks.core.templates import PromptTemplate, render_prompts, select_input

log = logging.getLogger(__name__)
MULTIPART_CHUNK_BYTES = 64 * 1024 * 1024
PREPARED_MANIFEST = "prepared.json"
# Internal column names, chosen so they cannot shadow an input column such as `prompt`.
_PROMPT, _ERROR, _LINE, _BYTES, _TOKENS = "__prompt", "__input_error", "__line", "__line_bytes", "__tokens"
_CACHED, _MODEL_INPUT = "__cached", "__model_input"
_ROW_GROUP = 20_000
# Rows staged per sink (see _stage): small enough to keep peak RSS flat, large enough to cost little.
STAGE_CHUNK_ROWS = 250_000
# A request line above this is refused before anything is uploaded: 1 MB is ~250k tokens, more than any
# supported model's context window, so such a record could only come back as a model error.
MAX_RECORD_BYTES = 1_000_000
# The local staging file is written once and read once per shard: favour speed (lz4). Snapshots go to
# S3 and are read back by collect: zstd at level 1 is nearly as fast and a third smaller.
_STAGING = {"compression": "lz4", "row_group_size": _ROW_GROUP}
_SNAPSHOT = {"compression": "zstd", "compression_level": 1}


@dataclass(frozen=True)
class PreparedShard:
    """One shard as written: where its JSONL and snapshot live and what its content hashes to.

    Its files, ledger and job outputs are named by `stem` (name + content hash): a re-run whose shard
    holds other requests writes, and attaches to, nothing of this one's.
    """

    index: int
    name: str
    input_uri: str
    snapshot_uri: str
    records: int
    bytes: int
    content_hash: str
    start: int = 0

    @property
    def input_file_name(self) -> str:
        return self.input_uri.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return shard_stem(self.name, self.content_hash)


@dataclass
class PreparedRun:
    """What prepare left on S3; saved as `prepared.json` so a re-run can resume from it."""

    run_uri: str
    shards: list[PreparedShard]
    plan: ShardPlan
    total_rows: int
    invalid_rows: int
    invalid_uri: str | None
    on_demand_uri: str | None
    columns: list[str]
    estimated_input_tokens: int
    dropped_rows: int = 0
    cached_rows: int = 0
    cached_uri: str | None = None
    family: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreparedRun:
        plan_data = dict(data["plan"])
        plan_data["shards"] = tuple(ShardSpec(**s) for s in plan_data["shards"])
        values = dict(data)
        values["plan"] = ShardPlan(**plan_data)
        values["shards"] = [PreparedShard(**s) for s in data["shards"]]
        return cls(**values)


@lru_cache(maxsize=1)
def _s3_uri_pattern() -> re.Pattern[str]:
    """Bedrock's own `S3Uri` pattern, from the service model boto3 ships (no `=`, `:`, `+`, spaces)."""
    import botocore.loaders

    model = botocore.loaders.Loader().load_service_model("bedrock", "service-2")
    return re.compile(model["shapes"]["S3Uri"]["pattern"])


def check_s3_uri(uri: str) -> str:
    """Raise ValueError unless Bedrock would accept `uri` as a job input/output location."""
    if len(uri) > 1024 or not _s3_uri_pattern().fullmatch(uri):
        raise ValueError(
            f"{uri!r} is not a valid Bedrock s3Uri: use a lowercase bucket and keys of letters, digits and "
            f"-!_*'(). only (no '=', ':', '+', spaces or empty segments)"
        )
    return uri


def shard_name(index: int) -> str:
    return f"shard-{index:04d}"


def shard_stem(name: str, content_hash: str) -> str:
    """`shard-0001-<12 hex>`: names a shard's files by what they hold."""
    return f"{name}-{content_hash[:12]}"


class _Span(io.RawIOBase):
    """A read-only window `[start, start + length)` of files read as one (the staged JSONL parts)."""

    def __init__(self, files: list[Path], start: int, length: int) -> None:
        self._files = list(files)
        self._index, self._fh = 0, None
        while self._index < len(self._files) and start >= (size := self._files[self._index].stat().st_size):
            start -= size
            self._index += 1
        self._offset, self._left = start, length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._left > 0 and self._index < len(self._files):
            if self._fh is None:
                self._fh = self._files[self._index].open("rb")
                self._fh.seek(self._offset)
            n = self._fh.readinto(memoryview(buffer)[: self._left]) or 0
            if n:
                self._left -= n
                return n
            self._fh.close()
            self._fh, self._offset = None, 0
            self._index += 1
        return 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        super().close()


def _sha256(files: list[Path], start: int, length: int) -> str:
    digest = hashlib.sha256()
    with _Span(files, start, length) as span:
        while block := span.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _upload(what: Path | tuple[list[Path], int, int], uri: str, aws: AwsSettings, chunk_bytes: int) -> None:
    """Upload a file (then delete it), or bytes (start, length) of files read as one; S3 multipart above
    `chunk_bytes`."""
    bucket, key = split_s3_uri(uri)
    config = TransferConfig(multipart_threshold=chunk_bytes, multipart_chunksize=chunk_bytes, max_concurrency=4)
    if isinstance(what, Path):
        client("s3", aws).upload_file(str(what), bucket, key, Config=config)
        what.unlink(missing_ok=True)
        return
    with _Span(*what) as body:
        client("s3", aws).upload_fileobj(io.BufferedReader(body, 1 << 20), bucket, key, Config=config)


def estimate_tokens_expr(prompt: pl.Expr, system: str | None) -> pl.Expr:
    """ceil(UTF-8 bytes of system + prompt / 4) per row: the estimate the emulator also bills by."""
    system_bytes = len(system.encode("utf-8")) if system else 0
    return ((prompt.str.len_bytes().cast(pl.Int64) + system_bytes + 3) // 4).fill_null(0)


def prepare_run(
    source: pl.LazyFrame,
    *,
    family: ModelFamily,
    settings: InferenceSettings,
    template: PromptTemplate | None,
    run_uri: str,
    aws: AwsSettings,
    quotas: Quotas = Quotas(),
    input_column: str = "input_text",
    max_num_jobs: int | None = None,
    max_records_per_job: int | None = None,
    work_dir: str | Path | None = None,
    multipart_chunk_bytes: int = MULTIPART_CHUNK_BYTES,
    max_record_bytes: int = MAX_RECORD_BYTES,
    model_id: str = "",
    invocation_type: str = "InvokeModel",
    answered: pl.Series | None = None,
) -> PreparedRun:
    """Turn source rows into uploaded shards (or an on-demand file) under `run_uri`.

    Rows whose template keys are null go to `invalid.parquet` (input columns + Utf8 `input_error`)
    instead of a shard; collect's `mark_invalid` turns them into `error_code="invalid_input"` rows.
    `on_demand.parquet` holds input columns + the request's `prompt` and `line` (which replace input
    columns of the same names).
    With `max_num_jobs`, only the first rows that fit in that many shards are sent (`dropped_rows`).
    Each valid row gets a request key (`tasks.core.answers`); rows whose key is in `answered` (the answer
    cache's keys) are not sent: they go to `cached.parquet` (input columns + key) and are answered from
    the cache at the end of the run. Snapshots and `on_demand.parquet` carry the key too.
    """
    run_uri = run_uri.rstrip("/")
    check_s3_uri(join_s3(run_uri, "input", shard_name(1) + ".jsonl"))
    settings = settings.with_template(template)
    columns = source.collect_schema().names()
    if RECORD_ID not in columns:
        raise SourceError("the source has no record_id column; load it with tasks.core.sources.load_source")

    def render(lf: pl.LazyFrame) -> pl.LazyFrame:
        if template is not None:
            return render_prompts(lf, template, prompt_column=_PROMPT, error_column=_ERROR)
        return select_input(lf, input_column, prompt_column=_PROMPT, error_column=_ERROR)

    line = request_line_expr(family, settings, prompt=_PROMPT)
    # The model input is encoded once: the line is built around it and the request key hashes it.
    model_input = model_input_expr(family, settings, pl.col(_PROMPT)).struct.json_encode()
    key = request_key_expr(pl.col(_MODEL_INPUT), model_id, invocation_type)
    cached = (pl.col(KEY).is_in(answered.implode()) if answered is not None and answered.len()
              else pl.lit(False)).fill_null(False)

    def encode(lf: pl.LazyFrame) -> pl.LazyFrame:
        """Input columns + the row's error, request line, its size in bytes (with newline), token estimate,
        request key and whether the answer cache has it."""
        return (
            render(lf)
            .with_columns(
                pl.when(pl.col(_ERROR).is_null()).then(model_input).alias(_MODEL_INPUT),
                estimate_tokens_expr(pl.col(_PROMPT), settings.system).alias(_TOKENS),
            )
            .with_columns(request_line_from(pl.col(RECORD_ID), pl.col(_MODEL_INPUT)).alias(_LINE), key.alias(KEY))
            .with_columns((pl.col(_LINE).str.len_bytes().cast(pl.Int64) + 1).alias(_BYTES))
            .with_columns(cached.alias(_CACHED))
            .select(*columns, _ERROR, _LINE, _BYTES, _TOKENS, KEY, _CACHED)
        )

    with tempfile.TemporaryDirectory(prefix="prepare-", dir=work_dir) as tmp:
        tmpdir = Path(tmp)
        # The only pass over the source: render and encode every row into local Parquet (without the
        # request line) and the valid rows' request lines into JSONL parts: a shard is a byte range of them.
        clock = time.perf_counter()
        source, stage, lines = _stage(source, encode, tmpdir)
        # Input columns + each row's input error, key and cache hit, row for row: what snapshots, refused
        # and cached rows are cut from. A row is sent when it is valid and not answered already.
        rows = pl.concat([source, stage.select(_ERROR, KEY, _CACHED)], how="horizontal")
        send = pl.col(_ERROR).is_null() & ~pl.col(_CACHED)
        timings = {"render+encode+stage": time.perf_counter() - clock}
        ids = pl.col(RECORD_ID)
        total_rows, null_ids, duplicated = stage.select(
            pl.len(), (ids.is_null() | (ids == "")).sum().alias("null"), ids.is_duplicated().sum().alias("dup")
        ).collect(engine="streaming").row(0)
        check_ids(stage.select(RECORD_ID), total_rows, null_ids, duplicated, source="input")
        check_record_sizes(stage.filter(send), max_record_bytes)
        # What the plan needs, ~18 bytes a row: the ids stay on disk.
        meta = stage.select(send.alias("ok"), _BYTES, _TOKENS, pl.col(_CACHED)).collect()

        valid_mask = meta.get_column("ok").to_numpy()
        positions = np.flatnonzero(valid_mask)  # staged row of each valid row, in order
        sizes = meta.filter(pl.col("ok"))
        offsets = np.concatenate(([0], np.cumsum(sizes.get_column(_BYTES).to_numpy(), dtype=np.int64)))
        plan = plan_shards(
            sizes.get_column(_BYTES),
            quotas,
            max_num_jobs=max_num_jobs,
            max_records_per_job=max_records_per_job,
        )
        tokens = int(sizes.get_column(_TOKENS).head(plan.total_records).sum())
        cached_rows = int(meta.get_column(_CACHED).sum())
        invalid_rows = total_rows - sizes.height - cached_rows
        valid = rows.filter(send)
        written = sum(path.stat().st_size for path in lines)
        if written != offsets[-1]:  # byte ranges and limits rest on it
            raise RuntimeError(f"wrote {written} bytes of JSONL, planned {offsets[-1]}")

        run = PreparedRun(
            run_uri=run_uri,
            shards=[],
            plan=plan,
            total_rows=int(total_rows),
            invalid_rows=invalid_rows,
            invalid_uri=None,
            on_demand_uri=None,
            columns=columns,
            estimated_input_tokens=tokens,
            dropped_rows=plan.dropped_records,
            cached_rows=cached_rows,
            family=family.name,
            settings=asdict(settings),
        )
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="upload") as pool:
            clock = time.perf_counter()
            uploads: list[Future[Any]] = []

            def upload(what: Path | tuple[list[Path], int, int], uri: str) -> None:
                uploads.append(pool.submit(_upload, what, uri, aws, multipart_chunk_bytes))

            if invalid_rows:
                invalid_path = tmpdir / "invalid.parquet"
                rows.filter(pl.col(_ERROR).is_not_null()).select(
                    *columns, pl.col(_ERROR).alias("input_error")
                ).sink_parquet(invalid_path, compression="zstd")
                run.invalid_uri = join_s3(run_uri, "invalid.parquet")
                upload(invalid_path, run.invalid_uri)
            if cached_rows:
                cached_path = tmpdir / "cached.parquet"
                rows.filter(pl.col(_CACHED)).select(*columns, KEY).sink_parquet(cached_path, compression="zstd")
                run.cached_uri = join_s3(run_uri, "cached.parquet")
                upload(cached_path, run.cached_uri)
            if plan.on_demand:
                if plan.total_records:
                    path = tmpdir / "on_demand.parquet"
                    # Few rows by construction: render their prompts again rather than stage them all.
                    keep = [c for c in columns if c not in ("prompt", "line")]
                    render(valid.head(plan.total_records).select(columns)).select(
                        *keep, pl.col(_PROMPT).alias("prompt"), line.alias("line")
                    ).with_columns(request_key_expr(model_input_json_expr(pl.col("line")), model_id,
                                                    invocation_type).alias(KEY)).sink_parquet(path)
                    run.on_demand_uri = join_s3(run_uri, "on_demand.parquet")
                    upload(path, run.on_demand_uri)
            else:
                hashes = [pool.submit(_sha256, lines, int(offsets[s.start]), s.bytes) for s in plan.shards]
                for spec, digest in zip(plan.shards, hashes, strict=True):
                    name = shard_name(spec.index)
                    snapshot = tmpdir / f"{name}.parquet"
                    first, last = int(positions[spec.start]), int(positions[spec.stop - 1])
                    rows.slice(first, last - first + 1).filter(send).select(*columns, KEY).sink_parquet(
                        snapshot, **_SNAPSHOT
                    )
                    content_hash = digest.result()
                    stem = shard_stem(name, content_hash)
                    shard = PreparedShard(
                        index=spec.index,
                        name=name,
                        input_uri=check_s3_uri(join_s3(run_uri, "input", f"{stem}.jsonl")),
                        snapshot_uri=join_s3(run_uri, "snapshots", f"{stem}.parquet"),
                        records=spec.records,
                        bytes=spec.bytes,
                        content_hash=content_hash,
                        start=spec.start,
                    )
                    upload((lines, int(offsets[spec.start]), spec.bytes), shard.input_uri)
                    upload(snapshot, shard.snapshot_uri)
                    run.shards.append(shard)
            timings["snapshots"] = time.perf_counter() - clock
            clock = time.perf_counter()
            for future in uploads:
                future.result()
            timings["upload wait"] = time.perf_counter() - clock
        _put_json(join_s3(run_uri, PREPARED_MANIFEST), run.to_dict(), aws)
    log.info(
        "prepared %d rows (%d refused, %d answered from the cache) into %d shard(s): %s",
        total_rows,
        invalid_rows,
        cached_rows,
        len(run.shards),
        ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
    )
    return run


def _stage(
    source: pl.LazyFrame, encode: Callable[[pl.LazyFrame], pl.LazyFrame], tmpdir: Path
) -> tuple[pl.LazyFrame, pl.LazyFrame, list[Path]]:
    """Run `encode(source)` STAGE_CHUNK_ROWS rows at a time into local files.

    Each chunk gives a Parquet part (record_id, input error, line size, token estimate) and a JSONL
    part (the valid rows' request lines, in order). Returns the source as sliced (a local copy for
    anything but Parquet), one scan of the Parquet parts, and the JSONL parts (read as one file).
    One sink over the whole input would be simpler, but Polars' streaming engine buffers morsels without
    bound when the expressions are slower than the reader: peak RSS grew linearly (4.1 GB at 2.2M rows,
    7.9 GB at 4.4M). Chunks keep it flat (bench/README.md, Memory). A slice of a Parquet scan reads only
    its row groups; any other source (CSV, JSONL, a dataset) is first copied as is to one local Parquet
    file, a pass that stays flat, so that no slice re-reads the source from its start.
    """
    if "parquet scan" not in source.explain(optimized=False).lower():
        raw = tmpdir / "source.parquet"
        source.sink_parquet(raw, **_STAGING)
        source = pl.scan_parquet(raw)
    rows = source.select(pl.len()).collect().item()
    parts: list[Path] = []
    lines: list[Path] = []
    for offset in range(0, max(rows, 1), STAGE_CHUNK_ROWS):
        parts.append(tmpdir / f"staged-{len(parts):05d}.parquet")
        lines.append(tmpdir / f"lines-{len(lines):05d}.jsonl")
        chunk = encode(source.slice(offset, STAGE_CHUNK_ROWS))
        pl.collect_all([
            chunk.select(RECORD_ID, _ERROR, _BYTES, _TOKENS, KEY, _CACHED).sink_parquet(parts[-1], lazy=True,
                                                                              **_STAGING),
            chunk.filter(pl.col(_ERROR).is_null() & ~pl.col(_CACHED)).select(_LINE).sink_csv(
                lines[-1], include_header=False, quote_style="never", lazy=True
            ),
        ])
    return source, pl.scan_parquet(parts), lines


def check_record_sizes(rows: pl.LazyFrame, max_record_bytes: int) -> None:
    """Refuse the run, naming records, when a request line (`__line_bytes`) is over the per-record limit."""
    over = rows.filter(pl.col(_BYTES) > max_record_bytes).select(RECORD_ID, _BYTES).collect()
    if over.is_empty():
        return
    over = over.sort(_BYTES, descending=True)
    ids = ", ".join(repr(i) for i in over.get_column(RECORD_ID).head(3).to_list())
    raise SourceError(
        f"{over.height:,} record(s) are over the per-record limit of {max_record_bytes:,} bytes per request "
        f"(e.g. {ids}; the largest is {over.get_column(_BYTES).max():,} bytes): shorten or split their text, "
        f"or raise max_record_bytes if the model's context window allows"
    )


def _put_json(uri: str, data: dict[str, Any], aws: AwsSettings) -> None:
    bucket, key = split_s3_uri(uri)
    body = json.dumps(data, indent=1, sort_keys=True).encode()
    client("s3", aws).put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")


def load_prepared(run_uri: str, aws: AwsSettings) -> PreparedRun | None:
    """The `prepared.json` a previous prepare left under `run_uri`, or None (resume support)."""
    bucket, key = split_s3_uri(join_s3(run_uri, PREPARED_MANIFEST))
    s3 = client("s3", aws)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return PreparedRun.from_dict(json.loads(body))

