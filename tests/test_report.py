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


class Counted(RunProgress):
    """RunProgress that counts what it would send to Prefect (no run context here to send it to)."""

    def __init__(self, clock: list[float], **kwargs: object) -> None:
        self.sent: list[tuple[float, str]] = []
        super().__init__(1_000, "p", jobs_key="p-jobs", clock=lambda: clock[0], **kwargs)  # type: ignore[arg-type]
        self.artifact_id = "progress-artifact"

    def _send_progress(self) -> None:
        self.sent.append((self._clock(), "progress"))

    def _send_table(self) -> None:
        self.sent.append((self._clock(), f"table {[row['status'] for row in self.table()]}"))


def test_a_burst_of_status_changes_is_one_table_version_and_the_last_change_goes_out_with_the_next_poll() -> None:
    """Each table publish is an artifact version: 1,000 shards moving together must not make 1,000."""
    now = [0.0]
    progress = Counted(now, status_interval_s=5.0, table_interval_s=60.0, min_interval_s=1.0)
    shards = [f"shard-{i:04d}" for i in range(1, 101)]
    progress.expect(shards)
    for shard in shards:  # a hundred jobs submitted within one second
        progress.job_update(shard, {"status": "Submitted", "jobName": shard})
    assert [what for _, what in progress.sent].count("progress") == 1
    assert len([what for _, what in progress.sent if what.startswith("table")]) == 1

    now[0] = 2.0  # one job moves, inside the status interval: held back
    progress.job_update("shard-0001", {"status": "InProgress"})
    assert not [t for t, what in progress.sent if t == 2.0 and what.startswith("table")]
    now[0] = 6.0  # the next poll of another shard, past the interval: the held change goes out with it
    progress.job_update("shard-0002", {"status": "Submitted"})
    [(_, table)] = [(t, what) for t, what in progress.sent if t == 6.0 and what.startswith("table")]
    assert "InProgress" in table

    now[0] = 20.0  # counters only (no status change): not before the table interval
    progress.job_update("shard-0002", {"status": "Submitted", "processedRecordCount": 10})
    assert not [t for t, what in progress.sent if t == 20.0 and what.startswith("table")]
    now[0] = 70.0
    progress.job_update("shard-0002", {"status": "Submitted", "processedRecordCount": 20})
    assert [t for t, what in progress.sent if t == 70.0 and what.startswith("table")]
