"""Reading inputs lazily: a Hugging Face dataset, or CSV/Parquet/JSONL files on disk or S3.

Every source becomes a `pl.LazyFrame` with a Utf8 `record_id` column, so the rest of the pipeline never
cares where rows came from and never holds the whole input in memory: files are scanned by Polars
(S3 through the client factory's `storage_options`), a Hugging Face dataset is streamed batch by batch
from its memory-mapped Arrow table through a Polars IO source.

Row identity: an existing `record_id` column (or `record_id_column`) is kept, cast to Utf8. Otherwise
ids are assigned from the row position in the source's deterministic order (files sorted by name):
`"r"` + the zero-based index padded to 10 digits (`r0000000042`), 11 characters like Bedrock's own ids.
The same input therefore always gets the same ids.
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from tasks.aws import AwsSettings, client, split_s3_uri, storage_options

ROW_INDEX = "__row"  # the scans' row numbers, from which positional ids are made
RECORD_ID = "record_id"
ID_DIGITS = 10

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
FORMATS = ("csv", "parquet", "jsonl")
_GLOB_CHARS = re.compile(r"[*?\[]")
_UTF8_PROBE_BYTES = 1 << 20


class SourceError(ValueError):
    """The input cannot be used as it is (nothing has been submitted yet)."""


@dataclass(frozen=True)
class SourceSpec:
    """Where the rows come from: exactly one of `s3_uri`, `input_path`, `dataset_id`."""

    s3_uri: str | None = None
    input_path: str | None = None
    dataset_id: str | None = None
    split: str = "train"
    record_id_column: str = RECORD_ID
    file_format: str | None = None

    def describe(self) -> str:
        if self.dataset_id:
            return f"dataset {self.dataset_id!r} (split {self.split!r})"
        return str(self.s3_uri or self.input_path)


def load_source(spec: SourceSpec, aws: AwsSettings | None = None) -> pl.LazyFrame:
    """A lazy frame over the source's rows with a Utf8 `record_id` column."""
    given = [name for name in ("s3_uri", "input_path", "dataset_id") if getattr(spec, name)]
    if len(given) != 1:
        raise SourceError(f"give exactly one of s3_uri, input_path or dataset_id (got {given or 'none'})")
    if spec.file_format is not None and spec.file_format not in FORMATS:
        raise SourceError(f"file_format must be one of {FORMATS}, not {spec.file_format!r}")
    if spec.dataset_id:
        lf = _scan_hf_dataset(spec.dataset_id, spec.split)
    elif spec.s3_uri:
        files = list_s3_files(spec.s3_uri, aws, spec.file_format)
        lf = _scan_files(files, spec, aws)
    else:
        files = list_local_files(str(spec.input_path), spec.file_format)
        lf = _scan_files(files, spec, None)
    return with_record_id(lf, spec.record_id_column, source=spec.describe())


def with_record_id(lf: pl.LazyFrame, record_id_column: str = RECORD_ID, *, source: str = "input") -> pl.LazyFrame:
    """Keep the id column (as Utf8 `record_id`) or assign deterministic positional ids.

    Scans made here number their rows themselves (`row_index_name`): a row index inside the scan lets a
    later slice read only its own rows (prepare stages in slices), where `with_row_index` on top of the
    scan would make every slice read the file from its start.
    """
    names = lf.collect_schema().names()
    scanned_index = ROW_INDEX in names
    if scanned_index:
        names.remove(ROW_INDEX)
    if record_id_column in names:
        if record_id_column != RECORD_ID and RECORD_ID in names:
            raise SourceError(
                f"{source} has both {record_id_column!r} (the chosen id column) and {RECORD_ID!r}; rename one of them"
            )
        kept = lf.with_columns(pl.col(record_id_column).cast(pl.String).alias(RECORD_ID))
        return kept.drop(ROW_INDEX) if scanned_index else kept
    if record_id_column != RECORD_ID:
        raise SourceError(f"{source} has no id column {record_id_column!r}; columns present: {names}")
    index = pl.col(ROW_INDEX).cast(pl.String).str.zfill(ID_DIGITS)
    indexed = lf if scanned_index else lf.with_row_index(ROW_INDEX)
    return indexed.select(pl.concat_str([pl.lit("r"), index]).alias(RECORD_ID), *names)


def validate_source(lf: pl.LazyFrame, *, source: str = "input") -> int:
    """Row count, after checking the input is usable: not empty, ids present and unique.

    Runs one streaming pass over the id column only, so it is cheap enough to do before any upload.
    """
    try:
        stats = (
            lf.select(
                n=pl.len(),
                null_ids=(pl.col(RECORD_ID).is_null() | (pl.col(RECORD_ID) == "")).sum(),
                duplicated=pl.col(RECORD_ID).is_duplicated().sum(),
            )
            .collect()
            .row(0, named=True)
        )
    except pl.exceptions.PolarsError as exc:
        raise _explain_read_error(exc, source) from exc
    check_ids(lf, stats["n"], stats["null_ids"], stats["duplicated"], source=source)
    return int(stats["n"])


