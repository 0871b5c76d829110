"""Before any job: refuse what cannot work, adopt an earlier run's paid jobs, prepare the shards, estimate."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aws import client, harvest
from tasks.aws.preflight import run_checks
from tasks.core import answers
from tasks.core import cost as costs
from tasks.core.config import RunConfig
from tasks.core.prepare import PreparedRun, prepare_run
from tasks.core.settings import quotas, request_scope, resolve
from tasks.core.sources import SourceSpec, load_source
from tasks.logs import run_logger
from tasks.report import artifact_key


@task(name="preflight", cache_policy=NO_CACHE, persist_result=False)
def preflight(cfg: RunConfig) -> None:
    """Refuse a run that cannot work before anything is uploaded or created (tasks/aws/preflight.py)."""
    for warning in run_checks(cfg):
        run_logger().warning("pre-flight: %s", warning)


@task(name="adopt-earlier-jobs", cache_policy=NO_CACHE, persist_result=False)
def adopt_earlier_jobs(cfg: RunConfig) -> int:
    """Jobs an earlier run of this folder paid for but never collected: wait for them and cache their
    answers, so that planning sends none of their requests again. Returns how many jobs were adopted."""
    pending = harvest.pending_jobs(client("s3", cfg.aws), cfg.run_uri, client("bedrock", cfg.aws))
    if not pending:
        return 0
    log = run_logger()
    log.info("%d job(s) of an earlier run of %s are not collected yet (already paid for): waiting for them "
             "before planning", len(pending), cfg.run_uri)
    family, _, _ = resolve(cfg)
    cached = harvest.harvest(pending, family=family, scope=request_scope(cfg), cache_uri=cfg.cache_uri,
                             aws=cfg.aws, poll_interval_s=cfg.poll_interval_s, log=log.info)
    log.info("adopted %d earlier job(s): %s answer(s) in the answer cache", len(pending), f"{cached:,}")
    return len(pending)


@task(name="prepare", cache_policy=NO_CACHE, persist_result=False)
def prepare(cfg: RunConfig) -> PreparedRun:
    """Read the source, render prompts, plan shards, write JSONL + snapshots to S3."""
    log = run_logger()
    if cfg.prefix != cfg.job_name_prefix:
        log.warning("job_name_prefix %r becomes %r: Bedrock job names take letters, digits, '-', '+' and '.' "
                    "only, starting with a letter or digit", cfg.job_name_prefix, cfg.prefix)
    family, template, settings = resolve(cfg)
    source = load_source(
        SourceSpec(s3_uri=cfg.s3_uri, input_path=cfg.input_path, dataset_id=cfg.dataset_id, split=cfg.split,
                   record_id_column=cfg.record_id_column),
        cfg.aws,
    )
    answered = answers.cached_keys(cfg.cache_uri, cfg.aws) if cfg.reuse_answers else None
    prepared = prepare_run(
        source, family=family, settings=settings, template=template, run_uri=cfg.run_uri, aws=cfg.aws,
        quotas=quotas(cfg), input_column=cfg.input_column, max_num_jobs=cfg.max_num_jobs,
        max_record_bytes=cfg.max_record_bytes, model_id=cfg.model_id, invocation_type=cfg.invocation_type,
        answered=answered,
    )
    log.info("prepared %s rows: %d shard(s), %d wave(s)%s%s%s", f"{prepared.total_rows:,}", len(prepared.shards),
             prepared.plan.waves, ", on-demand (fewer rows than the job minimum)" if prepared.plan.on_demand else "",
             f", {prepared.cached_rows:,} answered from the answer cache (not sent)" if prepared.cached_rows else "",
             f", {prepared.invalid_rows:,} row(s) refused (see error_code invalid_input)"
             if prepared.invalid_rows else "")
    return prepared


@task(name="estimate", cache_policy=NO_CACHE, persist_result=False)
def estimate_run(prepared: PreparedRun, cfg: RunConfig) -> Any:
    """Tokens, cost and makespan before anything is submitted (the dry run's answer)."""
    from prefect.artifacts import create_table_artifact

    family, _, settings = resolve(cfg)
    estimate = costs.estimate(
        model_id=cfg.model_id,
        total_records=prepared.total_rows - prepared.invalid_rows - prepared.cached_rows,
        input_tokens=prepared.estimated_input_tokens,
        max_output_tokens=settings.max_tokens if family.kind == "text" else 0,
        # Rows under the job minimum go on-demand (no shard): forecast them as one job's worth (also when
        # nothing is left to send: every row cached or refused).
        n_shards=max(len(prepared.shards), 1),
        slots=cfg.max_concurrent_jobs,
        min_records_per_job=cfg.min_records_per_job,
        max_records_per_job=cfg.max_records_per_job,
        job_timeout_hours=cfg.timeout_hours,
        family=family,  # a structured run's requests carry its schema too
    )
    run_logger().info("estimate:\n%s", costs.format_estimate(estimate))
    try:
        create_table_artifact(table=costs.estimate_rows(estimate), key=artifact_key(cfg.prefix, "estimate"),
                              description="Estimated tokens, cost (batch price) and makespan")
    except Exception:  # no run context (unit use)
        pass
    return estimate
