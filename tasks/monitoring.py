"""`python -m tasks.monitoring`: CloudWatch alarms, dashboard and metrics for a model, from a shell.

The builders and API calls live in `tasks.aws.cloudwatch`; this module is only the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from tasks.aws import AwsSettings, client, credentials_block
from tasks.aws.cloudwatch import (
    DEFAULT_PREFIX,
    DEFAULT_STALLED_HOURS,
    create_alarms,
    create_dashboard,
    read_batch_metrics,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.monitoring",
        description="CloudWatch for Bedrock batch inference "
        "(honours AWS_ENDPOINT_URL, AWS_REGION, AWS_PROFILE, or a saved AwsCredentials block).",
    )
    parser.add_argument("--region", help="AWS region (default: the block's, else AWS_REGION, else us-east-1)")
    parser.add_argument("--aws-credentials", metavar="NAME",
                        help="a saved prefect-aws AwsCredentials block, as the flow's --aws-credentials")
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
    aws = AwsSettings.from_env(credentials=credentials_block(args.aws_credentials), region=args.region)
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
