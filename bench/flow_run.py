"""The real flow on the emulator with scaled time: makespan, refill delay, and where the wall time went.

    python -m bench.flow_run --rows 220000 --slots 20 --poll-interval-s 2 --target-s 150

The job shapes of the seed's 2.2M-row run are kept at any `--rows`: `max_records_per_job` scales with
rows / 2.2M and the emulator's `record_s` with 2.2M / rows, so every job lasts, in emulated seconds,
what it would at full size (930 s of submit + validation + queue, then 0.5 s per record of a 2.2M-row
run). `time_scale` maps the expected makespan (~16 h emulated) onto `--target-s` real seconds.

From the emulator's call log and the jobs' Get/List descriptions (submitTime, endTime):
- makespan = last job end - first submission (converted back to emulated seconds);
- refill delay = for each job end while shards still wait, the time to the next CreateModelInvocationJob;
- wall time split: flow start -> first submission (prepare + planning + setup), jobs, last end -> done
  (the last collections + report).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime
from typing import Any

from bench import datagen
from bench.makespan import OVERHEAD_S, RECORD_S

FULL_ROWS, FULL_MAX = 2_200_000, 50_000


def _ts(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=220_000)
    parser.add_argument("--slots", type=int, default=20)
    parser.add_argument("--poll-interval-s", type=float, default=2.0)
    parser.add_argument("--target-s", type=float, default=150.0, help="real seconds the job phase should take")
    parser.add_argument(
        "--slot-wait-s", type=float, default=None,
        help="cap of the Prefect server's Retry-After for a full concurrency limit "
        "(PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS, Prefect's default 30)",
    )
    parser.add_argument("--endpoint", choices=("process", "inline"), default="process",
                        help="the emulator in its own process (default) or in the flow's process (--local)")
    args = parser.parse_args()
    if args.slot_wait_s is not None:
        os.environ["PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS"] = str(args.slot_wait_s)

    scale = args.rows / FULL_ROWS
    max_records = max(100, round(FULL_MAX * scale))
    record_s = RECORD_S / scale
    expected_emulated = 3 * (OVERHEAD_S + record_s * args.rows / (3 * args.slots))
    time_scale = args.target_s / expected_emulated
    profile = {"time_scale": time_scale, "record_s": record_s, "quota": args.slots}
    data = datagen.ensure("simplecot", args.rows)

    if args.endpoint == "process":  # as in `python -m emulator`: its work does not share the flow's GIL
        from bench.common import Endpoint

        server: Any = Endpoint(profile)
    else:  # in the flow's process, as `--local` runs it
        from emulator import start

        server = start(port=0, profile=profile)
    os.environ.update(server.env())
    from flows.batch_inference import batch_inference
    from tasks.aws import AwsSettings, client
    from tasks.core.config import LOCAL_BUCKET, LOCAL_ROLE_ARN

    s3 = client("s3", AwsSettings.from_env())
    try:
        s3.create_bucket(Bucket=LOCAL_BUCKET)
    except Exception:  # already there
        pass
    prefix = f"bench-{int(time.time())}"
    started = time.time()
    try:
        summary = batch_inference(
            input_path=str(data), prompt_id="question_answering", job_name_prefix=prefix,
            max_concurrent_jobs=args.slots, max_records_per_job=max_records, poll_interval_s=args.poll_interval_s,
            role_arn=LOCAL_ROLE_ARN, repair_failed=False,
        )
        error = None
    except Exception as err:  # report what happened, the figures are still worth reading
        summary, error = None, f"{type(err).__name__}: {err}"
    finished = time.time()
    calls = server.get("/_emulator/calls") if args.endpoint == "process" else server.calls()
    bedrock = client("bedrock", AwsSettings.from_env())
    jobs = [
        j for page in bedrock.get_paginator("list_model_invocation_jobs").paginate(nameContains=prefix)
        for j in page["invocationJobSummaries"]
    ]
    server.stop()

    creates = sorted(_ts(c["time"]) for c in calls if c["operation"] == "CreateModelInvocationJob"
                     and c.get("status_code", 200) == 200)
    submits = sorted(_ts(j["submitTime"]) for j in jobs)
    ends = sorted(_ts(j["endTime"]) for j in jobs if j.get("endTime"))
    gets: dict[str, list[float]] = {}
    for c in calls:
        if c["operation"] == "GetModelInvocationJob" and c.get("jobArn"):
            gets.setdefault(c["jobArn"], []).append(_ts(c["time"]))
    delays, detect, resubmit = [], [], []
    for job in sorted((j for j in jobs if j.get("endTime")), key=lambda j: _ts(j["endTime"])):
        end = _ts(job["endTime"])
        if not any(s > end for s in submits):
            break  # nothing left to submit: no refill to wait for
        nxt = min((c for c in creates if c > end), default=None)
        seen = max((g for g in gets.get(job["jobArn"], []) if g >= end), default=None)
        if nxt is not None:
            delays.append(nxt - end)
            if seen is not None:
                detect.append(seen - end)
                resubmit.append(nxt - seen)
    makespan_real = ends[-1] - submits[0] if ends and submits else float("nan")
    makespan_emulated = makespan_real / time_scale
    full_rate = max_records / (OVERHEAD_S + record_s * max_records)
    lower = args.rows / (args.slots * full_rate)
    records_bound = args.rows * record_s / args.slots
    result = {
        "rows": args.rows,
        "slots": args.slots,
        "slot_wait_s": args.slot_wait_s,
        "endpoint": args.endpoint,
        "max_records_per_job": max_records,
        "jobs": len(jobs),
        "statuses": sorted({j["status"] for j in jobs}),
        "time_scale": time_scale,
        "poll_interval_s": args.poll_interval_s,
        "makespan_real_s": makespan_real,
        "makespan_emulated_h": makespan_emulated / 3600,
        "lower_bound_emulated_h": lower / 3600,
        "makespan_vs_lower_bound": makespan_emulated / lower,
        "makespan_vs_records_bound": makespan_emulated / records_bound,
        "refills": len(delays),
        "refill_delay_max_s": max(delays) if delays else 0.0,
        "refill_delay_median_s": statistics.median(delays) if delays else 0.0,
        "refill_delay_mean_s": statistics.fmean(delays) if delays else 0.0,
        "refill_detect_median_s": statistics.median(detect) if detect else 0.0,
        "refill_detect_max_s": max(detect) if detect else 0.0,
        "refill_detected_to_next_create_median_s": statistics.median(resubmit) if resubmit else 0.0,
        "refill_detected_to_next_create_max_s": max(resubmit) if resubmit else 0.0,
        "wall_s": finished - started,
        "wall_split_s": {
            "before_first_submit": (submits[0] - started) if submits else None,
            "jobs_first_submit_to_last_end": makespan_real,
            "after_last_job_end": (finished - ends[-1]) if ends else None,
        },
        "ok": (summary or {}).get("ok"),
        "failed": (summary or {}).get("failed"),
        "error": error,
    }
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