def check_ids(lf: pl.LazyFrame, n: int, null_ids: int, duplicated: int, *, source: str) -> None:
    """Raise a `SourceError` for an empty input, blank ids or duplicate ids (with examples)."""
    if n == 0:
        raise SourceError(f"{source} has no rows: nothing to run")
    if null_ids:
        raise SourceError(f"{source}: {null_ids} row(s) have a null or empty {RECORD_ID}; every row needs an id")
    if duplicated:
        examples = (
            lf.group_by(RECORD_ID).agg(pl.len().alias("n")).filter(pl.col("n") > 1).sort(RECORD_ID).head(5).collect()
        )
        shown = ", ".join(f"{r!r} x{c}" for r, c in examples.iter_rows())
        raise SourceError(
            f"{source}: {duplicated} rows share a {RECORD_ID} with another row (e.g. {shown}); "
            f"ids must be unique so each output can be joined back to exactly one input row"
        )


def _explain_read_error(exc: Exception, source: str) -> Exception:
    text = str(exc)
    if "utf-8" in text.lower() or "utf8" in text.lower():
        return SourceError(
            f"{source} is not valid UTF-8 ({text.splitlines()[0]}); re-encode it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 in.csv > out.csv`, or convert it to Parquet"
        )
    return SourceError(f"cannot read {source}: {text.splitlines()[0] if text else exc!r}")


# ------------------------------------------------------------------------------------------- listing


def _format_of(name: str, wanted: str | None) -> str | None:
    """The file's format from its extension (None: not a data file, or not the wanted format)."""
    fmt = _EXTENSIONS.get(Path(name).suffix.lower())
    return fmt if wanted is None or fmt == wanted else None


def _pick(files: list[str], wanted: str | None, where: str) -> list[tuple[str, str]]:
    """(path, format) for the data files among `files`; one format per source."""
    chosen: list[tuple[str, str]] = []
    for f in sorted(set(files)):
        base = f.rsplit("/", 1)[-1]
        if not base or base.startswith((".", "_")):  # _SUCCESS, .crc, hidden files
            continue
        fmt = _format_of(base, wanted)
        if fmt is not None:
            chosen.append((f, fmt))
    if not chosen:
        raise SourceError(f"no CSV, Parquet or JSONL files at {where}")
    formats = sorted({fmt for _, fmt in chosen})
    if len(formats) > 1:
        raise SourceError(f"{where} mixes file formats {formats}; pick one with file_format")
    return chosen


