"""Job identity, the submission ledger and the poll interval: the pieces that make submission exactly-once."""

from __future__ import annotations

import re

import botocore.loaders
import pytest

from tasks.aws import client, jobs

_shapes = botocore.loaders.Loader().load_service_model("bedrock", "service-2")["shapes"]
JOB_NAME = re.compile(_shapes["ModelInvocationJobName"]["pattern"])
TOKEN = re.compile(_shapes["ModelInvocationIdempotencyToken"]["pattern"])


@pytest.mark.parametrize("prefix", ["joke_generation", "my job!", "__", "a" * 80, "ok-prefix.v2", "-x+y"])
def test_job_names_and_tokens_pass_bedrock_patterns_whatever_the_prefix(prefix: str) -> None:
    identity = jobs.job_identity(prefix, "0123456789ab", "shard-0007", "f" * 64, attempt=2)
    assert JOB_NAME.fullmatch(identity.job_name), identity.job_name
    assert len(identity.job_name) <= 63
    assert TOKEN.fullmatch(identity.client_request_token)
    assert "_" not in identity.job_name and " " not in identity.job_name


def test_identity_is_deterministic_and_changes_with_content_and_attempt() -> None:
    same = [jobs.job_identity("p", "run1", "shard-0001", "abc", 1) for _ in range(2)]
    assert same[0] == same[1]
    assert jobs.job_identity("p", "run1", "shard-0001", "abd", 1) != same[0]
    assert jobs.job_identity("p", "run1", "shard-0001", "abc", 2).job_name != same[0].job_name


def test_sanitize_prefix_says_what_bedrock_will_see() -> None:
    assert jobs.sanitize_prefix("joke_about topic") == "joke-about-topic"
    assert jobs.sanitize_prefix("___") == "batch"


def test_job_id_is_the_arns_last_segment() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abcd1234efgh"
    assert jobs.job_id_from_arn(arn) == "abcd1234efgh"


def test_poll_interval_is_short_near_the_end_and_grows_while_queued() -> None:
    queued = {"status": "Scheduled"}
    assert jobs.next_poll_interval(queued, 10, max_interval=300, min_interval=2) == 15
    assert jobs.next_poll_interval(queued, 250, max_interval=300, min_interval=2) == 300
    finishing = {"status": "InProgress", "totalRecordCount": 100, "processedRecordCount": 95}
    assert jobs.next_poll_interval(finishing, 200, max_interval=300, min_interval=2) == 2
    assert jobs.next_poll_interval({"status": "Stopping"}, 100, max_interval=300, min_interval=5) == 5


def test_ledger_round_trips_through_s3(aws, bucket) -> None:
    s3 = client("s3", aws)
    uri = f"s3://{bucket}/run/ledger/shard-0001.json"
    assert jobs.read_ledger(s3, uri, "shard-0001").entries == []
    ledger = jobs.Ledger(shard="shard-0001")
    ledger.record(jobs.LedgerEntry(attempt=1, job_name="j-a1", client_request_token="t1", state="submitting"))
    ledger.record(jobs.LedgerEntry(attempt=1, job_name="j-a1", client_request_token="t1", state="submitted",
                                   job_arn="arn:x/1"))
    jobs.write_ledger(s3, uri, ledger)
    back = jobs.read_ledger(s3, uri, "shard-0001")
    assert [(e.attempt, e.state, e.job_arn) for e in back.entries] == [(1, "submitted", "arn:x/1")]
    jobs.mark_terminal(s3, uri, "shard-0001", 1, "Failed", "no access")
    assert jobs.read_ledger(s3, uri, "shard-0001").latest.state == "terminal"


class FakeBedrock:
    """Bedrock's control plane as seen by `submit_once`: what it was asked and what it answers.

    A stand-in for the remote service only (our code under test is real): the end-to-end tests use the
    emulator over HTTP; here each exactly-once branch is driven on purpose.
    """

    def __init__(self, existing: dict[str, str] | None = None, conflict: bool = False) -> None:
        self.existing = dict(existing or {})  # job name -> ARN Bedrock already has
        self.conflict = conflict
        self.created: list[str] = []

    def get_paginator(self, name: str):
        assert name == "list_model_invocation_jobs"
        bedrock = self

        class Pages:
            def paginate(self, nameContains: str):
                return [{"invocationJobSummaries": [{"jobName": n, "jobArn": a, "status": "InProgress"}
                                                    for n, a in bedrock.existing.items() if nameContains in n]}]

        return Pages()

    def create_model_invocation_job(self, **request):
        from botocore.exceptions import ClientError

        if self.conflict:
            self.existing[request["jobName"]] = "arn:aws:bedrock:us-east-1:1:model-invocation-job/conflict0001"
            raise ClientError({"Error": {"Code": "ConflictException", "Message": "exists"}}, "Create")
        self.created.append(request["jobName"])
        arn = f"arn:aws:bedrock:us-east-1:1:model-invocation-job/new{len(self.created):09d}"
        self.existing[request["jobName"]] = arn
        return {"jobArn": arn}


SPEC = jobs.JobSpec(model_id="m", role_arn="r", input_uri="s3://b/i.jsonl", output_uri="s3://b/o/")


def _submit(s3, uri, bedrock, identity, content_hash="c" * 64):
    return jobs.submit_once(bedrock, s3, spec=SPEC, identity=identity, ledger_uri=uri, shard="shard-0001",
                            content_hash=content_hash)


