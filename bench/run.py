"""Run the benchmarks at N rows: `python -m bench.run --rows N [--json]`.

Stages (each timed in a fresh subprocess, the endpoint in another process):
  prepare   SimpleCoT rows -> question_answering prompts -> Claude bodies -> JSONL shards on the endpoint
  emulate   every prepared shard as a real emulator job (time scale 1e-6, the quota refilled as jobs end):
            the emulator's own rows/s, next to prepare's
  collect   the first `--collect-shards` jobs' `.jsonl.out` -> joined Parquet (their own jobs without emulate)
  titan     `--titan-rows` embedding texts through Titan V2 at 1024 dims, then collect
  structured (opt-in: `--stages structured`) `--structured-rows` texts through `sentiment_classifier` on Claude
            twice, without and with its `output_schema` (tool use; typed `output`), then a third time with
            the emulator breaking 20% of the answers: structured collect as a ratio to plain-text collect
  floors    the same bytes through Polars I/O only (see bench/stages.py), in the same run
  memory    prepare's peak RSS at each of `--memory-rows` (e.g. 1100000,2200000,4400000)
  makespan  the planner vs fixed slicing vs the lower bound (bench/makespan.py); with `--flow-rows`, the
            real flow on the emulator with scaled time (bench/flow_run.py)
Prints a human table on stderr and (with --json) one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from bench import datagen, makespan
from bench.common import BUCKET, PYTHON, REPO, Endpoint, endpoint, machine, run_stage
from tasks.core.plan import Quotas

MIN_RECORDS = Quotas().min_records

FAST_JOBS = {"time_scale": 1e-6, "metrics_interval_s": 1e9}


def _aws(server: Endpoint) -> Any:
    os.environ.update(server.env())
    from tasks.aws import AwsSettings, client

    settings = AwsSettings.from_env()
    s3 = client("s3", settings)
    try:
        s3.create_bucket(Bucket=BUCKET)
    except Exception:  # already there
        pass
    return settings


def run_jobs(server: Endpoint, shards: list[dict[str, Any]], model_id: str, run_uri: str) -> list[dict[str, Any]]:
    """Real emulator jobs on the given shards, submitted as the per-model quota lets them in (a refused
    Create waits for the next job to end, as the flow's slots do); wait for all; where their outputs are."""
    from botocore.exceptions import ClientError

    from tasks.aws import client

    bedrock = client("bedrock", _aws(server))
    stamp = int(time.time() * 1000) % 10**9
    waiting = list(shards)
    running: list[tuple[dict[str, Any], str, str]] = []
    jobs = []
    while waiting or running:
        while waiting:
            shard = waiting[0]
            out = f"{run_uri}/jobs/{shard['name']}/"
            try:
                arn = bedrock.create_model_invocation_job(
                    jobName=f"bench-{stamp}-{shard['name']}",
                    roleArn="arn:aws:iam::123456789012:role/BedrockBatchInferenceRole",
                    modelId=model_id,
                    inputDataConfig={"s3InputDataConfig": {"s3Uri": shard["input_uri"], "s3InputFormat": "JSONL"}},
                    outputDataConfig={"s3OutputDataConfig": {"s3Uri": out}},
                )["jobArn"]
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ServiceQuotaExceededException" or not running:
                    raise
                break
            running.append((waiting.pop(0), arn, out))
        time.sleep(0.05)
        for item in list(running):
            shard, arn, out = item
            status = bedrock.get_model_invocation_job(jobIdentifier=arn)["status"]
            if status in ("Submitted", "Validating", "Scheduled", "InProgress", "Stopping"):
                continue
            if status != "Completed":
                raise RuntimeError(f"bench job for {shard['name']} ended {status}")
            running.remove(item)
            job_id = arn.rsplit("/", 1)[-1]
            input_file = shard["input_uri"].rsplit("/", 1)[-1]
            jobs.append({
                "name": shard["name"],
                "output_prefix_uri": f"{out}{job_id}/",
                "output_uri": f"{out}{job_id}/{input_file}.out",
                "snapshot_uri": shard["snapshot_uri"],
                "input_file_name": input_file,
                "records": shard["records"],
            })
    order = {s["name"]: i for i, s in enumerate(shards)}
    return sorted(jobs, key=lambda j: order[j["name"]])


def bench_emulate(server: Endpoint, prepared: dict[str, Any], model: str) -> dict[str, Any]:
    """Every prepared shard through the emulator at time scale 1e-6, so that the wall time is the
    emulator's own work: read and validate each input, answer every record, write the outputs."""
    from bench.stages import MODELS

    run_uri = prepared["shards"][0]["input_uri"].rsplit("/input/", 1)[0]
    t0 = time.perf_counter()
    jobs = run_jobs(server, prepared["shards"], MODELS[model], run_uri)
    seconds = time.perf_counter() - t0
    profile = server.get("/_emulator/profile")
    return {
        "rows": sum(j["records"] for j in jobs), "jobs": jobs, "seconds": seconds,
        "quota": profile["quota"], "workers": profile["workers"],
    }


def _output_bytes(server: Endpoint, jobs: list[dict[str, Any]]) -> int:
    from tasks.aws import AwsSettings, client, split_s3_uri

    s3 = client("s3", AwsSettings.from_env())
    total = 0
    for job in jobs:
        bucket, key = split_s3_uri(job["output_uri"])
        total += int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
    return total


def bench_prepare(server: Endpoint, rows: int, tag: str) -> dict[str, Any]:
    _aws(server)
    data = datagen.ensure("simplecot", rows)
    run_uri = f"s3://{BUCKET}/{tag}/claude-{rows}"
    result = run_stage("prepare", {"model": "claude", "data": str(data), "run_uri": run_uri}, server.env())
    floor = run_stage(
        "prepare_floor",
        {"data": str(data), "run_uri": run_uri, "shard_bytes": result["shard_bytes"],
         "shard_records": result["shard_records"]},
        server.env(),
    )
    result["floor"] = floor
    return result


def bench_cache(server: Endpoint, rows: int, cold: dict[str, Any], tag: str) -> dict[str, Any]:
    """Prepare again with every request in the answer cache (keys loaded, looked up in the staging pass,
    nothing planned or uploaded but the cached rows), beside the cold prepare of the same run."""
    data = datagen.ensure("simplecot", rows)
    cache_uri = f"s3://{BUCKET}/{tag}/answer-cache"
    filled = run_stage("fill_cache", {"snapshots": [s["snapshot_uri"] for s in cold["shards"]],
                                      "cache_uri": cache_uri}, server.env())
    warm = run_stage("prepare", {"model": "claude", "data": str(data), "run_uri": f"s3://{BUCKET}/{tag}/warm-{rows}",
                                 "cache_uri": cache_uri}, server.env())
    return {"answers": filled["answers"], **{k: warm[k] for k in ("seconds", "rows", "cached_rows",
                                                                  "load_cache_keys_s", "peak_rss_mb", "log")}}


def bench_collect(
    server: Endpoint, prepared: dict[str, Any], model: str, shards: int, tag: str,
    emulated: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Collect the first `shards` jobs' outputs (those of `emulated` when the emulate stage ran)."""
    from bench.stages import MODELS

    run_uri = prepared["shards"][0]["input_uri"].rsplit("/input/", 1)[0]
    if emulated is not None:
        jobs = emulated["jobs"][:shards]
    else:
        jobs = run_jobs(server, prepared["shards"][:shards], MODELS[model], run_uri)
    result = run_stage("collect", {"model": model, "jobs": jobs, "run_uri": f"{run_uri}/{tag}"}, server.env())
    floor = run_stage(
        "collect_floor", {"jobs": jobs, "part_bytes": result["part_bytes"], "run_uri": f"{run_uri}/{tag}"},
        server.env(),
    )
    result.update(floor=floor, output_bytes=_output_bytes(server, jobs))
    return result


def bench_titan(server: Endpoint, rows: int, tag: str) -> dict[str, Any]:
    _aws(server)
    data = datagen.ensure("embeddings", rows)
    run_uri = f"s3://{BUCKET}/{tag}/titan-{rows}"
    prepared = run_stage("prepare", {"model": "titan", "data": str(data), "run_uri": run_uri}, server.env())
    return bench_collect(server, prepared, "titan", len(prepared["shards"]), "collect")


def bench_structured(server: Endpoint, rows: int, tag: str, repeats: int = 5) -> dict[str, Any]:
    """The same rows and prompts collected as plain text and as structured output, in one run.

    Each variant's jobs run once; their collect then runs `repeats` times, the variants taking turns. The
    ratio reported is the median over the turns of structured / plain seconds (`*_fastest`: fastest over
    fastest).
    """
    from bench.stages import MODELS

    _aws(server)
    data = datagen.ensure("embeddings", rows)
    out: dict[str, Any] = {"rows": rows, "repeats": repeats}
    prepared: dict[str, Any] = {}
    jobs: dict[str, list[dict[str, Any]]] = {}
    variants = {"plain": False, "structured": True, "structured_invalid_20": True}
    for variant, structured in variants.items():
        run_uri = f"s3://{BUCKET}/{tag}/structured-{variant}-{rows}"
        if variant != "structured_invalid_20":  # the third variant sends the structured requests again
            prepared = run_stage("prepare", {"model": "claude", "data": str(data), "run_uri": run_uri,
                                             "prompt_id": "sentiment_classifier", "structured": structured},
                                 server.env())
        knobs = {"invalid_output_rate": 0.2} if variant == "structured_invalid_20" else {}
        if knobs:
            server.post("/_emulator/profile", {**FAST_JOBS, **knobs})
        try:
            jobs[variant] = run_jobs(server, prepared["shards"], MODELS["claude"], run_uri)
        finally:
            if knobs:
                server.post("/_emulator/profile", FAST_JOBS)
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for turn in range(repeats):
        # Back to back, the order reversed every other turn: a burst of other work on the shared machine
        # then lands on the variants alike, and each turn gives ratios of neighbours in time.
        for variant in (list(variants) if turn % 2 == 0 else list(reversed(variants))):
            run_uri = jobs[variant][0]["output_prefix_uri"].split("/jobs/", 1)[0]
            collected = run_stage("collect", {"model": "claude", "jobs": jobs[variant], "run_uri": f"{run_uri}/collect",
                                              "prompt_id": "sentiment_classifier", "structured": variants[variant]},
                                  server.env())
            seconds[variant].append(collected["seconds"])
            errors: dict[str, int] = {}
            for shard in collected["per_shard"]:
                for code, n in shard["errors"].items():
                    errors[code] = errors.get(code, 0) + n
            best = out.get(variant)
            if best is None or collected["seconds"] < best["seconds"]:
                out[variant] = {"seconds": collected["seconds"], "rows": collected["rows"], "ok": collected["ok"],
                                "errors": errors, "output_mb": _output_bytes(server, jobs[variant]) / 1e6,
                                "peak_rss_mb": collected["peak_rss_mb"]}
    for variant in variants:
        out[variant]["all_seconds"] = [round(x, 3) for x in seconds[variant]]
    for variant in ("structured", "structured_invalid_20"):
        ratios = sorted(a / b for a, b in zip(seconds[variant], seconds["plain"], strict=True))
        out[f"{variant}_vs_plain"] = ratios[len(ratios) // 2]  # median of the turns' ratios
        out[f"{variant}_vs_plain_fastest"] = out[variant]["seconds"] / out["plain"]["seconds"]
    return out


def bench_flow(rows: int, slots: int, poll_s: float, target_s: float) -> dict[str, Any]:
    import subprocess

    proc = subprocess.run(
        [PYTHON, "-m", "bench.flow_run", "--rows", str(rows), "--slots", str(slots), "--poll-interval-s", str(poll_s),
         "--target-s", str(target_s)],
        cwd=REPO, capture_output=True, text=True, timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"flow run failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": res["rows"], "machine": res["machine"]}
    p = res.get("prepare")
    if p:
        out.update(
            prepare_rows_per_s=p["rows"] / p["seconds"],
            prepare_mb_per_s=p["jsonl_bytes"] / 1e6 / p["seconds"],
            prepare_seconds=p["seconds"],
            prepare_floor_seconds=p["floor"]["seconds"],
            prepare_vs_floor=p["seconds"] / p["floor"]["seconds"],
            prepare_peak_rss_mb=p["peak_rss_mb"],
            prepare_jsonl_mb=p["jsonl_bytes"] / 1e6,
            prepare_plan=p["plan"],
        )
    w = res.get("cache")
    if w and p:
        out.update(
            prepare_warm_cache_seconds=w["seconds"],
            prepare_warm_cache_vs_cold=w["seconds"] / p["seconds"],
            prepare_warm_cache_rows_cached=w["cached_rows"],
            prepare_warm_cache_load_keys_s=w["load_cache_keys_s"],
            prepare_warm_cache_peak_rss_mb=w["peak_rss_mb"],
        )
    for key, name in (("collect", "collect"), ("titan", "titan_collect")):
        c = res.get(key)
        if c:
            out.update({
                f"{name}_rows": c["rows"],
                f"{name}_rows_per_s": c["rows"] / c["seconds"],
                f"{name}_mb_per_s": c["output_bytes"] / 1e6 / c["seconds"],
                f"{name}_seconds": c["seconds"],
                f"{name}_floor_seconds": c["floor"]["seconds"],
                f"{name}_vs_floor": c["seconds"] / c["floor"]["seconds"],
                f"{name}_peak_rss_mb": c["peak_rss_mb"],
                f"{name}_output_mb": c["output_bytes"] / 1e6,
            })
    st = res.get("structured")
    if st:
        out.update(
            structured_rows=st["rows"],
            structured_collect_vs_plain=st["structured_vs_plain"],
            structured_invalid_20_collect_vs_plain=st["structured_invalid_20_vs_plain"],
            structured_collect_vs_plain_fastest=st["structured_vs_plain_fastest"],
            structured_collect_rows_per_s=st["rows"] / st["structured"]["seconds"],
            plain_collect_rows_per_s=st["rows"] / st["plain"]["seconds"],
        )
    e = res.get("emulate")
    if e:
        out.update(
            emulator_rows=e["rows"],
            emulator_seconds=e["seconds"],
            emulator_rows_per_s=e["rows"] / e["seconds"],
            emulator_peak_rss_mb=res.get("endpoint_peak_rss_mb"),
        )
        if p:
            out["emulator_vs_prepare"] = out["emulator_rows_per_s"] / out["prepare_rows_per_s"]
    out["peak_rss_mb"] = max(
        [v for k, v in out.items() if k.endswith("_peak_rss_mb") and not k.startswith("titan")] or [0.0]
    )
    if res.get("memory"):
        out["memory_peak_rss_mb"] = {str(k): v["peak_rss_mb"] for k, v in res["memory"].items()}
        out["memory_rows_per_s"] = {str(k): v["rows"] / v["seconds"] for k, v in res["memory"].items()}
    m = res["makespan"]
    out["planner"] = m
    out["makespan_vs_lower_bound"] = m["balanced"]["vs_lower_bound"]
    out["makespan_source"] = "simulation"
    out["refill_delay_s"] = None  # the simulation refills at once: only the real flow (--flow-rows) says
    if res.get("flow"):
        f = res["flow"]
        out.update(
            makespan_vs_lower_bound=f["makespan_vs_lower_bound"],
            makespan_source="flow on the emulator",
            refill_delay_s=f["refill_delay_max_s"],
            refill_delay_median_s=f["refill_delay_median_s"],
            flow=f,
        )
    out["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return out


def table(s: dict[str, Any]) -> str:
    rows = [("figure", "value", "target")]

    def add(name: str, key: str, fmt: str, target: str = "") -> None:
        if s.get(key) is not None:
            rows.append((name, format(s[key], fmt), target))

    add("prepare rows/s", "prepare_rows_per_s", ",.0f")
    add("prepare JSONL MB/s", "prepare_mb_per_s", ",.1f")
    add("prepare vs floor", "prepare_vs_floor", ".2f", "<= 2")
    add("prepare peak RSS MB", "prepare_peak_rss_mb", ",.0f", "< 2048 at 2.2M")
    add("emulator rows/s (all Claude jobs)", "emulator_rows_per_s", ",.0f")
    add("emulator vs prepare rows/s", "emulator_vs_prepare", ".2f", ">= 1")
    add("collect rows/s (Claude)", "collect_rows_per_s", ",.0f")
    add("collect vs floor", "collect_vs_floor", ".2f", "<= 2")
    add("collect peak RSS MB", "collect_peak_rss_mb", ",.0f")
    add("Titan 1024 collect rows/s", "titan_collect_rows_per_s", ",.0f")
    add("Titan collect vs floor", "titan_collect_vs_floor", ".2f", "<= 3")
    add("structured collect vs plain text", "structured_collect_vs_plain", ".2f", "<= 1.5")
    add("  with 20% invalid answers", "structured_invalid_20_collect_vs_plain", ".2f")
    for n, mb in (s.get("memory_peak_rss_mb") or {}).items():
        rows.append((f"prepare peak RSS MB at {int(n):,}", f"{mb:,.0f}", ""))
    add("makespan vs lower bound", "makespan_vs_lower_bound", ".3f", "<= 1.05")
    add("refill delay s (median)", "refill_delay_median_s", ".2f")
    add("refill delay s (max)", "refill_delay_s", ".2f", "<= poll interval")
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--json", action="store_true", help="print the JSON object on stdout")
    parser.add_argument("--collect-shards", type=int, default=2)
    parser.add_argument("--titan-rows", type=int, default=None, help="default: min(rows, 20000)")
    parser.add_argument("--structured-rows", type=int, default=None, help="default: min(rows, 200000)")
    parser.add_argument("--memory-rows", default="", help="comma-separated row counts for the RSS curve")
    parser.add_argument("--flow-rows", type=int, default=None,
                        help="run the real flow at this size for the makespan and refill delay "
                        "(default: min(rows, 220000); 0: skip, the planner's simulation only)")
    parser.add_argument("--flow-slots", type=int, default=None,
                        help="default: 20, fewer for small runs so that there are at least three waves")
    parser.add_argument("--poll-interval-s", type=float, default=2.0)
    parser.add_argument("--flow-target-s", type=float, default=240.0, help="real seconds of the flow's job phase")
    parser.add_argument("--stages", default="prepare,cache,emulate,collect,titan,makespan")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    stages = set(args.stages.split(","))
    tag = f"b{int(time.time())}"
    res: dict[str, Any] = {"rows": args.rows, "machine": machine()}
    if stages & {"prepare", "collect", "titan", "structured"}:
        with endpoint(FAST_JOBS) as server:
            if stages & {"prepare", "emulate", "collect"}:
                res["prepare"] = bench_prepare(server, args.rows, tag)
            if "cache" in stages:
                res["cache"] = bench_cache(server, args.rows, res["prepare"], tag)
            if "emulate" in stages:
                res["emulate"] = bench_emulate(server, res["prepare"], "claude")
            if "collect" in stages:
                res["collect"] = bench_collect(
                    server, res["prepare"], "claude", args.collect_shards, "collect", res.get("emulate")
                )
            if "titan" in stages:
                res["titan"] = bench_titan(server, args.titan_rows or min(args.rows, 20_000), tag)
            if "structured" in stages:
                res["structured"] = bench_structured(server, args.structured_rows or min(args.rows, 200_000), tag)
            res["endpoint_peak_rss_mb"] = server.rss_mb()
    if args.memory_rows:
        res["memory"] = {}
        for n in (int(x) for x in args.memory_rows.split(",")):
            with endpoint(FAST_JOBS) as server:
                _aws(server)
                data = datagen.ensure("simplecot", n)
                res["memory"][n] = run_stage(
                    "prepare", {"model": "claude", "data": str(data), "run_uri": f"s3://{BUCKET}/{tag}/mem-{n}"},
                    server.env(),
                )
    res["makespan"] = makespan.compare(2_200_000)
    flow_rows = min(args.rows, 220_000) if args.flow_rows is None else args.flow_rows
    if flow_rows:
        slots = args.flow_slots or max(1, min(20, flow_rows // MIN_RECORDS // 3))
        res["flow"] = bench_flow(flow_rows, slots, args.poll_interval_s, args.flow_target_s)
    summary = summarize(res)
    summary["raw"] = {k: v for k, v in res.items() if k not in ("rows", "machine", "makespan")}
    for part in summary["raw"].values():
        if isinstance(part, dict):
            part.pop("shards", None)
            part.pop("jobs", None)
    print(table(summary), file=sys.stderr)
    text = json.dumps(summary, indent=1, default=str)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    if args.json:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
