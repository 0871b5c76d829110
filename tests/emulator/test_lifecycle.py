"""A job's life: statuses, outputs where Bedrock writes them, input validation, quota, stop and faults."""

from __future__ import annotations

import threading
import uuid

import pytest

from tests.emulator.conftest import claude_record, wait_for

IN_FLIGHT = {"Submitted", "Validating", "Scheduled", "InProgress", "Stopping"}


def test_a_1000_record_claude_job_completes_in_order_with_a_joinable_output(
    bedrock, submit, put_jsonl, finish, outputs, manifest
):
    records = [claude_record(i, text=f"question number {i}") for i in range(1000)]
    arn = submit(put_jsonl(records))
    statuses = []

    def ended():
        status = bedrock.get_model_invocation_job(jobIdentifier=arn)["status"]
        if not statuses or statuses[-1] != status:
            statuses.append(status)
        return status in ("Completed", "Failed")

    wait_for(ended, timeout=30)  # its speed is measured by bench (emulate stage), not here
    assert statuses[-1] == "Completed"
    order = ["Submitted", "Validating", "Scheduled", "InProgress", "Completed"]
    assert [s for s in order if s in statuses] == statuses  # never out of order

    out = outputs(arn)
    assert len(out) == 1000
    assert [r["recordId"] for r in out] != [r["recordId"] for r in records]  # shuffled, like Bedrock
    by_id = {r["recordId"]: r for r in out}
    for record in records:
        line = by_id[record["recordId"]]
        assert line["modelInput"] == record["modelInput"]
        prompt = record["modelInput"]["messages"][0]["content"][0]["text"]
        assert line["modelOutput"]["content"][0]["text"] == "Emulated reply to: " + prompt
    m = manifest(arn)
    assert m["totalRecordCount"] == m["processedRecordCount"] == m["successRecordCount"] == 1000
    assert m["errorRecordCount"] == 0
    assert m["inputTokenCount"] == sum(r["modelOutput"]["usage"]["input_tokens"] for r in out)
    assert m["outputTokenCount"] == sum(r["modelOutput"]["usage"]["output_tokens"] for r in out)


def test_a_folder_input_gives_one_output_per_file(s3, bucket, submit, put_jsonl, finish, outputs, manifest):
    put_jsonl([claude_record(i) for i in range(60)], key="input/folder/part-a.jsonl")
    put_jsonl([claude_record(i) for i in range(60, 120)], key="input/folder/part-b.jsonl")
    arn = submit(f"s3://{bucket}/input/folder/")
    assert finish(arn)["status"] == "Completed"
    assert len(outputs(arn, "part-a.jsonl")) == len(outputs(arn, "part-b.jsonl")) == 60
    assert manifest(arn)["totalRecordCount"] == 120


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([claude_record(i) for i in range(99)], "fewer than the minimum of 100 records"),
        ([claude_record(i) for i in range(150)] + ["{not json"], "Invalid JSON in line 151"),
        ([claude_record(i) for i in range(150)] + ["[1, 2]"], "Invalid JSON in line 151"),
    ],
)
def test_invalid_input_fails_the_job_with_a_message(submit, put_jsonl, finish, lines, message):
    job = finish(submit(put_jsonl(lines)))
    assert job["status"] == "Failed"
    assert message in job["message"]


def test_record_and_size_quotas_fail_the_job(knobs, submit, put_jsonl, finish):
    knobs(max_records=120)
    job = finish(submit(put_jsonl([claude_record(i) for i in range(121)])))
    assert job["status"] == "Failed" and "exceeds the maximum of 120 records" in job["message"]
    knobs(max_file_bytes=1000)
    job = finish(submit(put_jsonl([claude_record(i) for i in range(100)])))
    assert job["status"] == "Failed" and "maximum input file size of 1000 bytes" in job["message"]


def test_a_missing_input_fails_the_job(bucket, submit, finish):
    job = finish(submit(f"s3://{bucket}/input/nothing-here.jsonl"))
    assert job["status"] == "Failed"
    assert "No input file was found" in job["message"]