def test_a_ledger_left_submitting_without_an_arn_finds_the_job_by_name_instead_of_submitting(aws, bucket) -> None:
    s3, uri = client("s3", aws), f"s3://{bucket}/run/ledger/shard-0001-cccc.json"
    identity = jobs.job_identity("p", "run1", "shard-0001", "c" * 64, 1)
    ledger = jobs.Ledger(shard="shard-0001", content_hash="c" * 64)
    ledger.record(jobs.LedgerEntry(attempt=1, job_name=identity.job_name,
                                   client_request_token=identity.client_request_token, state="submitting"))
    jobs.write_ledger(s3, uri, ledger)
    bedrock = FakeBedrock(existing={identity.job_name: "arn:aws:bedrock:us-east-1:1:model-invocation-job/x1"})
    assert _submit(s3, uri, bedrock, identity) == ("arn:aws:bedrock:us-east-1:1:model-invocation-job/x1", True)
    assert bedrock.created == []
    assert jobs.read_ledger(s3, uri, "shard-0001").latest.job_arn.endswith("/x1")


def test_a_conflict_on_create_attaches_to_the_job_bedrock_already_has(aws, bucket) -> None:
    s3, uri = client("s3", aws), f"s3://{bucket}/run/ledger/shard-0001-cccc.json"
    identity = jobs.job_identity("p", "run1", "shard-0001", "c" * 64, 1)
    arn, attached = _submit(s3, uri, FakeBedrock(conflict=True), identity)
    assert arn.endswith("/conflict0001") and attached is False
    assert jobs.read_ledger(s3, uri, "shard-0001").latest.state == "submitted"


def test_an_entry_for_another_job_is_never_attached_to(aws, bucket) -> None:
    s3, uri = client("s3", aws), f"s3://{bucket}/run/ledger/shard-0001-cccc.json"
    old = jobs.job_identity("p", "run-old", "shard-0001", "c" * 64, 1)
    ledger = jobs.Ledger(shard="shard-0001")
    ledger.record(jobs.LedgerEntry(attempt=1, job_name=old.job_name, client_request_token="t",
                                   state="submitted", job_arn="arn:aws:bedrock:us-east-1:1:model-invocation-job/old"))
    jobs.write_ledger(s3, uri, ledger)
    new = jobs.job_identity("p", "run-new", "shard-0001", "c" * 64, 1)
    bedrock = FakeBedrock()
    arn, attached = _submit(s3, uri, bedrock, new)
    assert not attached and bedrock.created == [new.job_name] and not arn.endswith("/old")


def test_a_ledger_of_other_content_refuses_to_attach(aws, bucket) -> None:
    s3, uri = client("s3", aws), f"s3://{bucket}/run/ledger/shard-0001-cccc.json"
    jobs.write_ledger(s3, uri, jobs.Ledger(shard="shard-0001", content_hash="d" * 64))
    identity = jobs.job_identity("p", "run1", "shard-0001", "c" * 64, 1)
    with pytest.raises(jobs.JobSubmissionError, match="refusing to attach"):
        _submit(s3, uri, FakeBedrock(), identity)


def test_an_unreachable_endpoint_is_transient_a_refusal_is_not() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    assert jobs.is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert jobs.is_transient(ReadTimeoutError(endpoint_url="http://127.0.0.1:1"))
    assert jobs.is_transient(ClientError({"Error": {"Code": "ThrottlingException"}}, "Get"))
    assert not jobs.is_transient(ClientError({"Error": {"Code": "ValidationException"}}, "Get"))
    assert not jobs.is_transient(jobs.JobSubmissionError("no"))


def test_polling_rides_out_an_outage_and_returns_the_terminal_state() -> None:
    from botocore.exceptions import EndpointConnectionError

    answers = [{"status": "InProgress"}, EndpointConnectionError(endpoint_url="x"),
               EndpointConnectionError(endpoint_url="x"), {"status": "Completed"}]
    seen: list[str] = []

    class Flaky:
        def get_model_invocation_job(self, jobIdentifier: str):
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return dict(answer)

    job = jobs.wait_until_terminal(Flaky(), "arn", max_interval=0.01, min_interval=0.01, step=0.005,
                                   on_transient=seen.append)
    assert job["status"] == "Completed" and len(seen) == 2 and not answers


def test_an_earlier_run_that_died_submitting_has_its_job_found_by_name_and_adopted(aws, bucket) -> None:
    from tasks.aws import harvest

    s3, uri = client("s3", aws), f"s3://{bucket}/run/ledger/shard-0001-cccc.json"
    identity = jobs.job_identity("p", "run1", "shard-0001", "c" * 64, 1)
    ledger = jobs.Ledger(shard="shard-0001", content_hash="c" * 64, input_uri="s3://b/i.jsonl",
                         snapshot_uri="s3://b/s.parquet", output_uri="s3://b/o/")
    ledger.record(jobs.LedgerEntry(attempt=1, job_name=identity.job_name,
                                   client_request_token=identity.client_request_token, state="submitting"))
    jobs.write_ledger(s3, uri, ledger)
    assert harvest.pending_jobs(s3, f"s3://{bucket}/run", FakeBedrock()) == []  # Bedrock never got it
    arn = "arn:aws:bedrock:us-east-1:1:model-invocation-job/paid00000001"
    pending = harvest.pending_jobs(s3, f"s3://{bucket}/run", FakeBedrock(existing={identity.job_name: arn}))
    assert [p.entry.job_arn for p in pending] == [arn]
    assert jobs.read_ledger(s3, uri, "shard-0001").latest.job_arn == arn  # written down at last
