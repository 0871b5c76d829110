"""The flow's steps as Prefect tasks: prepare, estimate, repair, finalize, and the cancellation hook.

Each step is a thin wrapper that turns a `RunConfig` into calls of the pure data-plane functions.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import harvest
from tasks.aws import client, jobs, join_s3, split_s3_uri, storage_options
from tasks.aws.ondemand import invoke_rows
from tasks.core import answers
from tasks.core import cost as costs
from tasks.core.answers import RequestScope
from tasks.core.collect import (
    RESULTS_DIR,
    ResultPart,
    apply_repairs,
    conform,
    join_results,
    mark_invalid,
    read_snapshot,
    split_keys,
    write_result_part,
    write_results_manifest,
)
from tasks.core.config import RunConfig, config_from_params
from tasks.core.formats import (
    RETRYABLE_ERROR_CODES,
    InferenceSettings,
    ModelFamily,
    model_input_dtype,
    resolve_family,
    result_schema,
)
from tasks.core.plan import Quotas
from tasks.core.prepare import PreparedRun, prepare_run
from tasks.core.sources import RECORD_ID, SourceSpec, load_source
from tasks.core.templates import PromptTemplate, load_template
from tasks.logs import LOGGER_NAME, run_logger
from tasks.report import RunSummary, artifact_key

MAX_REPAIR_ROUNDS = 2  # rounds that may submit batch jobs (each one a batch wait, hours on AWS)
# Records a repair may run again. `job_failed` is left out: its job already had `max_job_attempts` tries
# and failed for a reason about the job (role, input), not the records; the run fails naming it instead.
REPAIRABLE_ERROR_CODES = RETRYABLE_ERROR_CODES - {"job_failed"}


class RunFailed(RuntimeError):
    """Some shards' jobs failed every attempt; their rows carry the error, the rest of the output stands."""

    def __init__(self, summary: RunSummary, parts: list[ResultPart]) -> None:
        self.summary, self.parts = summary, parts
        failed = "; ".join(f"{j['shard']} job {j['job_name']}: {j['status']}: {j['message']}"
                           for j in summary.failed_jobs)
        super().__init__(f"{len(summary.failed_jobs)} job(s) failed after every attempt: {failed}. "
                         f"The other rows were written to {summary.results_uri}")


def inference_settings(cfg: RunConfig, template: PromptTemplate | None) -> InferenceSettings:
    """Flow parameters win over the template's defaults, which win over the family's
    (`InferenceSettings.resolve` is the one place that says so)."""
    return InferenceSettings.resolve(
        template, resolve_family(cfg.model_id, cfg.invocation_type),
        max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p, system=cfg.system_prompt,
        dimensions=cfg.embedding_dimensions, normalize=cfg.embedding_normalize,
    )


def resolve(cfg: RunConfig) -> tuple[ModelFamily, PromptTemplate | None, InferenceSettings]:
    family = resolve_family(cfg.model_id, cfg.invocation_type)
    template = None
    if family.kind == "text":
        if not (cfg.prompt_id or cfg.prompt_file):
            raise ValueError(f"model {cfg.model_id} generates text: give prompt_id or prompt_file")
        template = load_template(prompt_id=cfg.prompt_id, path=cfg.prompt_file)
    return family, template, inference_settings(cfg, template)


def request_scope(cfg: RunConfig) -> RequestScope:
    """What this run's request keys are relative to (model, invocation type, the modelInput type)."""
    family, _, settings = resolve(cfg)
    return RequestScope(cfg.model_id, cfg.invocation_type, model_input_dtype(family, settings))


def quotas(cfg: RunConfig) -> Quotas:
    return Quotas(min_records=cfg.min_records_per_job, max_records=cfg.max_records_per_job,
                  slots=cfg.max_concurrent_jobs)


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


@task(name="estimate", cache_policy=NO_CACHE, persist_result=False)
def estimate_run(prepared: PreparedRun, cfg: RunConfig) -> Any:
    """Tokens, cost and makespan before anything is submitted (the dry run's answer)."""
    from prefect.artifacts import create_table_artifact

    _, _, settings = resolve(cfg)
    estimate = costs.estimate(
        model_id=cfg.model_id,
        total_records=prepared.total_rows - prepared.invalid_rows - prepared.cached_rows,
        input_tokens=prepared.estimated_input_tokens,
        max_output_tokens=settings.max_tokens if resolve_family(cfg.model_id, cfg.invocation_type).kind == "text"
        else 0,
        # Rows under the job minimum go on-demand (no shard): forecast them as one job's worth (also when
        # nothing is left to send: every row cached or refused).
        n_shards=max(len(prepared.shards), 1),
        slots=cfg.max_concurrent_jobs,
        min_records_per_job=cfg.min_records_per_job,
        max_records_per_job=cfg.max_records_per_job,
        job_timeout_hours=cfg.timeout_hours,
    )
    run_logger().info("estimate:\n%s", costs.format_estimate(estimate))
    try:
        create_table_artifact(table=costs.estimate_rows(estimate), key=artifact_key(cfg.prefix, "estimate"),
                              description="Estimated tokens, cost (batch price) and makespan")
    except Exception:  # no run context (unit use)
        pass
    return estimate


