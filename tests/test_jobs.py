"""Job identity, the submission ledger and the poll interval: the pieces that make submission exactly-once."""

from __future__ import annotations

import re

import botocore.loaders
import pytest

from tasks import jobs
from tasks.aws import client

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
