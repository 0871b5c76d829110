"""Sources: every input kind becomes a lazy frame with a Utf8 `record_id`; bad inputs fail by name."""

from __future__ import annotations

from pathlib import Path

import datasets
import polars as pl
import pytest

from tasks.aws import AwsSettings, client
from tasks.core.sources import SourceError, SourceSpec, load_source, validate_source

ROWS = {"topic": ["cats", "dogs", "owls"], "n": [1, 2, 3]}


def _load(spec: SourceSpec, aws: AwsSettings | None = None) -> pl.DataFrame:
    lf = load_source(spec, aws)
    assert isinstance(lf, pl.LazyFrame)
    return lf.collect()


# ------------------------------------------------------------------------------------- Hugging Face


def test_hf_dataset_saved_to_disk_streams_with_assigned_ids(tmp_path: Path) -> None:
    datasets.Dataset.from_dict(ROWS).save_to_disk(str(tmp_path / "ds"))
    out = _load(SourceSpec(dataset_id=str(tmp_path / "ds")))
    assert out.columns == ["record_id", "topic", "n"]
    assert out["record_id"].to_list() == ["r0000000000", "r0000000001", "r0000000002"]
    assert out["topic"].to_list() == ROWS["topic"]


def test_hf_dataset_dict_picks_the_split(tmp_path: Path) -> None:
    train = datasets.Dataset.from_dict(ROWS)
    dd = datasets.DatasetDict({"train": train, "test": train.select([2])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert _load(SourceSpec(dataset_id=str(tmp_path / "dd"), split="test"))["topic"].to_list() == ["owls"]
    with pytest.raises(SourceError, match="no split 'validation'"):
        load_source(SourceSpec(dataset_id=str(tmp_path / "dd"), split="validation"))


def test_hf_load_dataset_on_a_local_data_folder(tmp_path: Path) -> None:
    # The same `datasets.load_dataset(id, split=...)` call the Hub path uses, on a script-less folder.
    folder = tmp_path / "simplecot" / "data"
    folder.mkdir(parents=True)
    pl.DataFrame({"source": ["q1", "q2"], "record_id": [10, 11]}).write_parquet(folder / "train-0.parquet")
    out = _load(SourceSpec(dataset_id=str(tmp_path / "simplecot"), split="train"))
    assert out["record_id"].to_list() == ["10", "11"]  # kept, as text


def test_hf_source_is_lazy_and_projects(tmp_path: Path) -> None:
    datasets.Dataset.from_dict({"a": list(range(1000)), "b": ["x"] * 1000}).save_to_disk(str(tmp_path / "ds"))
    lf = load_source(SourceSpec(dataset_id=str(tmp_path / "ds")))
    assert lf.select(pl.len()).collect().item() == 1000
    assert lf.filter(pl.col("a") >= 998).select("record_id").collect()["record_id"].to_list() == [
        "r0000000998",
        "r0000000999",
    ]


def test_unreachable_hub_dataset_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="cannot load dataset 'nobody/nothing'"):
        load_source(SourceSpec(dataset_id="nobody/nothing"))


# ------------------------------------------------------------------------------------------ files


def _write_all_formats(folder: Path) -> None:
    frame = pl.DataFrame(ROWS)
    frame.write_csv(folder / "rows.csv")
    frame.write_parquet(folder / "rows.parquet")
    frame.write_ndjson(folder / "rows.jsonl")


@pytest.mark.parametrize("name", ["rows.csv", "rows.parquet", "rows.jsonl"])
def test_local_files_of_each_format(tmp_path: Path, name: str) -> None:
    _write_all_formats(tmp_path)
    out = _load(SourceSpec(input_path=str(tmp_path / name)))
    assert out["topic"].to_list() == ROWS["topic"]
    assert out["record_id"].to_list() == ["r0000000000", "r0000000001", "r0000000002"]


def test_folder_and_glob_read_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    pl.DataFrame({"topic": ["b"]}).write_parquet(tmp_path / "in" / "part-2.parquet")
    pl.DataFrame({"topic": ["a"]}).write_parquet(tmp_path / "in" / "part-1.parquet")
    pl.DataFrame({"topic": ["c"]}).write_parquet(tmp_path / "in" / "sub" / "part-3.parquet")
    (tmp_path / "in" / "_SUCCESS").write_text("")
    assert _load(SourceSpec(input_path=str(tmp_path / "in")))["topic"].to_list() == ["a", "b", "c"]
    glob = _load(SourceSpec(input_path=str(tmp_path / "in" / "*.parquet")))
    assert glob["topic"].to_list() == ["a", "b"]
    assert glob["record_id"].to_list() == ["r0000000000", "r0000000001"]


def test_mixed_formats_need_file_format(tmp_path: Path) -> None:
    _write_all_formats(tmp_path)
    with pytest.raises(SourceError, match="mixes file formats"):
        load_source(SourceSpec(input_path=str(tmp_path)))
    assert _load(SourceSpec(input_path=str(tmp_path), file_format="jsonl")).height == 3


def test_existing_ids_are_kept_as_text(tmp_path: Path) -> None:
    (tmp_path / "ids.csv").write_text("record_id,topic\n007,cats\n008,dogs\n")
    assert _load(SourceSpec(input_path=str(tmp_path / "ids.csv")))["record_id"].to_list() == ["007", "008"]
    pl.DataFrame({"record_id": [5, 6], "topic": ["a", "b"]}).write_parquet(tmp_path / "ids.parquet")
    out = _load(SourceSpec(input_path=str(tmp_path / "ids.parquet")))
    assert out.schema["record_id"] == pl.String and out["record_id"].to_list() == ["5", "6"]


def test_a_named_id_column(tmp_path: Path) -> None:
    pl.DataFrame({"uid": ["u1", "u2"], "topic": ["a", "b"]}).write_parquet(tmp_path / "x.parquet")
    out = _load(SourceSpec(input_path=str(tmp_path / "x.parquet"), record_id_column="uid"))
    assert out["record_id"].to_list() == ["u1", "u2"] and "uid" in out.columns
    with pytest.raises(SourceError, match="no id column 'key'"):
        load_source(SourceSpec(input_path=str(tmp_path / "x.parquet"), record_id_column="key"))


def test_assigned_ids_are_deterministic(tmp_path: Path) -> None:
    pl.DataFrame({"topic": [f"t{i}" for i in range(500)]}).write_parquet(tmp_path / "x.parquet")
    spec = SourceSpec(input_path=str(tmp_path / "x.parquet"))
    assert _load(spec).equals(_load(spec))


def test_non_utf8_csv_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("topic\ncafé crème\n".encode("latin-1"))
    with pytest.raises(SourceError) as err:
        load_source(SourceSpec(input_path=str(path)))
    assert str(path) in str(err.value) and "UTF-8" in str(err.value) and "iconv" in str(err.value)


def test_duplicate_ids_and_empty_input_are_reported(tmp_path: Path) -> None:
    (tmp_path / "dup.csv").write_text("record_id,topic\na,1\nb,2\na,3\n")
    with pytest.raises(SourceError, match="'a' x2"):
        validate_source(load_source(SourceSpec(input_path=str(tmp_path / "dup.csv"))))
    pl.DataFrame(schema={"topic": pl.String}).write_parquet(tmp_path / "empty.parquet")
    with pytest.raises(SourceError, match="no rows"):
        validate_source(load_source(SourceSpec(input_path=str(tmp_path / "empty.parquet"))))
    assert validate_source(pl.LazyFrame({"record_id": ["a", "b"]})) == 2


def test_exactly_one_location() -> None:
    with pytest.raises(SourceError, match="exactly one"):
        load_source(SourceSpec(input_path="a.csv", dataset_id="x"))
    with pytest.raises(SourceError, match="does not exist"):
        load_source(SourceSpec(input_path="/no/such/file.csv"))


# --------------------------------------------------------------------------------------------- S3


def _put(aws: AwsSettings, bucket: str, key: str, body: bytes) -> None:
    client("s3", aws).put_object(Bucket=bucket, Key=key, Body=body)


def _parquet_bytes(frame: pl.DataFrame, tmp_path: Path) -> bytes:
    path = tmp_path / "tmp.parquet"
    frame.write_parquet(path)
    return path.read_bytes()


def test_s3_file_prefix_and_glob(aws: AwsSettings, bucket: str, tmp_path: Path) -> None:
    _put(aws, bucket, "in/b.parquet", _parquet_bytes(pl.DataFrame({"topic": ["b"]}), tmp_path))
    _put(aws, bucket, "in/a.parquet", _parquet_bytes(pl.DataFrame({"topic": ["a"]}), tmp_path))
    _put(aws, bucket, "in/deep/c.parquet", _parquet_bytes(pl.DataFrame({"topic": ["c"]}), tmp_path))
    _put(aws, bucket, "in/notes.txt", b"ignored")
    one = _load(SourceSpec(s3_uri=f"s3://{bucket}/in/a.parquet"), aws)
    assert one["topic"].to_list() == ["a"]
    assert _load(SourceSpec(s3_uri=f"s3://{bucket}/in/"), aws)["topic"].to_list() == ["a", "b", "c"]
    assert _load(SourceSpec(s3_uri=f"s3://{bucket}/in/*.parquet"), aws)["topic"].to_list() == ["a", "b"]
    assert _load(SourceSpec(s3_uri=f"s3://{bucket}/in/**/*.parquet"), aws)["topic"].to_list() == [
        "a",
        "b",
        "c",
    ]


def test_s3_csv_and_jsonl(aws: AwsSettings, bucket: str) -> None:
    _put(aws, bucket, "t/topics.csv", b"record_id,topic\n001,cats\n002,dogs\n")
    _put(aws, bucket, "j/rows.jsonl", b'{"topic":"x"}\n{"topic":"y"}\n')
    csv = _load(SourceSpec(s3_uri=f"s3://{bucket}/t/topics.csv"), aws)
    assert csv.rows() == [("001", "cats"), ("002", "dogs")]
    assert _load(SourceSpec(s3_uri=f"s3://{bucket}/j/"), aws)["topic"].to_list() == ["x", "y"]


def test_s3_non_utf8_csv_and_missing_prefix(aws: AwsSettings, bucket: str) -> None:
    _put(aws, bucket, "bad/latin.csv", "topic\nné\n".encode("latin-1"))
    with pytest.raises(SourceError, match=f"s3://{bucket}/bad/latin.csv is not valid UTF-8"):
        load_source(SourceSpec(s3_uri=f"s3://{bucket}/bad/"), aws)
    with pytest.raises(SourceError, match="nothing found"):
        load_source(SourceSpec(s3_uri=f"s3://{bucket}/nothing/"), aws)