def _retryable_rows(frames: list[pl.DataFrame], family: ModelFamily) -> pl.DataFrame:
    """Input rows (result columns dropped) whose error a new attempt may fix."""
    if not frames:
        return pl.DataFrame()
    failed = pl.concat(frames, how="diagonal_relaxed").filter(
        pl.col("error_code").is_in(sorted(REPAIRABLE_ERROR_CODES))
    )
    return failed.drop([c for c in result_schema(family) if c in failed.columns])


def repair(
    outcomes: list[Any], prepared: PreparedRun, cfg: RunConfig,
    run_shards: Callable[[PreparedRun, RunConfig, Any], list[Any]],
) -> tuple[pl.DataFrame | None, int]:
    """Retry records that failed for a retryable reason: as a repair job, or on-demand when too few.

    Returns the repair results (record_id + result columns, one row per repaired record, latest round
    wins), which `finalize` lays over the shards' parts, and the number of repair jobs run.
    """
    log = run_logger()
    family, template, settings = resolve(cfg)
    parts = [
        o.part
        for o in outcomes
        if o.part is not None and any(code in REPAIRABLE_ERROR_CODES for code in o.part.error_counts)
    ]
    pending = _retryable_rows([read_snapshot(p.uri, cfg.aws) for p in parts], family)
    results: list[pl.DataFrame] = []
    repair_jobs = 0
    # After the batch rounds, one more round when what is left is under the job minimum: it runs
    # on-demand at once, so a last repair job that ended PartiallyCompleted or Expired does not leave
    # its records in error.
    for round_no in range(1, MAX_REPAIR_ROUNDS + 2):
        if pending.is_empty():
            break
        if round_no > MAX_REPAIR_ROUNDS and pending.height >= cfg.min_records_per_job:
            break
        log.info("repair round %d: %s record(s) with retryable errors", round_no, f"{pending.height:,}")
        # Jobs for as many records as whole shards can take; the rest (under the minimum) on-demand.
        in_jobs = batchable_records(pending.height, cfg.min_records_per_job, cfg.max_records_per_job)
        chunks = [("", pending.head(in_jobs)), ("-tail", pending.slice(in_jobs))] if in_jobs else [("", pending)]
        done_parts: list[pl.DataFrame] = []
        for suffix, rows in chunks:
            if rows.is_empty():
                continue
            rep = prepare_run(
                rows.lazy(), family=family, settings=settings, template=template,
                run_uri=join_s3(cfg.run_uri, f"repair-{round_no}{suffix}"), aws=cfg.aws, quotas=quotas(cfg),
                input_column=cfg.input_column, max_record_bytes=cfg.max_record_bytes, model_id=cfg.model_id,
                invocation_type=cfg.invocation_type,
            )
            if rep.plan.on_demand:
                done_parts.append(serve_on_demand(rep, cfg, family, settings))
            else:
                rep_outcomes = run_shards(rep, cfg, None)
                repair_jobs += sum(o.submitted + (1 if o.attached else 0) for o in rep_outcomes)
                done_parts += [read_snapshot(o.part.uri, cfg.aws) for o in rep_outcomes if o.part]
        done = pl.concat(done_parts, how="diagonal_relaxed")
        # A repair job that failed as a whole says nothing new about its records: keep their first error.
        done = done.filter(~pl.col("error_code").is_in(["job_failed"]).fill_null(False))
        results.append(done.select(RECORD_ID, *result_schema(family)))
        still = done.filter(pl.col("error_code").is_in(sorted(REPAIRABLE_ERROR_CODES))).select(RECORD_ID)
        pending = pending.join(still, on=RECORD_ID, how="semi")
    if not results:
        return None, repair_jobs
    return (pl.concat(results, how="vertical_relaxed").unique(RECORD_ID, keep="last", maintain_order=True),
            repair_jobs)


def batchable_records(n: int, min_records: int, max_records: int) -> int:
    """How many of `n` records whole shards of `min_records..max_records` can take (0: too few for a job).

    `n` splits into k shards only if k x min <= n <= k x max; in a gap (1,706 records, 100 per shard) the
    first k x max go to jobs and the rest, fewer than the minimum, on-demand.
    """
    shards = n // min_records
    return min(n, shards * max_records)