def test_the_21st_in_flight_job_is_refused_and_peaks_are_recorded(
    emulator, bedrock, knobs, submit, put_jsonl, finish
):
    emulator.reset()
    model = "anthropic.claude-quota-test-v1:0"  # made up: the catalog refuses them unless the profile adds them
    knobs(queue_s=1e6, extra_models=[model, "anthropic.claude-other-model-v1:0"])  # jobs stay Scheduled
    uri = put_jsonl([claude_record(i) for i in range(100)])
    arns = [submit(uri, model_id=model) for _ in range(20)]
    with pytest.raises(bedrock.exceptions.ServiceQuotaExceededException) as info:
        submit(uri, model_id=model)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert submit(uri, model_id="anthropic.claude-other-model-v1:0")  # the quota is per model
    assert emulator.stats()["in_flight"][model] == 20

    bedrock.stop_model_invocation_job(jobIdentifier=arns[0])
    assert finish(arns[0])["status"] == "Stopped"
    assert submit(uri, model_id=model)  # a freed slot can be used at once
    for arn in arns[1:]:
        bedrock.stop_model_invocation_job(jobIdentifier=arn)
    stats = emulator.stats()
    assert stats["peak_in_flight"][model] == 20
    assert stats["jobs"] == 22
    refused = [c for c in emulator.calls() if c["status_code"] == 400 and c["modelId"] == model]
    assert len(refused) == 1 and refused[0]["operation"] == "CreateModelInvocationJob"


def test_foreign_jobs_hold_quota_until_they_finish(emulator, bedrock, knobs, submit, put_jsonl):
    model = f"anthropic.claude-foreign-{uuid.uuid4().hex[:6]}-v1:0"
    knobs(quota=3, foreign_jobs={model: 2}, foreign_job_duration_s=5000, queue_s=1e6,  # 0.5 s real
          extra_models=[model])
    uri = put_jsonl([claude_record(i) for i in range(100)])
    first = submit(uri, model_id=model)
    with pytest.raises(bedrock.exceptions.ServiceQuotaExceededException):
        submit(uri, model_id=model)
    assert emulator.stats()["foreign_in_flight"][model] == 2

    def slot_free():
        try:
            return submit(uri, model_id=model)
        except bedrock.exceptions.ServiceQuotaExceededException:
            return None

    second = wait_for(slot_free, timeout=5, what="foreign jobs to finish")
    for arn in (first, second):
        bedrock.stop_model_invocation_job(jobIdentifier=arn)


def test_stop_moves_through_stopping_to_stopped_and_keeps_processed_records(
    bedrock, knobs, submit, put_jsonl, finish, outputs, manifest, monkeypatch
):
    """A second stop while the job is Stopping is accepted; a stop after Stopped is a conflict.

    The job is held in Stopping by gating its output write (the last step before Stopped), so both
    calls land in the state they are meant to, however slow the machine."""
    import emulator.jobs as emulator_jobs
    from emulator.processing import write_outputs

    writing, release = threading.Event(), threading.Event()
    held: list[str] = []

    def gated(store, output_uri, job_id, *args, **kwargs):
        if held and job_id == held[0]:
            writing.set()
            release.wait(30)
        return write_outputs(store, output_uri, job_id, *args, **kwargs)

    monkeypatch.setattr(emulator_jobs, "write_outputs", gated)
    knobs(record_s=1000)  # 1,000 records -> 100 s real: it is stopped long before the end
    arn = submit(put_jsonl([claude_record(i) for i in range(1000)]))
    held.append(arn.rsplit("/", 1)[-1])
    try:
        wait_for(
            lambda: bedrock.get_model_invocation_job(jobIdentifier=arn).get("processedRecordCount", 0) > 0,
            what="records to be processed",
        )
        bedrock.stop_model_invocation_job(jobIdentifier=arn)
        assert writing.wait(10), "the stopped job never wrote its outputs"
        assert bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] == "Stopping"
        bedrock.stop_model_invocation_job(jobIdentifier=arn)  # stopping twice is fine while Stopping
        assert bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] == "Stopping"
    finally:
        release.set()
    job = finish(arn)
    assert job["status"] == "Stopped"
    assert 0 < job["processedRecordCount"] < 1000
    assert len(outputs(arn)) == job["processedRecordCount"] == manifest(arn)["processedRecordCount"]
    with pytest.raises(bedrock.exceptions.ConflictException, match="Stopped state"):
        bedrock.stop_model_invocation_job(jobIdentifier=arn)  # once Stopped, a stop is refused


def test_a_job_stopped_before_it_runs_writes_nothing(s3, bucket, bedrock, knobs, submit, put_jsonl, finish):
    knobs(queue_s=1e6)
    arn = submit(put_jsonl([claude_record(i) for i in range(100)]))
    wait_for(lambda: bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] == "Scheduled")
    bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert finish(arn)["status"] == "Stopped"
    job_id = arn.rsplit("/", 1)[-1]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=f"output/{job_id}/")


