"""CloudWatch for Bedrock batch inference: read the metrics, create alarms and a dashboard, and spot
jobs that sit in the queue too long or are about to expire.

Bedrock publishes batch metrics per account, model and region (namespace `AWS/Bedrock/Batch`,
dimension `ModelId`), not per job: they tell whether *anything* moves for that model, which is what an
operator watching a multi-hour run wants to know. Per-job state comes from GetModelInvocationJob; the
pure `job_warnings` turns one such response into warnings the flow can log and emit as Prefect events.

Builders (`metric_queries`, `stalled_alarm`, `token_rate_alarm`, `dashboard_body`) are pure and return
the exact API arguments; the functions that call AWS are thin. All clients come from `tasks.aws`.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect.events import emit_event

from tasks.aws import AwsSettings, client
from tasks.logs import run_logger

NAMESPACE = "AWS/Bedrock/Batch"
DIMENSION = "ModelId"
RECORDS_PENDING = "NumberOfRecordsPendingProcessing"
INPUT_TOKENS_PER_MINUTE = "NumberOfInputTokensProcessedPerMinute"
OUTPUT_TOKENS_PER_MINUTE = "NumberOfOutputTokensProcessedPerMinute"
TOKENS_PENDING = "NumberOfTokensPendingProcessing"  # Claude models only
BATCH_METRICS = (RECORDS_PENDING, INPUT_TOKENS_PER_MINUTE, OUTPUT_TOKENS_PER_MINUTE, TOKENS_PENDING)
# Backlogs are gauges (the worst value in a period is the honest one); rates are averaged.
_STAT = {RECORDS_PENDING: "Maximum", TOKENS_PENDING: "Maximum"}

DEFAULT_PREFIX = "bedrock-batch"  # matches the CloudFormation ProjectPrefix default (IAM scoping)
DEFAULT_STALLED_HOURS = 6
MAX_STALLED_HOURS = 168  # CloudWatch: Period x EvaluationPeriods <= 7 days for 1-hour periods

QUEUED_STATUSES = frozenset({"Submitted", "Validating", "Scheduled"})
# A job that can still run out of time (Stopping ends on its own).
EXPIRABLE_STATUSES = QUEUED_STATUSES | {"InProgress"}
DEFAULT_QUEUED_WARN_AFTER_S = 6 * 3600
DEFAULT_EXPIRY_WARN_WITHIN_S = 6 * 3600

log = logging.getLogger(__name__)


# --- metrics -------------------------------------------------------------------------------------


def _query_id(metric_name: str) -> str:
    """GetMetricData ids must start lowercase and hold only letters, digits and underscores."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", metric_name).lower()


def metric_queries(model_id: str, period_s: int = 60) -> list[dict[str, Any]]:
    """GetMetricData queries for the four batch metrics of one model."""
    return [
        {
            "Id": _query_id(name),
            "MetricStat": {
                "Metric": {
                    "Namespace": NAMESPACE,
                    "MetricName": name,
                    "Dimensions": [{"Name": DIMENSION, "Value": model_id}],
                },
                "Period": period_s,
                "Stat": _STAT.get(name, "Average"),
            },
            "ReturnData": True,
        }
        for name in BATCH_METRICS
    ]


def latest_values(results: Iterable[dict[str, Any]]) -> dict[str, float | None]:
    """The newest datapoint of each GetMetricData result (None when the metric had no data)."""
    by_id = {_query_id(name): name for name in BATCH_METRICS}
    latest: dict[str, tuple[datetime, float] | None] = dict.fromkeys(BATCH_METRICS)
    for result in results:
        name = by_id[result["Id"]]
        for stamp, value in zip(result.get("Timestamps", []), result.get("Values", []), strict=False):
            current = latest[name]
            if current is None or stamp > current[0]:
                latest[name] = (stamp, float(value))
    return {name: (None if found is None else found[1]) for name, found in latest.items()}


def read_batch_metrics(
    model_id: str, aws: AwsSettings | None = None, minutes: int = 60, *, end: datetime | None = None
) -> dict[str, float | None]:
    """Latest value of each batch metric for `model_id` within the last `minutes`.

    `model_id` must be the id the jobs were submitted with (e.g. `us.anthropic...` for a profile):
    that is the `ModelId` dimension Bedrock reports under.
    """
    end = end or datetime.now(UTC)
    paginator = client("cloudwatch", aws).get_paginator("get_metric_data")
    results: list[dict[str, Any]] = []
    for page in paginator.paginate(
        MetricDataQueries=metric_queries(model_id),
        StartTime=end - timedelta(minutes=minutes),
        EndTime=end,
        ScanBy="TimestampDescending",
    ):
        results.extend(page["MetricDataResults"])
    return latest_values(results)


