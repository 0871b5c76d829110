"""Bedrock batch inference, end to end: prepare -> run jobs -> repair -> collect -> report.

Run it three ways: `prefect deployment run 'bedrock-batch-inference/<deployment>' -p ...`, watched in the
Prefect UI, or as plain Python: `python -m flows.batch_inference --help` (`--local` runs everything
offline against the bundled emulator).
"""

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed, State
from prefect_aws import AwsCredentials

from tasks.aws.preflight import refusal
from tasks.core import cost as costs
from tasks.core.config import InvocationType, RunConfig, config_from_params
from tasks.report import (
    RunProgress,
    RunSummary,
    artifact_key,
    publish_jobs_table,
    publish_metrics,
    publish_results,
)
from tasks.steps.cancel import stop_run_jobs
from tasks.steps.finalize import RunFailed, finalize
from tasks.steps.prepare import adopt_earlier_jobs, estimate_run, preflight, prepare
from tasks.steps.repair import repair
from tasks.steps.run_jobs import run_jobs
from tasks.watch import RunWatcher

DEFAULT_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


def refused(err: ValueError) -> State:
    """A refused run ends Failed with the one-line reason as its state message (the CLI prints it)."""
    reason = refusal(err)
    return Failed(message=str(reason), data=reason)


@flow(
    name="bedrock-batch-inference",
    log_prints=True,
    persist_result=False,
    # Cancelling stops the run's Bedrock jobs (stop_jobs_on_cancel); a crash leaves them running so that
    # a re-run attaches to them instead of paying for them twice.
    on_cancellation=[stop_run_jobs],
)
def batch_inference(
    # source
    s3_uri: str | None = None,
    input_path: str | None = None,
    dataset_id: str | None = None,
    split: str = "train",
    record_id_column: str = "record_id",
    # prompt and model
    model_id: str = DEFAULT_MODEL,
    prompt_id: str | None = None,
    prompt_file: str | None = None,
    input_column: str = "input_text",
    invocation_type: InvocationType = "InvokeModel",
    # inference settings
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    system_prompt: str | None = None,
    embedding_dimensions: int = 1024,
    embedding_normalize: bool = True,
    # limits
    max_concurrent_jobs: int = 20,
    max_records_per_job: int = 50_000,
    min_records_per_job: int = 100,
    max_record_bytes: int = 1_000_000,
    max_num_jobs: int | None = None,
    max_job_attempts: int = 3,
    timeout_hours: int = 72,
    poll_interval_s: float = 300.0,
    queued_warn_hours: float = 6.0,
    expiry_warn_hours: float = 6.0,
    budget_usd: float | None = None,
    # output and AWS
    output_uri: str | None = None,
    job_name_prefix: str = "bedrock-batch",
    role_arn: str | None = None,
    region: str | None = None,
    aws_credentials: AwsCredentials | None = None,
    # behaviour
    repair_failed: bool = True,
    reuse_answers: bool = True,
    stop_jobs_on_cancel: bool = True,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Run a dataset through a Bedrock model with batch inference (50% of on-demand price).

    Exactly one source: `s3_uri`, `input_path` or `dataset_id` + `split`. Output: Parquet under
    `output_uri`/<run key>/results/ (its manifest.json lists the parts).

    Args:
        s3_uri: Source. CSV, Parquet or JSONL on S3: a file, a folder (recursive) or a glob.
        input_path: Source. The same on disk (a path the flow's machine can read).
        dataset_id: Source. A Hugging Face dataset id, or a local dataset folder.
        split: Source. The dataset split to read (with dataset_id).
        record_id_column: Source. The column that identifies a row; without it each row gets r + its
            10-digit index.
        model_id: Prompt and model. A Bedrock model id, inference profile id (us., eu., apac., global.)
            or ARN: Claude, Nova, Llama, Mistral, Titan Text Embeddings V2, others with Converse.
        prompt_id: Prompt and model. A template of prompts/ (joke_about_topic, sentiment_classifier,
            question_answering...); not needed for embeddings.
        prompt_file: Prompt and model. A template YAML file instead of prompt_id.
        input_column: Prompt and model. The text column an embedding model reads.
        invocation_type: Prompt and model. InvokeModel (the family's native body) or Converse.
        max_tokens: Inference settings. Longest answer; empty: the template's, else the family's default.
        temperature: Inference settings. Sampling temperature; empty: the template's or the model's.
        top_p: Inference settings. Nucleus sampling; empty: the template's or the model's.
        system_prompt: Inference settings. Replaces the template's system prompt.
        embedding_dimensions: Inference settings. Titan Text Embeddings V2: 256, 512 or 1024.
        embedding_normalize: Inference settings. Titan Text Embeddings V2: unit-length vectors.
        max_concurrent_jobs: Limits. This run's jobs in flight at most (the model's shared quota is
            the operator's concurrency limit).
        max_records_per_job: Limits. Bedrock's largest job (records); lower it for shorter jobs.
        min_records_per_job: Limits. Bedrock's smallest job; fewer rows than this go on-demand.
        max_record_bytes: Limits. A request line above this refuses the run before any upload.
        max_num_jobs: Limits. Cap the number of jobs (a trial run on the first rows); empty: all.
        max_job_attempts: Limits. A Failed or Expired job is resubmitted under a new name up to this
            many times.
        timeout_hours: Limits. Bedrock's job timeout (24 to 168 hours).
        poll_interval_s: Limits. The longest wait between two polls of a job (adaptive below it).
        queued_warn_hours: Limits. Warn (log and event) when a job is queued this long.
        expiry_warn_hours: Limits. Warn when a job is this close to its expiry.
        budget_usd: Limits. Refuse to submit when the estimate at batch price is above this.
        output_uri: Output and AWS. Where the run's folder and the answer cache go (s3://bucket/prefix).
        job_name_prefix: Output and AWS. Prefix of job names and of the run's folder.
        role_arn: Output and AWS. The Bedrock batch service role; required unless dry_run.
        region: Output and AWS. AWS region; empty: the credentials' or the environment's.
        aws_credentials: Output and AWS. A prefect-aws AwsCredentials block (profile or keys, region,
            client parameters such as an endpoint URL); empty: the default credential chain.
        repair_failed: Behaviour. Run again the records that failed for a retryable reason.
        reuse_answers: Behaviour. Answer requests already answered (the answer cache) without paying
            again.
        stop_jobs_on_cancel: Behaviour. Cancelling the run stops its Bedrock jobs.
        dry_run: Behaviour. Plan and estimate only: nothing is submitted.
    """
    try:  # bad input of any kind (a ValueError) refuses the run: nothing submitted, one line to read
        cfg = config_from_params(locals())
        started = time.monotonic()
        log = get_run_logger()
        log.info("run %s -> %s", cfg.key, cfg.run_uri)

        preflight(cfg)  # first: nothing is uploaded, created or submitted for a run it refuses
        # An earlier run's paid, uncollected jobs: their answers into the answer cache before planning.
        adopted = 0 if cfg.dry_run else adopt_earlier_jobs(cfg)
        prepared = prepare(cfg)
        estimate = estimate_run(prepared, cfg)
        if not cfg.dry_run:
            costs.check_budget(estimate, cfg.budget_usd)
    except ValueError as err:
        return refused(err)  # type: ignore[return-value]
    if cfg.dry_run:
        return RunSummary(run_key=cfg.key, run_uri=cfg.run_uri, model_id=cfg.model_id,
                          total_rows=prepared.total_rows, shards=len(prepared.shards), dry_run=True,
                          estimate={"rows": costs.estimate_rows(estimate),
                                    "text": costs.format_estimate(estimate)}).to_dict()

    progress = RunProgress(prepared.total_rows, artifact_key(cfg.prefix, "progress"), log,
                           jobs_key=artifact_key(cfg.prefix, "jobs"), model_id=cfg.model_id)
    progress.expect([s.name for s in prepared.shards])
    with RunWatcher(cfg, log, interval_s=min(cfg.poll_interval_s, 60.0)) as watcher:
        outcomes = run_jobs(prepared, cfg, progress)
        repaired, repair_jobs = repair(outcomes, prepared, cfg) if cfg.repair_failed else (None, 0)
    publish_metrics(watcher.history, artifact_key(cfg.prefix, "cloudwatch"))
    summary, parts = finalize(outcomes, repaired, prepared, cfg, elapsed_s=time.monotonic() - started,
                              repair_jobs=repair_jobs, adopted=adopted)
    progress.finish()

    publish_jobs_table(outcomes, artifact_key(cfg.prefix, "jobs"))
    publish_results(summary, artifact_key(cfg.prefix, "results"), _results_link(summary, cfg))
    log.info("done: %s ok, %s with error, output %s", f"{summary.ok:,}", f"{summary.failed:,}",
             summary.results_uri)
    if summary.failed_jobs:
        raise RunFailed(summary, parts)
    return summary.to_dict()


def _results_link(summary: RunSummary, cfg: RunConfig) -> str | None:
    if not summary.results_uri:
        return None
    bucket_key = summary.results_uri[len("s3://"):]
    if cfg.aws.endpoint_url:
        return f"{cfg.aws.endpoint_url.rstrip('/')}/{bucket_key}"
    bucket, _, key = bucket_key.partition("/")
    return f"https://s3.console.aws.amazon.com/s3/buckets/{bucket}?prefix={key}"


if __name__ == "__main__":
    from flows.cli import main

    raise SystemExit(main())