def serve_on_demand(prepared: PreparedRun, cfg: RunConfig, family: ModelFamily,
                    settings: InferenceSettings) -> pl.DataFrame:
    """Rows under the job minimum: one runtime call each; returns rows in the output schema and puts the
    answers in the answer cache."""
    rows, keys = split_keys(read_snapshot(prepared.on_demand_uri, cfg.aws))
    run_logger().info("serving %s row(s) on-demand (below the %d-record job minimum)", f"{rows.height:,}",
                cfg.min_records_per_job)
    results = invoke_rows(rows.select(RECORD_ID, "prompt"), model_id=cfg.model_id, family=family,
                          settings=settings, aws=cfg.aws, concurrency=cfg.on_demand_concurrency)
    inputs = [c for c in prepared.columns if c in rows.columns]
    frame = conform(join_results(rows.select(inputs), results, family), family, inputs)
    name = "on-demand-" + hashlib.sha256("".join(sorted(keys.get_column(answers.KEY).drop_nulls().to_list()))
                                         .encode()).hexdigest()[:16]
    answers.store(cfg.cache_uri, name, answers.answers(frame, keys, family), cfg.aws)
    return frame


def finalize(
    outcomes: list[Any], repaired: pl.DataFrame | None, prepared: PreparedRun, cfg: RunConfig, elapsed_s: float,
    repair_jobs: int = 0, adopted: int = 0,
) -> tuple[RunSummary, list[ResultPart]]:
    """Lay repairs over the shards' parts, add cached, on-demand and refused rows, write the manifest.

    The manifest lists exactly this run's parts; any other `results/*.parquet` (a part of an earlier
    plan of this run's folder) is deleted, so no reader can mix two runs' rows.
    """
    aws = cfg.aws
    family, _, settings = resolve(cfg)
    parts: list[ResultPart] = []
    repaired_ids = repaired.get_column(RECORD_ID) if repaired is not None else None
    repaired_ok = 0
    for outcome in sorted(outcomes, key=lambda o: o.shard):
        part = outcome.part
        if repaired_ids is not None and part is not None and part.failed:
            frame = read_snapshot(part.uri, aws)
            hits = repaired.filter(pl.col(RECORD_ID).is_in(frame.get_column(RECORD_ID).implode()))
            if hits.height:
                repaired_ok += int(hits.get_column("error_code").is_null().sum())
                part = write_result_part(apply_repairs(frame, hits), cfg.run_uri, part.name, aws)
        if part is not None:
            parts.append(part)
    on_demand_rows = 0
    if prepared.plan.on_demand and prepared.on_demand_uri:
        frame = serve_on_demand(prepared, cfg, family, settings)
        if repaired is not None:
            frame = apply_repairs(frame, repaired.join(frame.select(RECORD_ID), on=RECORD_ID, how="semi"))
        on_demand_rows = frame.height
        parts.append(write_result_part(frame, cfg.run_uri, "part-on-demand", aws))
    if prepared.invalid_uri:
        parts.append(write_result_part(mark_invalid(prepared.invalid_uri, family, aws), cfg.run_uri,
                                       "part-invalid", aws))
    cached_tokens = (0, 0)
    if prepared.cached_uri:
        rows = read_snapshot(prepared.cached_uri, aws)
        inputs = [c for c in rows.columns if c != answers.KEY]
        frame = conform(answers.attach(rows, cfg.cache_uri, family, aws), family, inputs)
        cached_tokens = frame.select(pl.col("input_tokens").fill_null(0).sum(),
                                     pl.col("output_tokens").fill_null(0).sum()).row(0)
        parts.append(write_result_part(frame, cfg.run_uri, "part-cached", aws))

    summary = summarize(parts, outcomes, prepared, cfg, elapsed_s)
    summary.repaired, summary.on_demand = repaired_ok, on_demand_rows
    summary.repair_jobs, summary.jobs_attached = repair_jobs, summary.jobs_attached + adopted
    summary.cached = prepared.cached_rows
    summary.cache_saved_usd = _batch_cost(cfg.model_id, *cached_tokens) if prepared.cached_rows else None
    write_results_manifest(
        cfg.run_uri, parts, aws, extra={"run": summary.to_dict(), "jobs": [jobs_row(o) for o in outcomes]}
    )
    remove_stale_parts(cfg.run_uri, parts, aws)
    if summary.errors_by_code:
        run_logger().warning(
            "%s row(s) with an error, by error_code: %s", f"{summary.failed:,}", summary.errors_by_code
        )
    return summary, parts


