"""CloudWatch metrics, alarms and dashboard against the moto server; stuck/expiring job warnings.

moto stores metric-math alarms and dashboards faithfully but never evaluates an alarm, so the alarm
tests check what was stored (the contract with CloudWatch), not state transitions.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tasks import monitoring, report
from tasks.aws import client
from tasks.aws.cloudwatch import (
    BATCH_METRICS,
    INPUT_TOKENS_PER_MINUTE,
    NAMESPACE,
    OUTPUT_TOKENS_PER_MINUTE,
    RECORDS_PENDING,
    TOKENS_PENDING,
    create_alarms,
    create_dashboard,
    read_batch_metrics,
    stalled_alarm,
)
from tasks.core.job_warnings import job_warnings
from tasks.report import emit_job_warning_events

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = 3600


@pytest.fixture
def model_id() -> str:
    """A model id nobody else in the session writes metrics for."""
    return f"us.anthropic.claude-test-{uuid.uuid4().hex[:8]}-v1:0"


def put(aws, model_id: str, name: str, points: list[tuple[datetime, float]]) -> None:
    client("cloudwatch", aws).put_metric_data(
        Namespace=NAMESPACE,
        MetricData=[
            {
                "MetricName": name,
                "Dimensions": [{"Name": "ModelId", "Value": model_id}],
                "Timestamp": stamp,
                "Value": value,
            }
            for stamp, value in points
        ],
    )


# --- metrics --------------------------------------------------------------------------------------


def test_read_batch_metrics_returns_the_newest_value_of_each_metric(aws, model_id):
    end = datetime.now(UTC).replace(microsecond=0)
    minute = timedelta(minutes=1)
    put(
        aws,
        model_id,
        RECORDS_PENDING,
        [(end - 3 * minute, 900), (end - 2 * minute, 700), (end - minute, 500)],
    )
    put(aws, model_id, INPUT_TOKENS_PER_MINUTE, [(end - 2 * minute, 120_000), (end - minute, 130_000)])
    put(aws, model_id, OUTPUT_TOKENS_PER_MINUTE, [(end - minute, 40_000)])
    # Another model's backlog must not leak in.
    put(aws, model_id + "-other", RECORDS_PENDING, [(end - minute, 1)])

    values = read_batch_metrics(model_id, aws, minutes=10, end=end)

    assert values == {
        RECORDS_PENDING: 500.0,
        INPUT_TOKENS_PER_MINUTE: 130_000.0,
        OUTPUT_TOKENS_PER_MINUTE: 40_000.0,
        TOKENS_PENDING: None,  # not published for this model
    }


def test_read_batch_metrics_ignores_points_outside_the_window(aws, model_id):
    end = datetime.now(UTC).replace(microsecond=0)
    put(aws, model_id, RECORDS_PENDING, [(end - timedelta(minutes=90), 42)])

    assert read_batch_metrics(model_id, aws, minutes=60, end=end)[RECORDS_PENDING] is None


# --- alarms and dashboard ---------------------------------------------------------------------------


def test_create_alarms_stores_the_stalled_and_token_rate_alarms(aws, model_id):
    topic = client("sns", aws).create_topic(Name=f"alarms-{uuid.uuid4().hex[:6]}")["TopicArn"]

    names = create_alarms(
        model_id, aws, stalled_hours=4, token_rate_threshold=250_000, sns_topic_arn=topic, prefix="proj"
    )

    alarms = {
        a["AlarmName"]: a for a in client("cloudwatch", aws).describe_alarms(AlarmNames=names)["MetricAlarms"]
    }
    assert sorted(alarms) == sorted(names) and len(names) == 2
    stalled = next(a for name, a in alarms.items() if name.endswith("-stalled"))
    assert stalled["AlarmName"].startswith("proj-us-anthropic-claude-test-")
    assert (stalled["EvaluationPeriods"], stalled["DatapointsToAlarm"]) == (4, 4)
    assert stalled["AlarmActions"] == [topic] and stalled["OKActions"] == [topic]
    assert stalled["TreatMissingData"] == "notBreaching"
    queries = {q["Id"]: q for q in stalled["Metrics"]}
    assert queries["pending"]["MetricStat"]["Metric"] == {
        "Namespace": NAMESPACE,
        "MetricName": RECORDS_PENDING,
        "Dimensions": [{"Name": "ModelId", "Value": model_id}],
    }
    assert queries["pending"]["MetricStat"]["Period"] == HOUR
    assert "DIFF(pending)" in queries["stalled"]["Expression"]
    assert [q["Id"] for q in stalled["Metrics"] if q["ReturnData"]] == ["stalled"]

    rate = next(a for name, a in alarms.items() if name.endswith("-token-rate"))
    assert rate["Threshold"] == 250_000 and rate["ComparisonOperator"] == "GreaterThanThreshold"


def test_create_alarms_is_an_upsert_and_token_rate_is_optional(aws, model_id):
    first = create_alarms(model_id, aws, stalled_hours=2)
    again = create_alarms(model_id, aws, stalled_hours=8)

    assert first == again and len(again) == 1
    [alarm] = client("cloudwatch", aws).describe_alarms(AlarmNames=again)["MetricAlarms"]
    assert alarm["EvaluationPeriods"] == 8
    assert alarm["ActionsEnabled"] is False  # no topic: nothing to notify


@pytest.mark.parametrize("hours", [0, 169])
def test_stalled_hours_outside_cloudwatch_limits_are_refused(hours):
    with pytest.raises(ValueError, match="stalled_hours"):
        stalled_alarm("amazon.nova-lite-v1:0", stalled_hours=hours)


def test_create_dashboard_puts_the_four_metrics_and_the_alarms(aws, model_id):
    names = create_alarms(model_id, aws)
    arns = [
        a["AlarmArn"] for a in client("cloudwatch", aws).describe_alarms(AlarmNames=names)["MetricAlarms"]
    ]

    name = create_dashboard(model_id, aws, prefix="proj", alarm_arns=arns)

    body = json.loads(client("cloudwatch", aws).get_dashboard(DashboardName=name)["DashboardBody"])
    assert name.startswith("proj-") and set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_")
    plotted = [m for w in body["widgets"] if w["type"] == "metric" for m in w["properties"]["metrics"]]
    assert sorted(m[1] for m in plotted) == sorted(BATCH_METRICS)
    assert {tuple(m[2:]) for m in plotted} == {("ModelId", model_id)}
    assert [w["properties"]["alarms"] for w in body["widgets"] if w["type"] == "alarm"] == [arns]


def test_cli_creates_alarms_and_dashboard_through_the_endpoint(aws, model_id, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint_url)

    code = monitoring.main(["alarms", "--model-id", model_id, "--stalled-hours", "3", "--dashboard"])

    out = json.loads(capsys.readouterr().out)
    assert code == 0 and len(out["alarms"]) == 1
    client("cloudwatch", aws).get_dashboard(DashboardName=out["dashboard"])  # raises if missing

    assert monitoring.main(["metrics", "--model-id", model_id]) == 0
    assert json.loads(capsys.readouterr().out) == dict.fromkeys(BATCH_METRICS)


# --- stuck and expiring jobs ------------------------------------------------------------------------


def job(status: str, *, submitted_h_ago: float, expires_in_h: float | None = None) -> dict:
    """A GetModelInvocationJob response, as boto3 returns it (aware datetimes)."""
    found = {
        "jobArn": "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/abcdef123456",
        "jobName": "run-1-shard-0001",
        "modelId": "us.anthropic.claude-3-5-haiku-20241022-v1:0",
        "status": status,
        "submitTime": NOW - timedelta(hours=submitted_h_ago),
    }
    if expires_in_h is not None:
        found["jobExpirationTime"] = NOW + timedelta(hours=expires_in_h)
    return found


@pytest.mark.parametrize("status", ["Submitted", "Validating", "Scheduled"])
def test_a_job_queued_longer_than_the_threshold_is_stuck(status):
    [warning] = job_warnings(job(status, submitted_h_ago=7), NOW, queued_warn_after_s=6 * HOUR)

    assert (warning.kind, warning.event, warning.status) == ("stuck", "bedrock.batch.job.stuck", status)
    assert warning.seconds == 7 * HOUR
    assert "7.0 h" in warning.message and "run-1-shard-0001" in warning.message


def test_a_recent_or_running_job_is_not_stuck():
    assert job_warnings(job("Scheduled", submitted_h_ago=1), NOW, queued_warn_after_s=6 * HOUR) == []
    assert job_warnings(job("InProgress", submitted_h_ago=30), NOW, queued_warn_after_s=6 * HOUR) == []


def test_a_running_job_near_its_expiration_will_end_partially_completed():
    running = job("InProgress", submitted_h_ago=20, expires_in_h=2)

    [warning] = job_warnings(running, NOW, expiry_warn_within_s=3 * HOUR)

    assert (warning.kind, warning.event) == ("expiring", "bedrock.batch.job.expiring")
    assert warning.seconds == 2 * HOUR and "PartiallyCompleted" in warning.message


def test_a_queued_job_can_be_both_stuck_and_expiring():
    queued = job("Scheduled", submitted_h_ago=22, expires_in_h=-0.5)  # already past: still warn

    kinds = [w.kind for w in job_warnings(queued, NOW, queued_warn_after_s=HOUR, expiry_warn_within_s=HOUR)]

    assert kinds == ["stuck", "expiring"]


def test_far_expiry_and_terminal_jobs_do_not_warn():
    assert job_warnings(job("InProgress", submitted_h_ago=1, expires_in_h=40), NOW) == []
    for status in ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired", "Stopping"):
        assert job_warnings(job(status, submitted_h_ago=50, expires_in_h=-1), NOW) == []


def test_iso_strings_and_naive_times_are_read_as_utc():
    response = job("Submitted", submitted_h_ago=0)
    response["submitTime"] = "2026-03-01T03:00:00Z"  # 9 h before NOW
    response["jobExpirationTime"] = "2026-03-01T13:00:00"  # naive: 1 h after NOW

    warnings = job_warnings(response, NOW.replace(tzinfo=None))

    assert [(w.kind, w.seconds) for w in warnings] == [("stuck", 9 * HOUR), ("expiring", HOUR)]


def test_warnings_are_logged_and_emitted_as_prefect_events(monkeypatch, caplog):
    sent: list[dict] = []
    monkeypatch.setattr(report, "emit_event", lambda **kwargs: sent.append(kwargs) or kwargs)
    warnings = job_warnings(job("Scheduled", submitted_h_ago=23, expires_in_h=1), NOW)

    with caplog.at_level("WARNING", logger="bedrock_batch_flows"):
        emitted = emit_job_warning_events(warnings)

    assert [e["event"] for e in sent] == ["bedrock.batch.job.stuck", "bedrock.batch.job.expiring"]
    assert len(emitted) == 2
    resource = sent[0]["resource"]
    assert resource["prefect.resource.id"] == f"aws.bedrock.job.{warnings[0].job_arn}"
    assert resource["bedrock.status"] == "Scheduled"
    assert sent[1]["payload"]["seconds"] == HOUR
    assert [r.getMessage() for r in caplog.records] == [w.message for w in warnings]