def list_local_files(path: str, file_format: str | None = None) -> list[tuple[str, str]]:
    """Data files for a local file, folder (recursive) or glob, sorted by path."""
    if _GLOB_CHARS.search(path):
        found = [p for p in globlib.glob(path, recursive=True) if Path(p).is_file()]
    elif Path(path).is_dir():
        found = [str(p) for p in Path(path).rglob("*") if p.is_file()]
    elif Path(path).is_file():
        fmt = file_format or _format_of(path, None)
        if fmt is None:
            raise SourceError(f"cannot tell the format of {path}; set file_format to one of {FORMATS}")
        return [(path, fmt)]
    else:
        raise SourceError(f"input path {path} does not exist")
    return _pick(found, file_format, path)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Glob with path semantics: `*` and `?` stay within a segment, `**` crosses segments."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out += re.escape("[")
                i += 1
            else:
                out += fnmatch.translate(pattern[i : end + 1])[4:-3]
                i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def list_s3_files(uri: str, aws: AwsSettings | None, file_format: str | None = None) -> list[tuple[str, str]]:
    """Data files for an S3 object, prefix ("folder") or glob, listed with boto3 and sorted by key."""
    bucket, key = split_s3_uri(uri)
    s3 = client("s3", aws)
    match = _GLOB_CHARS.search(key)
    if match:
        prefix = key[: match.start()]
        regex = _glob_regex(key)
        keys = [k for k in _list_keys(s3, bucket, prefix) if regex.match(k)]
    else:
        if key and not key.endswith("/"):
            try:
                s3.head_object(Bucket=bucket, Key=key)
            except s3.exceptions.ClientError:
                pass
            else:
                fmt = file_format or _format_of(key, None)
                if fmt is None:
                    raise SourceError(f"cannot tell the format of {uri}; set file_format to one of {FORMATS}")
                return [(uri, fmt)]
        prefix = key.rstrip("/") + "/" if key else ""
        keys = list(_list_keys(s3, bucket, prefix))
    if not keys:
        raise SourceError(f"nothing found at {uri}")
    picked = _pick(keys, file_format, uri)
    return [(f"s3://{bucket}/{k}", fmt) for k, fmt in picked]


def _list_keys(s3: Any, bucket: str, prefix: str) -> Iterator[str]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                yield obj["Key"]


# -------------------------------------------------------------------------------------------- scanning


def _head_bytes(path: str, aws: AwsSettings | None, size: int = _UTF8_PROBE_BYTES) -> bytes:
    if path.startswith("s3://"):
        bucket, key = split_s3_uri(path)
        body = client("s3", aws).get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{size - 1}")["Body"]
        return body.read()
    with open(path, "rb") as fh:
        return fh.read(size)


def check_utf8(data: bytes, name: str, *, complete: bool = False) -> None:
    """Raise a `SourceError` naming the file when `data` (a file's head) is not UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        truncated = not complete and exc.reason == "unexpected end of data" and exc.start >= len(data) - 3
        if not truncated:
            raise SourceError(
                f"{name} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                f"re-encode it as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv` "
                f"(or pandas.read_csv(..., encoding='latin-1').to_parquet(...))"
            ) from exc


def _scan_files(files: list[tuple[str, str]], spec: SourceSpec, aws: AwsSettings | None) -> pl.LazyFrame:
    paths = [p for p, _ in files]
    fmt = files[0][1]
    for path in paths:  # an empty file is a Polars NoDataError / "out of specification" that names nothing
        if not path.startswith("s3://") and Path(path).stat().st_size == 0:
            raise SourceError(_empty_file(path))
    options = storage_options(aws) if paths[0].startswith("s3://") else None
    if fmt == "parquet":
        return pl.scan_parquet(paths, storage_options=options, row_index_name=ROW_INDEX)
    if fmt == "jsonl":
        return pl.scan_ndjson(paths, storage_options=options, infer_schema_length=1000, row_index_name=ROW_INDEX)
    for path in paths:  # a latin-1 file fails late and vaguely inside Polars: catch it early, by name
        head = _head_bytes(path, aws)
        if not head:
            raise SourceError(_empty_file(path))
        check_utf8(head, path, complete=len(head) < _UTF8_PROBE_BYTES)
    separator = "\t" if paths[0].lower().endswith(".tsv") else ","
    header = pl.scan_csv(paths[0], separator=separator, storage_options=options, n_rows=0)
    names = header.collect_schema().names()
    # Ids are text: read the id column as-is so "007" stays "007" instead of being inferred as 7.
    overrides = {spec.record_id_column: pl.String} if spec.record_id_column in names else None
    return pl.scan_csv(
        paths,
        separator=separator,
        storage_options=options,
        schema_overrides=overrides,
        infer_schema_length=10_000,
        missing_columns="insert",
        row_index_name=ROW_INDEX,
    )


def _empty_file(path: str) -> str:
    return (f"input file {path} is empty (0 bytes): nothing to run; check that it is the file you meant "
            f"(a failed export?) or remove it from the input")


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def load_hf_dataset(dataset_id: str, split: str) -> Any:
    """A `datasets.Dataset`: `load_from_disk` for a saved dataset folder, else `load_dataset`.

    `load_dataset` takes a Hub id or a local folder of data files (script-less), so the same call serves
    production (the Hub) and tests (a folder the test builds).
    """
    import datasets

    local = Path(dataset_id).expanduser()
    try:
        if _is_saved_dataset(local):
            loaded = datasets.load_from_disk(str(local))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise SourceError(f"dataset {dataset_id!r} has no split {split!r}; splits: {list(loaded)}")
                loaded = loaded[split]
            return loaded
        return datasets.load_dataset(dataset_id, split=split)
    except SourceError:
        raise
    except Exception as exc:  # datasets raises many types (ConnectionError, ValueError, FileNotFoundError)
        raise SourceError(f"cannot load dataset {dataset_id!r} split {split!r}: {exc}") from exc


def _scan_hf_dataset(dataset_id: str, split: str) -> pl.LazyFrame:
    dataset = load_hf_dataset(dataset_id, split)
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    return lazy_arrow_table(dataset.data.table, name=f"hf:{dataset_id}:{split}")


def lazy_arrow_table(table: Any, *, name: str = "arrow", batch_rows: int = 50_000) -> pl.LazyFrame:
    """Stream a (memory-mapped) pyarrow Table into Polars batch by batch, honouring projections."""
    import pyarrow as pa
    from polars.io.plugins import register_io_source

    schema = pl.from_arrow(table.slice(0, 0)).schema

    def source(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        selected = table.select(with_columns) if with_columns is not None else table
        remaining = n_rows
        for batch in selected.to_batches(max_chunksize=batch_size or batch_rows):
            if remaining is not None:
                if remaining <= 0:
                    return
                batch = batch.slice(0, remaining)
                remaining -= batch.num_rows
            # Via a Table: a zero-column batch (pure row counts) must keep its height.
            frame = pl.from_arrow(pa.Table.from_batches([batch], schema=batch.schema))
            assert isinstance(frame, pl.DataFrame)
            yield frame.filter(predicate) if predicate is not None else frame

    return register_io_source(source, schema=schema, is_pure=True, explain_name=name)