def test_job_failure_rate_fails_jobs_with_the_configured_message(knobs, submit, put_jsonl, finish):
    knobs(job_failure_rate=1.0, job_failure_message="role cannot read the bucket")
    job = finish(submit(put_jsonl([claude_record(i) for i in range(100)])))
    assert (job["status"], job["message"]) == ("Failed", "role cannot read the bucket")


def test_job_fates_are_seeded_by_job_name(knobs, submit, put_jsonl, finish):
    """Same seed + same name = same fate; a resubmission under a new name draws again."""
    from emulator import Profile

    knobs(job_failure_rate=0.5, seed=7)
    uri = put_jsonl([claude_record(i) for i in range(100)])
    names = [f"fate-{uuid.uuid4().hex[:6]}-{i}" for i in range(8)]
    arns = {name: submit(uri, name=name) for name in names}
    statuses = {name: finish(arn)["status"] for name, arn in arns.items()}
    expected = Profile(job_failure_rate=0.5, seed=7)
    assert statuses == {n: "Failed" if expected.draw("fail", n) < 0.5 else "Completed" for n in names}


def test_fail_expire_and_partial_can_target_job_names(knobs, submit, put_jsonl, finish, outputs, manifest):
    knobs(fail_jobs_matching=["boom"], expire_jobs_matching=["late"], partial_jobs_matching=["half"])
    uri = put_jsonl([claude_record(i) for i in range(200)])
    assert finish(submit(uri, name=f"boom-{uuid.uuid4().hex[:6]}"))["status"] == "Failed"
    expired = finish(submit(uri, name=f"late-{uuid.uuid4().hex[:6]}"))
    assert expired["status"] == "Expired"
    partial_arn = submit(uri, name=f"half-{uuid.uuid4().hex[:6]}")
    partial = finish(partial_arn)
    assert partial["status"] == "PartiallyCompleted"
    assert 0 < partial["processedRecordCount"] < 200 == partial["totalRecordCount"]
    assert (
        len(outputs(partial_arn))
        == partial["processedRecordCount"]
        == manifest(partial_arn)["processedRecordCount"]
    )


def test_expire_and_partial_rates(knobs, submit, put_jsonl, finish):
    uri = put_jsonl([claude_record(i) for i in range(100)])
    knobs(expire_rate=1.0)
    assert finish(submit(uri))["status"] == "Expired"
    knobs(partial_rate=1.0)
    assert finish(submit(uri))["status"] == "PartiallyCompleted"


def test_a_queue_longer_than_the_timeout_expires_the_job(knobs, submit, put_jsonl, finish):
    knobs(queue_s=25 * 3600, time_scale=1e-5)  # the default 24 h timeout = 0.86 s real
    assert finish(submit(put_jsonl([claude_record(i) for i in range(100)])))["status"] == "Expired"


def test_record_errors_are_seeded_and_split_into_retryable_and_not(
    knobs, submit, put_jsonl, finish, outputs, manifest
):
    knobs(record_error_rate=0.3, retryable_error_share=0.5, seed=11)
    uri = put_jsonl([claude_record(i) for i in range(1000)])
    arn = submit(uri, name="record-errors-a")
    job = finish(arn)
    assert job["status"] == "Completed"  # record errors never fail the job
    out = outputs(arn)
    errors = [r for r in out if "error" in r]
    assert 200 < len(errors) < 400
    assert job["errorRecordCount"] == len(errors) == manifest(arn)["errorRecordCount"]
    codes = {r["error"]["errorCode"] for r in errors}
    assert codes == {400, 429, 500}
    assert all("modelOutput" not in r for r in errors)

    renamed = submit(uri, name="record-errors-b")
    finish(renamed)
    assert {r["recordId"] for r in outputs(renamed) if "error" in r} != {r["recordId"] for r in errors}


def test_counters_advance_while_in_progress(bedrock, knobs, submit, put_jsonl, finish):
    knobs(record_s=20)  # 1,000 records -> 2 s real
    arn = submit(put_jsonl([claude_record(i) for i in range(1000)]))
    seen = set()

    def progressed():
        job = bedrock.get_model_invocation_job(jobIdentifier=arn)
        seen.add(job.get("processedRecordCount"))
        return job["status"] == "Completed"

    wait_for(progressed, timeout=15)
    assert len({n for n in seen if n not in (None, 0, 1000)}) >= 2