def jobs_row(outcome: Any) -> dict[str, Any]:
    row = {k: v for k, v in vars(outcome).items() if k not in ("part", "manifest", "problems")}
    row["problems"] = list(outcome.problems)
    return row


def _batch_cost(model_id: str, input_tokens: int, output_tokens: int) -> float | None:
    """What these tokens cost at batch price (None for a model missing from the price table)."""
    try:
        price = costs.lookup_price(model_id)
    except costs.UnknownModelPrice:
        return None
    return costs.usd(input_tokens, price.batch_input_per_1k) + costs.usd(output_tokens, price.batch_output_per_1k)


def remove_stale_parts(run_uri: str, parts: list[ResultPart], aws: Any) -> list[str]:
    """Delete `results/*.parquet` files that are not among `parts` (left by an earlier plan)."""
    s3 = client("s3", aws)
    bucket, prefix = split_s3_uri(join_s3(run_uri, RESULTS_DIR) + "/")
    keep = {split_s3_uri(p.uri)[1] for p in parts}
    stale = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
             for o in page.get("Contents", []) if o["Key"].endswith(".parquet") and o["Key"] not in keep]
    for key in stale:
        s3.delete_object(Bucket=bucket, Key=key)
    return stale


def summarize(parts: list[ResultPart], outcomes: list[Any], prepared: PreparedRun, cfg: RunConfig,
              elapsed_s: float) -> RunSummary:
    tokens = (pl.scan_parquet([p.uri for p in parts], storage_options=storage_options(cfg.aws)).select(
        pl.col("input_tokens").fill_null(0).sum(), pl.col("output_tokens").fill_null(0).sum()).collect().row(0)
        if parts else (0, 0))
    errors: dict[str, int] = {}
    for part in parts:
        for code, n in part.error_counts.items():
            errors[code] = errors.get(code, 0) + n
    manifests = [o.manifest for o in outcomes if o.manifest]
    summary = RunSummary(
        run_key=cfg.key, run_uri=cfg.run_uri, model_id=cfg.model_id, total_rows=sum(p.rows for p in parts),
        ok=sum(p.ok for p in parts), failed=sum(p.failed for p in parts),
        shards=len(prepared.shards), jobs_submitted=sum(o.submitted for o in outcomes),
        jobs_attached=sum(1 for o in outcomes if o.attached),
        input_tokens=int(tokens[0]), output_tokens=int(tokens[1]), elapsed_s=elapsed_s,
        errors_by_code=dict(sorted(errors.items())),
        results_uri=join_s3(cfg.run_uri, RESULTS_DIR) + "/",
        failed_jobs=[{"shard": o.shard, "job_name": o.job_name, "job_arn": o.job_arn, "status": o.status,
                      "message": o.message} for o in outcomes if o.status not in jobs.COLLECTABLE],
    )
    try:
        summary.cost_usd = costs.actual_cost(manifests, cfg.model_id).batch_usd if manifests else None
    except Exception:  # a model missing from the price table: report tokens, not a guess
        summary.cost_usd = None
    return summary


def stop_run_jobs(flow: Any, flow_run: Any, state: Any) -> None:
    """Cancellation hook: stop this run's Bedrock jobs that are still in flight (if configured)."""
    log = logging.getLogger(LOGGER_NAME)
    try:
        cfg = config_from_params(dict(flow_run.parameters))
    except Exception as err:
        log.warning("cannot stop jobs: parameters unreadable (%s)", err)
        return
    if not cfg.stop_jobs_on_cancel:
        log.info("run cancelled; its Bedrock jobs keep running (stop_jobs_on_cancel=false)")
    else:
        for arn, status in stop_in_flight(cfg):
            log.warning("run cancelled: job %s -> %s", arn, status)
    # The run's tasks will never release their slots (the runner killed the process): give them back.
    try:
        from tasks.concurrency import limit_name, release_run_slots

        released = release_run_slots(limit_name(cfg.model_id, cfg.aws.region), flow_run.id)
        if released:
            log.warning("run cancelled: released %d concurrency slot(s)", released)
    except Exception as err:  # the lease's expiry (or the next run's reclaim) gives them back later
        log.warning("could not release the run's concurrency slots: %s", err)


def stop_in_flight(cfg: RunConfig) -> list[tuple[str, str]]:
    """Stop every job of this run (main shards and repairs) that its ledgers show as not terminal."""
    s3, bedrock = client("s3", cfg.aws), client("bedrock", cfg.aws)
    return [(entry.job_arn, jobs.stop_job(bedrock, entry.job_arn))
            for _, ledger in harvest.ledgers(s3, cfg.run_uri) for entry in ledger.entries
            if entry.job_arn and entry.state != "terminal"]