# --- alarms and dashboard -------------------------------------------------------------------------


def model_slug(model_id: str) -> str:
    """A name-safe form of a model id or ARN (dashboard names allow only `[A-Za-z0-9_-]`)."""
    tail = model_id.rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_-]+", "-", tail).strip("-")


def alarm_name(prefix: str, model_id: str, what: str) -> str:
    return f"{prefix}-{model_slug(model_id)}-{what}"


def _stat(query_id: str, model_id: str, metric: str, period_s: int, stat: str) -> dict[str, Any]:
    return {
        "Id": query_id,
        "MetricStat": {
            "Metric": {
                "Namespace": NAMESPACE,
                "MetricName": metric,
                "Dimensions": [{"Name": DIMENSION, "Value": model_id}],
            },
            "Period": period_s,
            "Stat": stat,
        },
        "ReturnData": False,
    }


def _actions(sns_topic_arn: str | None) -> dict[str, Any]:
    if not sns_topic_arn:
        return {"ActionsEnabled": False}
    return {"ActionsEnabled": True, "AlarmActions": [sns_topic_arn], "OKActions": [sns_topic_arn]}


def stalled_alarm(
    model_id: str,
    *,
    stalled_hours: int = DEFAULT_STALLED_HOURS,
    sns_topic_arn: str | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> dict[str, Any]:
    """PutMetricAlarm arguments for "records pending, not falling, for `stalled_hours` hours".

    A metric-math alarm over one-hour periods. An hour counts as stalled when records were pending
    all hour (hourly Minimum > 0), the pending count did not fall below the previous hour's
    (DIFF >= 0), and no input or output tokens were processed. The token condition is there because
    DIFF alone misreads a healthy run: the flow refills a slot as soon as a job ends, so the total
    pending count can stay level for hours while work gets done. The alarm fires after
    `stalled_hours` consecutive stalled hours (1-168; CloudWatch caps 1-hour alarms at 7 days);
    missing data (no batch work for the model) is not breaching.
    """
    if not 1 <= stalled_hours <= MAX_STALLED_HOURS:
        raise ValueError(f"stalled_hours must be 1-{MAX_STALLED_HOURS}, got {stalled_hours}")
    hour = 3600
    return {
        "AlarmName": alarm_name(prefix, model_id, "stalled"),
        "AlarmDescription": (
            f"Bedrock batch: records pending for {model_id} without progress for {stalled_hours} h "
            "(jobs stuck in the queue, or the model's batch capacity is exhausted)."
        ),
        **_actions(sns_topic_arn),
        "Metrics": [
            _stat("pending", model_id, RECORDS_PENDING, hour, "Minimum"),
            _stat("tokens_in", model_id, INPUT_TOKENS_PER_MINUTE, hour, "Sum"),
            _stat("tokens_out", model_id, OUTPUT_TOKENS_PER_MINUTE, hour, "Sum"),
            {
                "Id": "stalled",
                "Expression": (
                    "IF(pending > 0 AND FILL(DIFF(pending), 0) >= 0 "
                    "AND FILL(tokens_in, 0) + FILL(tokens_out, 0) == 0, 1, 0)"
                ),
                "Label": "stalled hour (1) / progress or idle (0)",
                "ReturnData": True,
            },
        ],
        "EvaluationPeriods": stalled_hours,
        "DatapointsToAlarm": stalled_hours,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
    }


def token_rate_alarm(
    model_id: str,
    *,
    threshold: float,
    sns_topic_arn: str | None = None,
    prefix: str = DEFAULT_PREFIX,
    period_s: int = 300,
    evaluation_periods: int = 3,
) -> dict[str, Any]:
    """PutMetricAlarm arguments for "input + output tokens per minute above `threshold`".

    Sustained for `evaluation_periods` periods (15 minutes by default), so one busy minute is not a
    page. Use it as a spend guard: tokens per minute x price is the burn rate.
    """
    if threshold <= 0:
        raise ValueError(f"token rate threshold must be positive, got {threshold}")
    return {
        "AlarmName": alarm_name(prefix, model_id, "token-rate"),
        "AlarmDescription": (
            f"Bedrock batch: {model_id} processes more than {threshold:g} tokens/minute (input + output)."
        ),
        **_actions(sns_topic_arn),
        "Metrics": [
            _stat("tokens_in", model_id, INPUT_TOKENS_PER_MINUTE, period_s, "Average"),
            _stat("tokens_out", model_id, OUTPUT_TOKENS_PER_MINUTE, period_s, "Average"),
            {
                "Id": "tokens_per_minute",
                "Expression": "FILL(tokens_in, 0) + FILL(tokens_out, 0)",
                "Label": "tokens per minute (input + output)",
                "ReturnData": True,
            },
        ],
        "EvaluationPeriods": evaluation_periods,
        "DatapointsToAlarm": evaluation_periods,
        "Threshold": float(threshold),
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
    }


def create_alarms(
    model_id: str,
    aws: AwsSettings | None = None,
    *,
    stalled_hours: int = DEFAULT_STALLED_HOURS,
    token_rate_threshold: float | None = None,
    sns_topic_arn: str | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> list[str]:
    """Create or update (PutMetricAlarm is an upsert) the model's alarms; returns their names."""
    specs = [stalled_alarm(model_id, stalled_hours=stalled_hours, sns_topic_arn=sns_topic_arn, prefix=prefix)]
    if token_rate_threshold is not None:
        specs.append(
            token_rate_alarm(
                model_id, threshold=token_rate_threshold, sns_topic_arn=sns_topic_arn, prefix=prefix
            )
        )
    cloudwatch = client("cloudwatch", aws)
    for spec in specs:
        cloudwatch.put_metric_alarm(**spec)
    return [spec["AlarmName"] for spec in specs]


def dashboard_name(prefix: str, model_id: str) -> str:
    return f"{prefix}-{model_slug(model_id)}"


def dashboard_body(model_id: str, region: str, alarm_arns: Sequence[str] = ()) -> dict[str, Any]:
    """Dashboard JSON: backlog (records, tokens) on the left, throughput on the right, alarms below."""

    def metric_widget(x: int, title: str, names: Sequence[str], stat: str) -> dict[str, Any]:
        return {
            "type": "metric",
            "x": x,
            "y": 0,
            "width": 12,
            "height": 6,
            "properties": {
                "title": title,
                "region": region,
                "view": "timeSeries",
                "stat": stat,
                "period": 60,
                "metrics": [[NAMESPACE, name, DIMENSION, model_id] for name in names],
            },
        }

    widgets = [
        metric_widget(0, f"Pending: {model_id}", [RECORDS_PENDING, TOKENS_PENDING], "Maximum"),
        metric_widget(
            12,
            f"Tokens processed per minute: {model_id}",
            [INPUT_TOKENS_PER_MINUTE, OUTPUT_TOKENS_PER_MINUTE],
            "Average",
        ),
    ]
    if alarm_arns:
        widgets.append(
            {
                "type": "alarm",
                "x": 0,
                "y": 6,
                "width": 24,
                "height": 3,
                "properties": {"title": "Alarms", "alarms": list(alarm_arns)},
            }
        )
    return {"widgets": widgets}


def create_dashboard(
    model_id: str,
    aws: AwsSettings | None = None,
    name: str | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    alarm_arns: Sequence[str] = (),
) -> str:
    """Create or replace the model's dashboard; returns its name."""
    aws = aws or AwsSettings.from_env()
    name = name or dashboard_name(prefix, model_id)
    body = dashboard_body(model_id, aws.region, alarm_arns)
    response = client("cloudwatch", aws).put_dashboard(DashboardName=name, DashboardBody=json.dumps(body))
    problems = response.get("DashboardValidationMessages") or []
    if problems:
        log.warning("dashboard %s accepted with validation messages: %s", name, problems)
    return name


# --- stuck and expiring jobs ----------------------------------------------------------------------

WarningKind = Literal["stuck", "expiring"]


@dataclass(frozen=True)
class JobWarning:
    """One thing an operator should look at: a job queued too long, or one about to time out."""

    kind: WarningKind
    job_arn: str
    job_name: str
    model_id: str
    status: str
    seconds: float  # stuck: time since submit; expiring: time left before jobExpirationTime
    message: str

    @property
    def event(self) -> str:
        return f"bedrock.batch.job.{self.kind}"


def _as_datetime(value: Any) -> datetime | None:
    """boto3 gives aware datetimes; JSON round-trips give ISO strings. Naive means UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def job_warnings(
    job: dict[str, Any],
    now: datetime,
    *,
    queued_warn_after_s: float = DEFAULT_QUEUED_WARN_AFTER_S,
    expiry_warn_within_s: float = DEFAULT_EXPIRY_WARN_WITHIN_S,
) -> list[JobWarning]:
    """Warnings for one GetModelInvocationJob response at time `now`.

    - stuck: still Submitted/Validating/Scheduled `queued_warn_after_s` after `submitTime` (capacity
      is short; the job holds a quota slot while doing nothing).
    - expiring: not finished and `jobExpirationTime` is less than `expiry_warn_within_s` away (a queued
      job will end `Expired`, a running one `PartiallyCompleted`).
    Terminal jobs never warn.
    """
    now = _as_datetime(now) or datetime.now(UTC)
    status = job.get("status", "")
    arn = job.get("jobArn", "")
    name = job.get("jobName", "")
    common = {"job_arn": arn, "job_name": name, "model_id": job.get("modelId", ""), "status": status}
    found: list[JobWarning] = []

    submitted = _as_datetime(job.get("submitTime"))
    if status in QUEUED_STATUSES and submitted is not None:
        waited = (now - submitted).total_seconds()
        if waited >= queued_warn_after_s:
            found.append(
                JobWarning(
                    kind="stuck",
                    seconds=waited,
                    message=f"job {name or arn} still {status} {_hours(waited)} after submission",
                    **common,
                )
            )

    expires = _as_datetime(job.get("jobExpirationTime"))
    if status in EXPIRABLE_STATUSES and expires is not None:
        left = (expires - now).total_seconds()
        if left <= expiry_warn_within_s:
            outcome = "Expired" if status in QUEUED_STATUSES else "PartiallyCompleted"
            when = f"in {_hours(left)}" if left > 0 else f"{_hours(-left)} ago"
            found.append(
                JobWarning(
                    kind="expiring",
                    seconds=left,
                    message=(
                        f"job {name or arn} ({status}) reaches its expiration time {when}: "
                        f"it will end {outcome}"
                    ),
                    **common,
                )
            )
    return found


def emit_job_warning_events(warnings: Iterable[JobWarning]) -> list[Any]:
    """Log each warning and emit it as a Prefect event (automations can page on it).

    Events: `bedrock.batch.job.stuck` / `bedrock.batch.job.expiring` on resource
    `bedrock.batch.job.<jobArn>`; returns what `emit_event` returned (None when events are off).
    """
    logger = run_logger()
    emitted = []
    for warning in warnings:
        logger.warning(warning.message)
        emitted.append(
            emit_event(
                event=warning.event,
                resource={
                    "prefect.resource.id": f"bedrock.batch.job.{warning.job_arn}",
                    "prefect.resource.name": warning.job_name or warning.job_arn,
                    "bedrock.model-id": warning.model_id,
                    "bedrock.status": warning.status,
                },
                payload=asdict(warning),
            )
        )
    return emitted


# --- CLI ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.monitoring",
        description="CloudWatch for Bedrock batch inference "
        "(honours AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE).",
    )
    parser.add_argument("--region", help="AWS region (default: AWS_REGION or us-east-1)")
    commands = parser.add_subparsers(dest="command", required=True)

    alarms = commands.add_parser("alarms", help="create or update the model's alarms (and dashboard)")
    alarms.add_argument("--model-id", required=True, help="model id or inference profile the jobs use")
    alarms.add_argument("--stalled-hours", type=int, default=DEFAULT_STALLED_HOURS)
    alarms.add_argument("--token-rate-threshold", type=float, help="tokens/minute (input + output)")
    alarms.add_argument("--sns-topic-arn", help="notify this topic on ALARM and OK")
    alarms.add_argument("--prefix", default=DEFAULT_PREFIX, help="alarm/dashboard name prefix")
    alarms.add_argument("--dashboard", action="store_true", help="also create the dashboard")

    metrics = commands.add_parser("metrics", help="print the latest batch metrics of a model")
    metrics.add_argument("--model-id", required=True)
    metrics.add_argument("--minutes", type=int, default=60)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    aws = AwsSettings.from_env(region=args.region)
    if args.command == "metrics":
        print(json.dumps(read_batch_metrics(args.model_id, aws, args.minutes), indent=2))
        return 0
    names = create_alarms(
        args.model_id,
        aws,
        stalled_hours=args.stalled_hours,
        token_rate_threshold=args.token_rate_threshold,
        sns_topic_arn=args.sns_topic_arn,
        prefix=args.prefix,
    )
    out: dict[str, Any] = {"alarms": names}
    if args.dashboard:
        described = client("cloudwatch", aws).describe_alarms(AlarmNames=names)["MetricAlarms"]
        arns = [alarm["AlarmArn"] for alarm in described]
        out["dashboard"] = create_dashboard(args.model_id, aws, prefix=args.prefix, alarm_arns=arns)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
