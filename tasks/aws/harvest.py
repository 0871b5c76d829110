"""Collect jobs an earlier run of this folder submitted but never collected, into the answer cache.

A run that died mid-poll, or whose input or shard plan changed since, leaves paid jobs behind whose shards
this run would not submit again under the same content. Before planning, every such job (a ledger entry
with an ARN whose answers are not yet cached) is waited for and its outputs joined to the snapshot it
was given; the answers go to the cache, so planning sends none of its requests again. Its ledger entry
is then marked `harvested`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tasks.aws import AwsSettings, client, jobs, join_s3, split_s3_uri
from tasks.core import answers
from tasks.core.answers import RequestScope
from tasks.core.collect import collect_shard, in_parallel
from tasks.core.formats import ModelFamily


@dataclass(frozen=True)
class Pending:
    """One job an earlier run left without collecting."""

    ledger_uri: str
    ledger: jobs.Ledger
    entry: jobs.LedgerEntry


def ledgers(s3: Any, run_uri: str) -> Iterator[tuple[str, jobs.Ledger]]:
    """Every ledger under a run's folder (main shards and repair rounds)."""
    bucket, prefix = split_s3_uri(run_uri.rstrip("/") + "/")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if "/ledger/" in key and key.endswith(".json"):
                uri = f"s3://{bucket}/{key}"
                yield uri, jobs.read_ledger(s3, uri, key.rsplit("/", 1)[-1][: -len(".json")])


def pending_jobs(s3: Any, run_uri: str, bedrock: Any = None) -> list[Pending]:
    """Jobs with an ARN whose answers are not in the cache yet and that may still have some.

    An entry left "submitting" without an ARN (the run died between Bedrock's answer and the ledger
    write) is looked up by its job name: if Bedrock has it, it was paid for, and it is adopted too.
    """
    found = []
    for uri, ledger in ledgers(s3, run_uri):
        if not (ledger.output_uri and ledger.snapshot_uri and ledger.input_uri):
            continue  # a ledger that does not say where its outputs are: nothing to collect from
        for entry in ledger.entries:
            if entry.state == "submitting" and not entry.job_arn and bedrock is not None:
                job = jobs.find_job_by_name(bedrock, entry.job_name)
                if job is not None:
                    entry.job_arn, entry.state, entry.status = job["jobArn"], "submitted", job.get("status")
                    jobs.write_ledger(s3, uri, ledger)
            if entry.job_arn and not entry.harvested:
                if entry.state == "terminal" and entry.status not in jobs.COLLECTABLE:
                    continue
                found.append(Pending(uri, ledger, entry))
    return found


def harvest(
    pending: list[Pending], *, family: ModelFamily, scope: RequestScope, cache_uri: str, aws: AwsSettings,
    poll_interval_s: float, log: Callable[[str], None], workers: int = 4,
) -> int:
    """Wait for each pending job, collect its outputs into the answer cache; return answers cached."""
    bedrock, s3 = client("bedrock", aws), client("s3", aws)

    def one(job: Pending) -> int:
        arn, ledger = job.entry.job_arn or "", job.ledger
        described = jobs.wait_until_terminal(bedrock, arn, max_interval=poll_interval_s,
                                             min_interval=min(2.0, poll_interval_s), on_transient=log)
        status = described["status"]
        cached = 0
        if status in jobs.COLLECTABLE:
            result = collect_shard(
                family=family, output_prefix_uri=join_s3(ledger.output_uri or "", jobs.job_id_from_arn(arn)) + "/",
                snapshot_uri=ledger.snapshot_uri or "", input_file_name=(ledger.input_uri or "").rsplit("/", 1)[-1],
                aws=aws, job_name=job.entry.job_name, scope=scope,
            )
            cached = answers.store(cache_uri, jobs.job_id_from_arn(arn), result.answers, aws)
        log(f"attached to job {job.entry.job_name} of an earlier run ({status}): {cached:,} answer(s) into the "
            f"answer cache")
        jobs.mark_harvested(s3, job.ledger_uri, ledger.shard, arn)
        return cached

    return sum(in_parallel(one, pending, workers))
