"""The end of a run: lay repairs over the shards' results, add the cached, on-demand and refused rows,
write the results manifest and the summary."""

from __future__ import annotations

import hashlib
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.aws import client, jobs, join_s3, split_s3_uri, storage_options
from tasks.aws.ondemand import invoke_rows
from tasks.core import answers
from tasks.core import cost as costs
from tasks.core.collect import (
    RESULTS_DIR,
    ResultPart,
    apply_repairs,
    conform,
    in_parallel,
    join_results,
    mark_failed,
    mark_invalid,
    read_snapshot,
    split_keys,
    write_result_part,
    write_results_manifest,
)
from tasks.core.config import RunConfig
from tasks.core.prepare import PreparedRun
from tasks.core.settings import resolve
from tasks.core.sources import RECORD_ID
from tasks.logs import run_logger
from tasks.report import RunSummary
from tasks.steps.run_jobs import CANCELLED


class RunFailed(RuntimeError):
    """Some shards' jobs failed every attempt; their rows carry the error, the rest of the output stands."""

    def __init__(self, summary: RunSummary, parts: list[ResultPart]) -> None:
        self.summary, self.parts = summary, parts
        failed = "; ".join(f"{j['shard']} job {j['job_name']}: {j['status']}: {j['message']}"
                           for j in summary.failed_jobs)
        super().__init__(f"{len(summary.failed_jobs)} job(s) failed after every attempt: {failed}. "
                         f"The other rows were written to {summary.results_uri}")


@task(name="serve-on-demand", cache_policy=NO_CACHE, persist_result=False)
def serve_on_demand(prepared: PreparedRun, cfg: RunConfig) -> pl.DataFrame:
    """Rows under the job minimum: one runtime call each; returns rows in the output schema and puts the
    answers in the answer cache."""
    family, _, settings = resolve(cfg)
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


@task(name="finalize", cache_policy=NO_CACHE, persist_result=False)
def finalize(
    outcomes: list[Any], repaired: pl.DataFrame | None, prepared: PreparedRun, cfg: RunConfig, elapsed_s: float,
    repair_jobs: int = 0, adopted: int = 0, cancelled: bool = False,
) -> tuple[RunSummary, list[ResultPart]]:
    """Lay repairs over the shards' parts, add cached, on-demand and refused rows, write the manifest.

    The manifest lists exactly this run's parts; any other `results/*.parquet` (a part of an earlier
    plan of this run's folder) is deleted, so no reader can mix two runs' rows. A `cancelled` run serves
    nothing on-demand: those rows are marked `cancelled`.
    """
    return finalize_run(outcomes, repaired, prepared, cfg, elapsed_s, repair_jobs, adopted, cancelled)


def finalize_run(
    outcomes: list[Any], repaired: pl.DataFrame | None, prepared: PreparedRun, cfg: RunConfig, elapsed_s: float,
    repair_jobs: int = 0, adopted: int = 0, cancelled: bool = False,
) -> tuple[RunSummary, list[ResultPart]]:
    """`finalize` outside a flow run (the cancellation hook runs after the flow's process is gone)."""
    aws = cfg.aws
    family, _, _ = resolve(cfg)

    def with_repairs(part: ResultPart) -> tuple[ResultPart, int]:
        """The shard's part with its repaired records laid over it, and how many of those succeeded."""
        if repaired is None or not part.failed:
            return part, 0
        frame = read_snapshot(part.uri, aws)
        hits = repaired.filter(pl.col(RECORD_ID).is_in(frame.get_column(RECORD_ID).implode()))
        if not hits.height:
            return part, 0
        ok = int(hits.get_column("error_code").is_null().sum())
        return write_result_part(apply_repairs(frame, hits), cfg.run_uri, part.name, aws), ok

    shard_parts = [o.part for o in sorted(outcomes, key=lambda o: o.shard) if o.part is not None]
    done = in_parallel(with_repairs, shard_parts)
    parts: list[ResultPart] = [part for part, _ in done]
    repaired_ok = sum(ok for _, ok in done)
    on_demand_rows = 0
    if prepared.plan.on_demand and prepared.on_demand_uri and cancelled:
        frame = mark_failed(prepared.on_demand_uri, CANCELLED, "the run was cancelled before these rows were "
                            "sent on-demand", family, aws)
        on_demand_rows = frame.height
        parts.append(write_result_part(frame, cfg.run_uri, "part-on-demand", aws))
    elif prepared.plan.on_demand and prepared.on_demand_uri:
        frame = serve_on_demand.fn(prepared, cfg)
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
    for start in range(0, len(stale), 1000):  # DeleteObjects takes at most 1,000 keys
        batch = [{"Key": key} for key in stale[start:start + 1000]]
        failed = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True}).get("Errors")
        if failed:
            raise RuntimeError(f"could not delete stale result part(s) under s3://{bucket}/{prefix}: {failed[:3]}")
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


