"""The live view's plain parts: the jobs table's shape and the progress description (no Prefect run)."""

from __future__ import annotations

from tasks.report import LIVE_COLUMNS, RunProgress


def test_every_row_of_the_live_jobs_table_has_the_same_columns_whatever_its_state() -> None:
    """The UI takes a table's columns from its first row: a waiting first shard must not hide the rest."""
    progress = RunProgress(300, "p", jobs_key="p-jobs")
    progress.expect(["shard-0001", "shard-0002", "shard-0003"])
    progress.waiting("shard-0001")
    progress.job_update("shard-0002", {"status": "InProgress", "jobName": "j2", "totalRecordCount": 100,
                                       "processedRecordCount": 40, "successRecordCount": 39,
                                       "errorRecordCount": 1, "jobArn": "arn:j2"})

    table = progress.table()

    assert [tuple(row) for row in table] == [LIVE_COLUMNS] * 3
    assert [row["status"] for row in table] == ["waiting for a slot", "InProgress", "pending"]
    assert table[1]["processed"] == 40 and table[1]["job ARN"] == "arn:j2"
    assert progress.describe().startswith("40 / 300 records · jobs: 1 InProgress, 1 pending, 1 waiting for a slot")
