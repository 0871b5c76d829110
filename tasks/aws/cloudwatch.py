"""CloudWatch for Bedrock batch inference: read the metrics, create alarms and a dashboard.

Bedrock publishes batch metrics per account, model and region (namespace `AWS/Bedrock/Batch`,
dimension `ModelId`), not per job: they tell whether *anything* moves for that model, which is what an
operator watching a multi-hour run wants to know. Builders (`metric_queries`, `stalled_alarm`,
`token_rate_alarm`, `dashboard_body`) are pure and return the exact API arguments; the functions that
call AWS are thin. `python -m tasks.monitoring` is their command line.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tasks.aws import AwsSettings, client

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
